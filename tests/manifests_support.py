"""Run what the Kubernetes manifests declare, on this machine, as a kubelet would run it.

The kustomize output of an overlay is read as data: each container's command comes from its ``command`` and
``args`` and the Dockerfile's ENTRYPOINT, its environment from the Dockerfile's ENV, its ``envFrom`` and
``env`` (ConfigMap and Secret values substituted, ``$(VAR)`` expanded as Kubernetes expands it). What only a
cluster has is rewritten, and nothing else: Service and operator host names become 127.0.0.1 with the
local port behind them, database names and the RabbitMQ vhost become the test's own, emptyDir mount paths
become temporary directories, and a container port already taken here moves to a free one (everywhere the
container names it). The operators' Secrets (RabbitMQ's default user, PostgreSQL's superuser) hold the
local servers' credentials.
"""

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

try:
    import yaml
except ImportError:  # tests/e2e/test_manifests.py skips, saying so; scripts/check-manifests installs PyYAML
    yaml = None

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy/k8s"
#: Where the image keeps what this checkout holds (Dockerfile: WORKDIR /app, the virtualenv in /opt/venv).
IMAGE_PATHS = {"/app": str(REPO), "/opt/venv": sys.prefix}
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "postgresql": 5432, "postgres": 5432, "http": 80, "https": 443}
Obj = dict[str, Any]


def kubectl() -> str:
    """kubectl on the PATH, or the one scripts/check-manifests installs into .venv/bin."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(REPO / ".venv/bin"))
    if not found:
        raise RuntimeError("kubectl not found: run scripts/check-manifests, which installs it")
    return found


def build(overlay: str) -> list[Obj]:
    """``kubectl kustomize deploy/k8s/<overlay>``, parsed (``"."``: deploy/k8s itself)."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def build_with_components(*components: str, on: str = "base") -> list[Obj]:
    """``on`` (the base, or an overlay: ``overlays/production``) with optional components (``components/<name>``),
    as an overlay adding them would build it: recommended-labels last, so the components' objects carry them."""
    listed = "".join(f"  - ../../components/{c}\n" for c in (*components, "recommended-labels"))
    # Inside deploy/k8s: kustomize refuses absolute paths and resolves ../../ from here.
    with tempfile.TemporaryDirectory(dir=K8S, prefix=".test.") as scratch:
        (Path(scratch) / "with").mkdir()
        (Path(scratch) / "with/kustomization.yaml").write_text(
            f"namespace: orderflow\nresources: [../../{on}]\ncomponents:\n{listed}"
        )
        return build(str(Path(scratch) / "with"))


# -- the image ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Image:
    """What the final stage of the Dockerfile gives a container: entrypoint, default args, directory, env."""

    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    env: dict[str, str]


def read_dockerfile(path: Path = REPO / "Dockerfile") -> Image:
    lines = re.sub(r"\\\n", " ", path.read_text()).splitlines()
    last_from = max(i for i, line in enumerate(lines) if line.strip().upper().startswith("FROM "))
    entrypoint: list[str] = []
    cmd: list[str] = []
    workdir = "/"
    env: dict[str, str] = {}
    for line in lines[last_from + 1 :]:
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "CMD":
            cmd = json.loads(rest)
        elif instruction == "WORKDIR":
            workdir = rest.strip()
        elif instruction == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return Image(entrypoint=entrypoint, cmd=cmd, workdir=workdir, env=env)


def local_path(value: str) -> str:
    """An image path (``/app/...``, ``/opt/venv/...``) as this checkout's path; other values unchanged."""
    for image_path, here in IMAGE_PATHS.items():
        value = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?=/|:|$)", here, value)
    return value


# -- objects -----------------------------------------------------------------------------------------------
class Manifests:
    """The objects of one kustomize build, looked up by kind and name."""

    def __init__(self, objects: list[Obj]) -> None:
        self.objects = objects

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def namespace(self) -> str:
        return next(o["metadata"]["namespace"] for o in self.objects if o["metadata"].get("namespace"))

    def workloads(self) -> list[Obj]:
        return self.of_kind("Deployment") + self.of_kind("Job")

    def operator_secrets(self, broker: tuple[str, str], admin: tuple[str, str]) -> dict[str, dict[str, str]]:
        """The Secrets the operators create, holding the local servers' credentials."""
        secrets = {}
        for cluster in self.of_kind("RabbitmqCluster"):
            name = cluster["metadata"]["name"]
            secrets[f"{name}-default-user"] = {"username": broker[0], "password": broker[1], "port": "5672"}
        # The Messaging Topology Operator's Users import a Secret each: here every process logs in as the local
        # broker's user instead (user names are global to a broker; tests/e2e/test_own_broker_users.py runs the
        # processes on their own users).
        for user in self.of_kind("User"):
            if user["apiVersion"].startswith("rabbitmq.com/") and "importCredentialsSecret" in user["spec"]:
                secrets[user["spec"]["importCredentialsSecret"]["name"]] = {
                    "username": broker[0],
                    "password": broker[1],
                }
        for cluster in self.of_kind("Cluster"):
            if cluster["apiVersion"].startswith("postgresql.cnpg.io/"):
                name = cluster["metadata"]["name"]
                secrets[f"{name}-superuser"] = {"username": admin[0], "password": admin[1], "port": "5432"}
        return secrets

    def operator_services(self) -> dict[str, list[int]]:
        """Services the operators create: RabbitMQ's is named after the cluster, CloudNativePG's -rw, -ro, -r."""
        services: dict[str, list[int]] = {}
        for cluster in self.of_kind("RabbitmqCluster"):
            services[cluster["metadata"]["name"]] = [5672]
        for cluster in self.of_kind("Cluster"):
            if cluster["apiVersion"].startswith("postgresql.cnpg.io/"):
                for suffix in ("-rw", "-ro", "-r"):
                    services[cluster["metadata"]["name"] + suffix] = [5432]
        return services

    def config_data(self, kind: str, name: str, provided: dict[str, dict[str, str]]) -> dict[str, str] | None:
        if kind == "Secret" and name in provided:  # what the operators (stood in for) hold wins
            return provided[name]
        obj = self.get(kind, name)
        if obj is None:
            return provided.get(name) if kind == "Secret" else None
        data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return data


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    if not selects(selector.get("matchLabels") or {}, labels):
        return False
    for expression in selector.get("matchExpressions") or []:
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression.get("values", []):
            return False
        if operator == "Exists" and not present or operator == "DoesNotExist" and present:
            return False
    return True


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels") or {}


# -- environment -------------------------------------------------------------------------------------------
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, the rest stays as is."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(replace, value)


def references(value: str) -> set[str]:
    return {m.group(1) for m in _REFERENCE.finditer(value) if m.group(1)}


@dataclass
class RawVar:
    """One variable as declared, before expansion; ``source`` says where it came from (for messages)."""

    name: str
    value: str
    source: str
    literal: bool  # a `value:` in the manifest (expanded) rather than a ConfigMap or Secret value (not expanded)


def declared_env(
    container: Obj, manifests: Manifests, provided: dict[str, dict[str, str]], *, secrets_exist: bool = False
) -> list[RawVar]:
    """The container's variables in the kubelet's order: envFrom first, then env, with values looked up.

    ``secrets_exist``: a Secret the build does not contain is taken to exist (created by hand, as the
    production and external overlays expect), with placeholder values.
    """
    out: list[RawVar] = []
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        )
        data = manifests.config_data(kind, ref["name"], provided)
        if data is None:
            if ref.get("optional"):
                continue
            raise AssertionError(f"{container['name']}: envFrom {kind} {ref['name']} does not exist")
        out += [RawVar(source.get("prefix", "") + k, v, f"{kind} {ref['name']}", False) for k, v in data.items()]
    for var in container.get("env") or []:
        if "value" in var:
            out.append(RawVar(var["name"], str(var["value"]), "value", True))
            continue
        source = var["valueFrom"]
        if "fieldRef" in source or "resourceFieldRef" in source:
            raise AssertionError(f"{container['name']}: {var['name']} uses a field reference; not emulated")
        kind, ref = (
            ("ConfigMap", source["configMapKeyRef"])
            if "configMapKeyRef" in source
            else ("Secret", source["secretKeyRef"])
        )
        data = manifests.config_data(kind, ref["name"], provided)
        if kind == "Secret" and data is None and secrets_exist:
            data = {ref["key"]: "placeholder"}
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                continue
            raise AssertionError(f"{container['name']}: {var['name']} needs {kind} {ref['name']} key {ref['key']}")
        out.append(RawVar(var["name"], data[ref["key"]], f"{kind} {ref['name']}", False))
    return out


# -- this machine's stand-ins ------------------------------------------------------------------------------
def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Localizer:
    """Rewrites what only a cluster has into this machine's equivalents (see the module's docstring)."""

    namespace: str
    vhost: str
    #: Service host -> {service port: local port}
    services: dict[str, dict[int, int]] = field(default_factory=dict)
    #: (workload, container port) -> local port
    container_ports: dict[tuple[str, int], int] = field(default_factory=dict)
    #: declared database name -> the test's database name
    databases: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"of_m{uuid.uuid4().hex[:8]}")

    def service_of(self, host: str) -> str | None:
        for suffix in ("", f".{self.namespace}", f".{self.namespace}.svc", f".{self.namespace}.svc.cluster.local"):
            if suffix and host.endswith(suffix) and host[: -len(suffix)] in self.services:
                return host[: -len(suffix)]
            if not suffix and host in self.services:
                return host
        return None

    def local_port(self, service: str, port: int) -> int:
        ports = self.services[service]
        if port not in ports:
            raise AssertionError(f"Service {service} has no port {port} (it has {sorted(ports)})")
        return ports[port]

    def database(self, name: str) -> str:
        if name in ("", "postgres") or name in self.databases.values():
            return name
        return self.databases.setdefault(name, f"{self.prefix}_{name}"[:63])

    def url(self, value: str) -> str:
        """Hosts of Services to 127.0.0.1 with the local port; database names and vhost to the test's own."""
        parts = urlsplit(value)
        if not parts.scheme or not parts.netloc or parts.hostname is None:
            return value
        netloc, scheme = parts.netloc, parts.scheme
        service = self.service_of(parts.hostname)
        if service is not None:
            port = self.local_port(service, parts.port or DEFAULT_PORTS[scheme])
            userinfo = netloc.rpartition("@")[0]
            netloc = (userinfo + "@" if "@" in netloc else "") + f"127.0.0.1:{port}"
        path = parts.path
        if scheme.startswith("postgres"):
            path = "/" + self.database(unquote(path.lstrip("/")))
        elif scheme.startswith("amqp"):
            path = "/" + quote(self.vhost, safe="")
        return urlunsplit(parts._replace(netloc=netloc, path=path))

    def environment(self, workload: str, raw: list[RawVar], image: Image, mounts: dict[str, str]) -> dict[str, str]:
        """The process's environment: image ENV, then the declared variables, localized and expanded."""
        # X_HOST naming a Service becomes 127.0.0.1, and its sibling X_PORT the local port behind that Service.
        services = {v.name[: -len("_HOST")]: self.service_of(v.value) for v in raw if v.name.endswith("_HOST")}
        env = {k: local_path(v) for k, v in image.env.items()}
        for var in raw:
            value = var.value
            stem, _, suffix = var.name.rpartition("_")
            if suffix == "HOST" and services.get(stem):
                value = "127.0.0.1"
            elif suffix == "PORT" and services.get(stem) and value.isdigit():
                value = str(self.local_port(services[stem], int(value)))
            elif value.isdigit() and (workload, int(value)) in self.container_ports:
                value = str(self.container_ports[(workload, int(value))])
            if var.literal:  # only `value:` is expanded; ConfigMap and Secret values are taken as they are
                value = expand(value, env)
            env[var.name] = self.localize_value(value, mounts)
        return env

    def localize_value(self, value: str, mounts: dict[str, str]) -> str:
        for mount, here in mounts.items():
            value = re.sub(rf"^{re.escape(mount)}(?=/|$)", here, value)
        return self.url(value) if "://" in value else local_path(value)

    def argv(self, workload: str, container: Obj, image: Image, mounts: dict[str, str]) -> list[str]:
        command = container.get("command")
        args = container.get("args")
        argv = (command or image.entrypoint) + (args if args is not None else ([] if command else image.cmd))
        out = []
        for arg in argv:
            arg = self.localize_value(arg, mounts)
            if arg.isdigit() and (workload, int(arg)) in self.container_ports:
                arg = str(self.container_ports[(workload, int(arg))])
            out.append(arg)
        return out


def localizer_for(manifests: Manifests, vhost: str, broker_port: int, db_port: int) -> Localizer:
    """Map every Service (and the operators' Services) to the local port that stands behind it."""
    local = Localizer(namespace=manifests.namespace(), vhost=vhost)
    for workload in manifests.of_kind("Deployment"):
        name = workload["metadata"]["name"]
        for container in pod_spec(workload)["containers"]:
            for port in container.get("ports") or []:
                number = port["containerPort"]
                local.container_ports[(name, number)] = number if port_free(number) else free_port()
    for service, ports in manifests.operator_services().items():
        local.services[service] = {p: (broker_port if p in (5671, 5672) else db_port) for p in ports}
    for service in manifests.of_kind("Service"):
        backends = [
            w for w in manifests.of_kind("Deployment") if selects(service["spec"].get("selector") or {}, pod_labels(w))
        ]
        mapped: dict[int, int] = {}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in backends:
                for container in pod_spec(workload)["containers"]:
                    for declared in container.get("ports") or []:
                        if target in (declared.get("name"), declared["containerPort"]):
                            key = (workload["metadata"]["name"], declared["containerPort"])
                            mapped[port["port"]] = local.container_ports[key]
        local.services[service["metadata"]["name"]] = mapped
    return local


def probe_port(container: Obj, port: int | str, workload: str, local: Localizer) -> int:
    """A probe's port (a number or the name of a container port) as the local port."""
    if isinstance(port, str) and not port.isdigit():
        port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
    return local.container_ports.get((workload, int(port)), int(port))


# -- processes ---------------------------------------------------------------------------------------------
@dataclass
class Started:
    """One container's process."""

    workload: str
    container: str
    process: asyncio.subprocess.Process
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


async def start(workload: str, name: str, argv: list[str], env: dict[str, str], cwd: str, log_dir: Path) -> Started:
    log = log_dir / f"{workload}.{name}.log"
    with open(log, "ab") as out:  # noqa: ASYNC230 - opened once, handed to the child
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Started(workload, name, process, log)


def signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def stop(started: list[Started], timeout: float) -> dict[str, float | None]:
    """SIGTERM every process group, as the kubelet does; SIGKILL what is left after ``timeout``.

    Returns each process's seconds from SIGTERM to exit (None: it had to be killed).
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    running = [s for s in started if s.process.returncode is None]
    for s in running:
        signal_group(s.process, signal.SIGTERM)

    async def wait(s: Started) -> float | None:
        try:
            async with asyncio.timeout(timeout):
                await s.process.wait()
            return loop.time() - began
        except TimeoutError:
            signal_group(s.process, signal.SIGKILL)
            await s.process.wait()
            return None

    durations = await asyncio.gather(*(wait(s) for s in running))
    return {f"{s.workload}/{s.container}": d for s, d in zip(running, durations, strict=True)}
