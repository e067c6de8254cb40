"""The Kubernetes manifests against the code: what deploy/k8s declares must be what the processes do.

The main test builds the local overlay (``kubectl kustomize``) and runs its workloads on this machine as a
kubelet would (tests/manifests_support.py): the migrations Job to completion, then each Deployment's init
containers and containers, with exactly the declared command, args and environment. Each must become ready
on its readiness probe's path and port, serve metrics on the port the ServiceMonitor names, and together
they must complete an order published to the broker. The other tests check what a run cannot show: every
variable a manifest sets is one the code reads (the optional components' too), pods outlast their drain, the
Compose file mirrors the overlay, the monitoring objects are generated from deploy/monitoring, labels follow
Kubernetes' conventions, deploy/k8s itself is no local overlay, KEDA scales every consumer queue, and the
orchestrator reaches the internet for OIDC only where components/oidc is added.
"""

import asyncio
import contextlib
import importlib.util
import inspect
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import asyncpg
import pytest
from harness import ADMIN_DSN, RABBITMQ_HOST_PORT, eventually, fresh_vhost, new_id, order_body, outcome_of, publish_raw
from manifests_support import (
    K8S,
    REPO,
    Localizer,
    Manifests,
    Started,
    build,
    build_with_components,
    declared_env,
    label_selector_matches,
    local_path,
    localizer_for,
    pod_labels,
    pod_spec,
    probe_port,
    read_dockerfile,
    references,
    start,
    stop,
)
from prometheus_client.parser import text_string_to_metric_families

from contracts.asyncapi import consumer_queues
from devservers.smtp_sink import messages
from orchestrator import api_tokens
from orderctl.client import OutcomeListener
from orderctl.config import SERVICES, CtlSettings
from plumbing.db import database_name, drop_database, with_database
from plumbing.settings import ProcessSettings
from services.inventory import repository as inventory_repo

pytestmark = pytest.mark.e2e
yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests: scripts/check-manifests installs it")

PROCESSES = {spec.name: spec.module for spec in SERVICES}
ENTRYPOINT = REPO / "docker/entrypoint.sh"
#: Dummy values for the operators' Secrets where nothing runs (the static checks).
DUMMY_CREDENTIALS = ("user", "password")


@pytest.fixture(scope="module")
def local_overlay() -> Manifests:
    return Manifests(build("overlays/local"))


BUILDS: dict[str, Any] = {
    "overlays/local": lambda: build("overlays/local"),
    "overlays/production": lambda: build("overlays/production"),
    "overlays/external": lambda: build("overlays/external"),
    "deploy/k8s": lambda: build("."),
    "base+keda+otel": lambda: build_with_components("keda", "otel"),
    "overlays/production+oidc": lambda: build_with_components("oidc", on="overlays/production"),
}


@pytest.fixture(scope="module", params=list(BUILDS))
def overlay(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(BUILDS[request.param]())


def library_env() -> set[str]:
    """Variables the libraries read themselves, each checked against the installed library.

    PGPASSWORD: asyncpg's (libpq's name), the password when the URL holds none; PGSSLROOTCERT: the CA file
    when the URL names none (the production overlay). OTEL_*: the OpenTelemetry SDK's and its OTLP exporter's
    (components/otel)."""
    import asyncpg.connect_utils
    from opentelemetry.sdk import environment_variables

    source = inspect.getsource(asyncpg.connect_utils)
    found = {name for name in ("PGPASSWORD", "PGSSLROOTCERT") if f"'{name}'" in source}
    return found | {v for k, v in vars(environment_variables).items() if k.startswith("OTEL_") and isinstance(v, str)}


def program(container: dict, image_entrypoint: list[str]) -> str:
    """The name the entrypoint runs (``inventory``, ``migrate``, ...): args[0] after docker/entrypoint.sh."""
    argv = (container.get("command") or image_entrypoint) + (container.get("args") or [])
    assert argv[0].endswith("docker/entrypoint.sh"), f"{container['name']} bypasses the image's entrypoint: {argv}"
    return argv[1]


def settings_class(process: str) -> type[ProcessSettings]:
    module = __import__(f"{PROCESSES[process]}.main", fromlist=["main"])
    found = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, ProcessSettings) and c.__module__ == module.__name__
    ]
    assert len(found) == 1, f"{module.__name__}: expected one settings class, found {found}"
    return found[0]


def env_read_by(name: str) -> set[str]:
    """The environment variables the program run as ``name`` reads."""
    if name in PROCESSES:
        return {field.upper() for field in settings_class(name).model_fields} | library_env()
    entrypoint_vars = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", ENTRYPOINT.read_text()))
    if name in ("migrate", "orderctl"):
        prefix = CtlSettings.model_config.get("env_prefix", "")
        return {prefix + field.upper() for field in CtlSettings.model_fields} | entrypoint_vars | library_env()
    # A development server: the names its entry module (as docker/entrypoint.sh runs it) spells out.
    found = re.search(rf"^\s*{re.escape(name)}\)\s*\n\s*exec python -m (\S+)", ENTRYPOINT.read_text(), re.M)
    assert found, f"docker/entrypoint.sh runs no module as {name!r}"
    spec = importlib.util.find_spec(found.group(1))
    assert spec is not None and spec.origin, found.group(1)
    if spec.submodule_search_locations:  # a package run with -m: its __main__
        spec = importlib.util.find_spec(found.group(1) + ".__main__")
    return set(re.findall(r"\b([A-Z][A-Z0-9_]{3,})\b", Path(spec.origin).read_text()))


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return (spec.get("initContainers") or []) + spec["containers"]


def test_monitoring_objects_are_generated_from_deploy_monitoring() -> None:
    result = subprocess.run(
        [sys.executable, str(K8S / "gen-prometheusrule.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_labels_follow_the_conventions_and_selectors_match(overlay: Manifests, tmp_path: Path) -> None:
    built = tmp_path / "built.yaml"
    built.write_text(yaml.safe_dump_all(overlay.objects))
    result = subprocess.run(
        [sys.executable, str(K8S / "check-labels.py"), str(built)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_root_is_the_production_shape_not_the_local_overlay() -> None:
    """A GitOps tool pointed at deploy/k8s must deploy neither the development servers nor known passwords."""
    root = Manifests(build("."))
    assert not root.of_kind("Secret"), [s["metadata"]["name"] for s in root.of_kind("Secret")]
    components = {pod_labels(w).get("app.kubernetes.io/component") for w in root.workloads()}
    assert components == set(PROCESSES) | {"migrate"}, components
    assert not root.of_kind("RabbitmqCluster") and not root.of_kind("Cluster")


def test_keda_scales_every_consumer_on_its_queues() -> None:
    """Each queue of contracts.asyncapi.consumer_queues() is a trigger of the ScaledObject of the Deployment
    consuming it, in queueLength mode; KEDA's ScaledObjects replace the CPU autoscalers (never both)."""
    manifests = Manifests(build_with_components("keda"))
    assert not manifests.of_kind("HorizontalPodAutoscaler"), "KEDA owns the HPAs: the base's must go"
    deployments = {d["metadata"]["name"] for d in manifests.of_kind("Deployment")}
    scaled: dict[str, set[str]] = {}
    for scaled_object in manifests.of_kind("ScaledObject"):
        target = scaled_object["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, target
        assert scaled_object["spec"]["minReplicaCount"] >= 1, f"{target}: its outbox relay must keep running"
        for trigger in scaled_object["spec"]["triggers"]:
            if trigger["type"] == "rabbitmq":
                assert trigger["metadata"]["mode"] == "QueueLength", trigger
                assert trigger["authenticationRef"]["name"] in {
                    a["metadata"]["name"] for a in manifests.of_kind("TriggerAuthentication")
                }
                scaled.setdefault(target, set()).add(trigger["metadata"]["queueName"])
    expected: dict[str, set[str]] = {}
    for queue in consumer_queues():
        expected.setdefault(f"orderflow-{queue.split('.', 1)[0]}", set()).add(queue)
    assert scaled == expected


OIDC_EGRESS = "orderflow-orchestrator-egress-oidc"
OIDC_SECRET = "orderflow-oidc"


def orchestrator_env_from(manifests: Manifests) -> list[dict]:
    """The orchestrator container's envFrom, in order (later sources win)."""
    deployment = manifests.get("Deployment", "orderflow-orchestrator")
    assert deployment is not None
    container = next(c for c in pod_spec(deployment)["containers"] if c["name"] == "orchestrator")
    return container.get("envFrom") or []


@pytest.mark.parametrize("shipped", ["overlays/production", "overlays/external", "overlays/local", "deploy/k8s"])
def test_no_shipped_build_opens_the_orchestrator_to_the_internet(shipped: str) -> None:
    """OIDC is opt-in (components/oidc): without it, no egress to public addresses and no OIDC Secret read."""
    manifests = Manifests(BUILDS[shipped]())
    assert manifests.get("NetworkPolicy", OIDC_EGRESS) is None
    assert OIDC_SECRET not in [s["secretRef"]["name"] for s in orchestrator_env_from(manifests) if "secretRef" in s]


def test_the_oidc_component_adds_its_egress_and_the_optional_secret() -> None:
    """Production with components/oidc: the orchestrator (and only it) may reach public addresses on 443, and
    reads the Secret last (its keys win), optional, so the component may go in before the Secret exists."""
    manifests = Manifests(BUILDS["overlays/production+oidc"]())
    policy = manifests.get("NetworkPolicy", OIDC_EGRESS)
    assert policy is not None and policy["metadata"]["namespace"] == "orderflow"
    selected = {
        d["metadata"]["name"]
        for d in manifests.of_kind("Deployment")
        if label_selector_matches(policy["spec"]["podSelector"], pod_labels(d))
    }
    assert selected == {"orderflow-orchestrator"}, selected
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]] == [443]
    assert orchestrator_env_from(manifests)[-1] == {"secretRef": {"name": OIDC_SECRET, "optional": True}}


def test_every_variable_a_manifest_sets_is_read_by_the_code(overlay: Manifests) -> None:
    """A misspelt or renamed setting would be ignored silently (extra="ignore"): here it fails."""
    image = read_dockerfile()
    provided = overlay.operator_secrets(DUMMY_CREDENTIALS, DUMMY_CREDENTIALS)
    unread: list[str] = []
    config_use: dict[str, set[str]] = {}  # envFrom ConfigMap -> the keys some container loading it uses
    for workload in overlay.workloads():
        for container in all_containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            raw = declared_env(container, overlay, provided, secrets_exist=True)
            helpers = set().union(*(references(v.value) for v in raw if v.literal))
            used = env_read_by(program(container, image.entrypoint)) | helpers
            declared = {v["name"] for v in container.get("env") or []}
            unread += [f"{where}: {name}" for name in sorted(declared - used)]
            for source in container.get("envFrom") or []:
                if "configMapRef" in source:
                    config_use.setdefault(source["configMapRef"]["name"], set()).update(used)
    for name, used in config_use.items():
        keys = set((overlay.get("ConfigMap", name) or {}).get("data") or {})
        unread += [f"ConfigMap {name}: {key}" for key in sorted(keys - used)]
    assert not unread, "set by the manifests but read by no code:\n" + "\n".join(unread)


def test_pods_outlast_their_drain_and_listen_where_probed(overlay: Manifests) -> None:
    provided = overlay.operator_secrets(DUMMY_CREDENTIALS, DUMMY_CREDENTIALS)
    image = read_dockerfile()
    checked = set()
    for workload in overlay.of_kind("Deployment"):
        spec = pod_spec(workload)
        assert spec.get("enableServiceLinks") is False, "service links would inject <SERVICE>_PORT variables"
        for container in spec["containers"]:
            name = program(container, image.entrypoint)
            if name not in PROCESSES:
                continue
            env = {v.name: v.value for v in declared_env(container, overlay, provided, secrets_exist=True)}
            defaults = settings_class(name).model_fields
            drain = float(env.get("DRAIN_SECONDS", defaults["drain_seconds"].default))
            grace = spec.get("terminationGracePeriodSeconds", 30)
            assert grace > drain + 5, f"{name}: terminationGracePeriodSeconds {grace} vs DRAIN_SECONDS {drain}"
            assert env.get("HTTP_HOST") == "0.0.0.0", f"{name}: a pod must listen on all interfaces"
            http = next(p for p in container["ports"] if p.get("name") == "http")
            assert int(env.get("HTTP_PORT", defaults["http_port"].default)) == http["containerPort"], name
            if "api_port" in defaults:  # the orchestrator's API, on a port of its own (probes stay on http)
                assert env.get("API_HOST") == "0.0.0.0", f"{name}: the API must listen on all interfaces"
                api = next(p for p in container["ports"] if p.get("name") == "api")
                assert int(env.get("API_PORT", defaults["api_port"].default)) == api["containerPort"], name
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[kind]["httpGet"]["port"] in ("http", http["containerPort"]), f"{name} {kind}"
            checked.add(name)
    assert checked == set(PROCESSES), f"Deployments run {checked}, the code has {set(PROCESSES)}"


def test_compose_mirrors_the_local_overlay(local_overlay: Manifests) -> None:
    """docker-compose.yml runs the same programs with the same settings; only hosts and credentials differ."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    image = read_dockerfile()
    provided = local_overlay.operator_secrets(DUMMY_CREDENTIALS, DUMMY_CREDENTIALS)
    connection = re.compile(r"(_URL|_HOST|_BASE|_KEY|_SECRET|PASSWORD|_USERNAME)$")  # PGPASSWORD too

    def compose_env(service: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for path in service.get("env_file") or []:
            for line in (REPO / path).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    env[key] = value
        env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
        return env

    for workload in local_overlay.workloads():
        container = pod_spec(workload)["containers"][0]
        name = program(container, image.entrypoint)
        service = compose.get(pod_labels(workload)["app.kubernetes.io/component"])
        assert service is not None, f"docker-compose.yml has no service for {workload['metadata']['name']}"
        assert service["command"] == container["args"], f"{name}: compose runs {service['command']}"
        k8s = {v.name: v.value for v in declared_env(container, local_overlay, provided)}
        mine = compose_env(service)
        read = env_read_by(name)
        k8s_settings, compose_settings = k8s.keys() & read, mine.keys() & read
        assert k8s_settings == compose_settings, f"{name}: settings differ: {k8s_settings ^ compose_settings}"
        for key in sorted(k8s_settings):
            if not connection.search(key):
                assert k8s[key] == mine[key], f"{name}: {key} is {k8s[key]!r} on Kubernetes, {mine[key]!r} in compose"
        # The same roles and databases: compare the database URLs' user and database name.
        for key in sorted(k for k in k8s_settings if k.endswith("DATABASE_URL") and "ADMIN" not in k):
            ours = urlsplit(re.sub(r"\$\([A-Z_]+\)", "x", k8s[key]))
            theirs = urlsplit(mine[key])
            assert (ours.username, ours.path) == (theirs.username, theirs.path), f"{name}: {key}"


# -- the run -----------------------------------------------------------------------------------------------
def http_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


async def probe_ok(probe: dict, container: dict, workload: str, local: Localizer) -> bool:
    if "httpGet" in probe:
        port = probe_port(container, probe["httpGet"]["port"], workload, local)
        status, _ = await asyncio.to_thread(http_status, f"http://127.0.0.1:{port}{probe['httpGet'].get('path', '/')}")
        return 200 <= status < 400
    if "tcpSocket" in probe:
        return await asyncio.to_thread(tcp_open, probe_port(container, probe["tcpSocket"]["port"], workload, local))
    raise AssertionError(f"{workload}: probe kind not emulated: {probe}")


class Kubelet:
    """Starts containers as declared, localized; remembers them to stop them and to show their logs."""

    def __init__(self, manifests: Manifests, local: Localizer, provided: dict, tmp: Path) -> None:
        self.manifests, self.local, self.provided, self.tmp = manifests, local, provided, tmp
        self.image = read_dockerfile()
        self.started: list[Started] = []
        self.envs: dict[tuple[str, str], dict[str, str]] = {}
        self.argvs: dict[tuple[str, str], list[str]] = {}
        (tmp / "log").mkdir()

    async def run(self, workload: dict, container: dict) -> Started:
        name = workload["metadata"]["name"]
        empty_dirs = {v["name"] for v in pod_spec(workload).get("volumes") or [] if "emptyDir" in v}
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            assert mount["name"] in empty_dirs, f"{name}: volume {mount['name']} is not an emptyDir; not emulated"
            here = self.tmp / "volumes" / name / mount["name"]
            here.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = str(here)
        raw = declared_env(container, self.manifests, self.provided)
        env = self.local.environment(name, raw, self.image, mounts)
        unresolved = {k: v for k, v in env.items() if "$(" in v}
        assert not unresolved, f"{name}/{container['name']}: references to undefined variables: {unresolved}"
        argv = self.local.argv(name, container, self.image, mounts)
        self.envs[(name, container["name"])], self.argvs[(name, container["name"])] = env, argv
        started = await start(name, container["name"], argv, env, local_path(self.image.workdir), self.tmp / "log")
        self.started.append(started)
        return started

    async def run_to_completion(self, workload: dict, container: dict, timeout: float = 90.0) -> None:
        started = await self.run(workload, container)
        try:
            async with asyncio.timeout(timeout):
                code = await started.process.wait()
        except TimeoutError:
            raise AssertionError(f"{started.workload}/{started.container} still running:\n{started.tail()}") from None
        assert code == 0, f"{started.workload}/{started.container} exited {code}:\n{started.tail()}"

    async def run_pod(self, workload: dict) -> None:
        """Init containers one after the other, to completion; then the containers."""
        spec = pod_spec(workload)
        for container in spec.get("initContainers") or []:
            await self.run_to_completion(workload, container)
        for container in spec["containers"]:
            await self.run(workload, container)

    def logs(self) -> str:
        return "\n".join(f"--- {s.workload}/{s.container} ---\n{s.tail()}" for s in self.started)


async def test_local_overlay_runs_as_declared(local_overlay: Manifests, servers: None, tmp_path: Path) -> None:
    manifests = local_overlay
    admin = urlsplit(ADMIN_DSN)
    provided = manifests.operator_secrets(("guest", "guest"), (admin.username or "postgres", admin.password or ""))
    with fresh_vhost() as amqp_url:
        vhost = unquote(urlsplit(amqp_url).path[1:])
        local = localizer_for(manifests, vhost, broker_port=RABBITMQ_HOST_PORT[1], db_port=admin.port or 5432)
        kubelet = Kubelet(manifests, local, provided, tmp_path)
        try:
            await run_and_check(manifests, local, kubelet, amqp_url)
            drained = await stop(kubelet.started, timeout=30)
            for workload in manifests.of_kind("Deployment"):
                grace = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
                for container in pod_spec(workload)["containers"]:
                    if program(container, kubelet.image.entrypoint) in PROCESSES:
                        took = drained[f"{workload['metadata']['name']}/{container['name']}"]
                        assert took is not None and took < grace, f"{container['name']} did not drain in {grace}s"
        except BaseException:
            print(kubelet.logs(), file=sys.stderr)
            raise
        finally:
            await stop(kubelet.started, timeout=5)
            for database in local.databases.values():
                with contextlib.suppress(Exception):
                    await drop_database(ADMIN_DSN, database)


async def run_and_check(manifests: Manifests, local: Localizer, kubelet: Kubelet, amqp_url: str) -> None:
    # 1. The migrations Job, to completion, as before anything else.
    jobs = manifests.of_kind("Job")
    assert jobs, "the overlay has no migrations Job"
    for job in jobs:
        for container in pod_spec(job)["containers"]:
            await kubelet.run_to_completion(job, container)

    # 2. Every Deployment: its init containers (each process migrates its own database), then its containers.
    deployments = manifests.of_kind("Deployment")
    await asyncio.gather(*(kubelet.run_pod(d) for d in deployments))

    # 3. Each container passes its startup, liveness and readiness probes, on the declared path and port.
    for workload in deployments:
        name = workload["metadata"]["name"]
        for container in pod_spec(workload)["containers"]:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind not in container:
                    continue
                probe = container[kind]

                async def passes(probe=probe, container=container, name=name) -> bool:
                    return await probe_ok(probe, container, name, local)

                await eventually(passes, timeout=60, interval=0.25, what=f"{name} {kind}")

    # 4. Metrics on the port the ServiceMonitor names, for every process.
    scraped: set[str] = set()
    for monitor in manifests.of_kind("ServiceMonitor"):
        services = [
            s
            for s in manifests.of_kind("Service")
            if label_selector_matches(monitor["spec"]["selector"], s["metadata"].get("labels") or {})
        ]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for service in services:
                port = next((p for p in service["spec"]["ports"] if p.get("name") == endpoint["port"]), None)
                assert port, f"Service {service['metadata']['name']} has no port named {endpoint['port']}"
                local_port = local.local_port(service["metadata"]["name"], port["port"])
                status, text = await asyncio.to_thread(
                    http_status, f"http://127.0.0.1:{local_port}{endpoint.get('path', '/metrics')}"
                )
                assert status == 200, f"{service['metadata']['name']}: /metrics answered {status}"
                ready = [
                    s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.name == "orderflow_ready"
                ]
                assert ready == [1.0], f"{service['metadata']['name']}: orderflow_ready {ready}"
                scraped.add(service["spec"]["selector"]["app.kubernetes.io/component"])
    assert scraped == set(PROCESSES), f"the ServiceMonitor scrapes {scraped}, not every process"

    # 5. An order published to the broker completes, with the email at the SMTP sink and the SMS at the SMS API.
    inventory = kubelet.envs[("orderflow-inventory", "inventory")]["DATABASE_URL"]
    conn = await asyncpg.connect(with_database(ADMIN_DSN, database_name(inventory)))
    try:
        sku = new_id("sku-")
        await inventory_repo.upsert_product(conn, sku, name="Mug", stock=5, price=Decimal("12.00"), currency="usd")
    finally:
        await conn.close()
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        listener = OutcomeListener()
        await listener.start(channel)
        order_id, phone = new_id(), "+15005550006"
        body = order_body(order_id, [(sku, 2)])
        body["customer"]["phone"] = phone
        await publish_raw(channel, json.dumps(body).encode())
        outcome = await outcome_of(listener, order_id, timeout=60)
    finally:
        await connection.close()
    assert outcome["status"] == "CONFIRMED", outcome

    sink = next(argv for argv in kubelet.argvs.values() if "smtp-sink" in argv)
    maildir = Path(sink[sink.index("--maildir") + 1])

    async def email() -> list:
        return [m for m in messages(maildir) if order_id in (m["Subject"] or "")]

    await eventually(email, timeout=15, what="the confirmation email at the SMTP sink")

    sms_api = kubelet.envs[("orderflow-notify", "notify")]["TWILIO_BASE_URL"]

    async def sms() -> list:
        _, listing = await asyncio.to_thread(http_status, f"{sms_api}/_test/messages")
        return [m for m in json.loads(listing)["messages"] if m["to"] == phone and order_id in m["body"]]

    await eventually(sms, timeout=15, what="the confirmation SMS at the SMS API")

    # Stripe's webhooks reached payment through the webhook Service, signed with the secret it checks.
    stripe = kubelet.envs[("orderflow-payment", "payment")]["STRIPE_API_BASE"]

    async def webhooks_delivered() -> list:
        _, state = await asyncio.to_thread(http_status, f"{stripe}/_test/state")
        deliveries = json.loads(state).get("webhook_deliveries", [])
        done = [d for d in deliveries if d["status"] != "pending"]
        return done if deliveries and len(done) == len(deliveries) else []

    deliveries = await eventually(webhooks_delivered, timeout=20, what="the webhook deliveries")
    assert {d["status"] for d in deliveries} == {"delivered"}, deliveries

    # The orchestrator's API through its Service's api port: 401 without a token, the saga to a viewer's token.
    api = next(p for p in manifests.get("Service", "orderflow-orchestrator")["spec"]["ports"] if p["name"] == "api")
    port = local.local_port("orderflow-orchestrator", api["port"])
    url = f"http://127.0.0.1:{port}/orders/{quote(order_id, safe='')}"
    status, body = await asyncio.to_thread(http_status, url)
    assert status == 401, body
    orchestrator = kubelet.envs[("orderflow-orchestrator", "orchestrator")]["DATABASE_URL"]
    conn = await asyncpg.connect(with_database(ADMIN_DSN, database_name(orchestrator)))
    try:
        token, _ = await api_tokens.create(conn, role="viewer", name="manifests", created_by="test_manifests")
    finally:
        await conn.close()
    status, body = await asyncio.to_thread(http_status, url, {"Authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["status"] == "CONFIRMED", body
