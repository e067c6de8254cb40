#!/usr/bin/env python3
"""Check built manifests (``kubectl kustomize`` output) against Kubernetes' recommended labels, as Orderflow uses them.

- Every object carries app.kubernetes.io/name=orderflow, part-of=orderflow, instance, version and
  managed-by=kustomize; every workload, Service, PodDisruptionBudget, autoscaler and ScaledObject its component.
- A Deployment's or Job's pod template carries the same labels, and a Deployment's selector matches them.
- Services, PodDisruptionBudgets and NetworkPolicies select by name and component: each selects the pods of
  at least one workload of the build (a selector of an operator's pods, named otherwise, is left alone).
- Autoscalers and ScaledObjects name an existing Deployment of the same component; no Deployment has both.

Usage: check-labels.py FILE... Exits 1 on any finding.
"""

import sys
from pathlib import Path
from typing import Any

import yaml

COMMON = {
    "app.kubernetes.io/name": "orderflow",
    "app.kubernetes.io/part-of": "orderflow",
    "app.kubernetes.io/managed-by": "kustomize",
}
PRESENT = ("app.kubernetes.io/instance", "app.kubernetes.io/version")
COMPONENT = "app.kubernetes.io/component"
NEEDS_COMPONENT = {"Deployment", "Job", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject"}


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
    return True


def check(objects: list[dict[str, Any]]) -> list[str]:
    errors: list[str] = []
    pods = {}  # workload name -> pod template labels
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        labelled = [("", obj["metadata"].get("labels") or {})]
        if obj["kind"] in ("Deployment", "Job"):
            template = obj["spec"]["template"]["metadata"].get("labels") or {}
            labelled.append((" pod template", template))
            pods[obj["metadata"]["name"]] = template
            selector = obj["spec"].get("selector")
            if obj["kind"] == "Deployment" and not matches(selector, template):
                errors.append(f"{name}: selector {selector} does not match its pod labels {template}")
        for where, labels in labelled:
            wrong = {k: labels.get(k) for k, v in COMMON.items() if labels.get(k) != v}
            wrong |= {k: None for k in PRESENT if not labels.get(k)}
            if obj["kind"] in NEEDS_COMPONENT and not labels.get(COMPONENT):
                wrong[COMPONENT] = None
            if wrong:
                errors.append(f"{name}{where}: labels {wrong} (expected {COMMON}, {PRESENT} and a component)")
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        selector = None
        if obj["kind"] == "Service":
            selector = {"matchLabels": obj["spec"].get("selector") or {}}
        elif obj["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = obj["spec"].get("selector") or obj["spec"].get("podSelector")
        if selector is None:
            continue
        if (selector.get("matchLabels") or {}).get("app.kubernetes.io/name", "orderflow") != "orderflow":
            continue  # an operator's pods (RabbitMQ's are app.kubernetes.io/name=<cluster>): not ours to label
        keys = set(selector.get("matchLabels") or {}) | {e["key"] for e in selector.get("matchExpressions") or []}
        if not {"app.kubernetes.io/name", COMPONENT} <= keys:
            errors.append(f"{name}: selects by {sorted(keys)}, not by name and component")
        elif not any(matches(selector, labels) for labels in pods.values()):
            errors.append(f"{name}: selects no pod of this build")
    scaled: dict[str, list[str]] = {}
    for obj in objects:
        if obj["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = obj["spec"]["scaleTargetRef"]["name"]
            scaled.setdefault(target, []).append(f"{obj['kind']}/{obj['metadata']['name']}")
            deployment = deployments.get(target)
            if deployment is None:
                errors.append(f"{obj['kind']}/{obj['metadata']['name']}: no Deployment {target}")
            elif deployment["metadata"]["labels"].get(COMPONENT) != obj["metadata"]["labels"].get(COMPONENT):
                errors.append(f"{obj['kind']}/{obj['metadata']['name']}: component differs from {target}'s")
    errors += [f"Deployment/{t}: scaled by {' and '.join(by)}" for t, by in scaled.items() if len(by) > 1]
    return errors


def main() -> int:
    failures = 0
    for filename in sys.argv[1:]:
        objects = [o for o in yaml.safe_load_all(Path(filename).read_text()) if o]
        errors = check(objects)
        failures += len(errors)
        for error in errors:
            print(f"ERROR {filename}: {error}")
        verdict = f"{len(errors)} findings" if errors else "labels as expected"
        print(f"{filename}: {len(objects)} objects, {verdict}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
