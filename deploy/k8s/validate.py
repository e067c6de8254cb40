#!/usr/bin/env python3
"""Validate built manifests (``kubectl kustomize`` output) against schemas, strictly: no unknown field passes.

- Kubernetes' own kinds: PyPI's kubernetes-validate in strict mode, against each Kubernetes version given.
- The operators' custom resources (RabbitmqCluster, CloudNativePG Cluster, ServiceMonitor, PrometheusRule):
  kubernetes-validate has no schema for them and would only warn, so they are checked against the strict
  schemas vendored in deploy/k8s/schemas/ (subsets of the CRDs, built on Kubernetes' definitions).
- Any other kind is an error: there is nothing to check it against.

Usage: validate.py [-k 1.28 -k 1.37] FILE... (``-`` reads stdin). Exits 1 on any invalid object.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent / "schemas"
#: The oldest Kubernetes we support (HPA v2, PDB v1, matchLabelKeys) and the newest kubernetes-validate knows.
DEFAULT_VERSIONS = ["1.28", kv.major_minor(kv.latest_version())]


def custom_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        found[(schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"])] = schema
    return found


def definitions(version: str) -> Registry:
    """Kubernetes' strict definitions for ``version``, which the vendored schemas $ref."""
    exact = [v for v in kv.all_versions() if kv.major_minor(v) <= version][-1]
    contents = kv.schema_contents(f"kubernetes-json-schema/v{exact}-local-strict/_definitions.json", exact)
    return Resource.from_contents(contents) @ Registry()


def check(resource: dict[str, Any], version: str, custom: dict, registry: Registry) -> list[str]:
    key = (resource.get("apiVersion", ""), resource.get("kind", ""))
    if key in custom:
        validator = jsonschema.Draft202012Validator(custom[key], registry=registry)
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))
        ]
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kv.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kv.SchemaNotFoundError as e:
        return [f"no schema: {e.message}"]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--kubernetes-version", action="append", dest="versions")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    versions = args.versions or DEFAULT_VERSIONS
    custom = custom_schemas()
    failures = 0
    for filename in args.files:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
        resources = [r for r in yaml.safe_load_all(text) if r]
        for version in versions:
            registry = definitions(version)
            for resource in resources:
                name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
                for error in check(resource, version, custom, registry):
                    failures += 1
                    print(f"ERROR {filename}: {name} (Kubernetes {version}): {error}")
        crs = sum(1 for r in resources if (r.get("apiVersion"), r.get("kind")) in custom)
        print(
            f"{filename}: {len(resources)} objects checked against Kubernetes {', '.join(versions)} (strict); "
            f"{crs} of them custom resources, against deploy/k8s/schemas"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
