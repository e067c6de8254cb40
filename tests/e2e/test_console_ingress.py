"""The operator's console and API on a cluster (issue 17, item 6), as the production and external overlays build
them: an Ingress with TLS sends /console and /api, and nothing else, to the orchestrator Service's api port,
which reaches the port the orchestrator listens on with its API; the ingress controller's namespace is
admitted to that port only, while /metrics and health stay out of its reach."""

import pytest
from manifests_support import Manifests, build, label_selector_matches, pod_labels, pod_spec

pytestmark = pytest.mark.e2e
yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests: scripts/check-manifests installs it")

INGRESS_NAMESPACE = "ingress-nginx"


@pytest.fixture(scope="module", params=["overlays/production", "overlays/external"])
def overlay(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(build(request.param))


def orchestrator(manifests: Manifests) -> dict:
    deployment = manifests.get("Deployment", "orderflow-orchestrator")
    assert deployment is not None
    return deployment


def test_the_console_ingress_serves_console_and_api_over_tls_only(overlay: Manifests) -> None:
    ingress = overlay.get("Ingress", "orderflow-console")
    assert ingress is not None, "the overlay lists components/console-ingress"
    spec = ingress["spec"]
    tls_hosts = {host for entry in spec["tls"] for host in entry["hosts"]}
    assert all(entry.get("secretName") for entry in spec["tls"])
    routes = {}
    for rule in spec["rules"]:
        assert rule["host"] in tls_hosts, f"{rule['host']} is served without TLS"
        for path in rule["http"]["paths"]:
            routes[path["path"]] = path["backend"]["service"]
    assert set(routes) == {"/console", "/api"}
    assert all(backend == {"name": "orderflow-orchestrator", "port": {"name": "api"}} for backend in routes.values())
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"


def test_the_service_api_port_reaches_the_port_the_api_listens_on(overlay: Manifests) -> None:
    service = overlay.get("Service", "orderflow-orchestrator")
    assert service is not None
    api = next(port for port in service["spec"]["ports"] if port["name"] == "api")
    container = next(c for c in pod_spec(orchestrator(overlay))["containers"] if c["name"] == "orchestrator")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert api["targetPort"] == "api" and int(env["API_PORT"]) == ports["api"]
    assert env["API_HOST"] == "0.0.0.0"  # reachable from the Service, not only from the pod itself
    assert ports["api"] != ports["http"]


def admitted_ports(manifests: Manifests, namespace: str) -> set[object]:
    """Ports of the orchestrator's pods that some NetworkPolicy opens to pods of ``namespace``."""
    labels = pod_labels(orchestrator(manifests))
    ports: set[object] = set()
    for policy in manifests.of_kind("NetworkPolicy"):
        if not label_selector_matches(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                selector = peer.get("namespaceSelector")
                if selector is not None and label_selector_matches(
                    selector, {"kubernetes.io/metadata.name": namespace}
                ):
                    ports |= {port["port"] for port in rule.get("ports") or []}
    return ports


def test_the_ingress_controller_reaches_the_api_port_and_nothing_else(overlay: Manifests) -> None:
    assert admitted_ports(overlay, INGRESS_NAMESPACE) == {"api"}
    assert "api" not in admitted_ports(overlay, "somebody-elses-namespace")
