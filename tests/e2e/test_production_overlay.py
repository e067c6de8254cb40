"""The production overlay as its containers would read it: every process and every migrate container starts
in production mode (no development default left), on amqps:// and verify-full against the CA it mounts, and
connects to host names the cert-manager certificates carry."""

from urllib.parse import parse_qs, urlsplit

import pytest
from manifests_support import Manifests, build, declared_env, expand, pod_spec

from orderctl.config import SERVICES, CtlSettings
from plumbing.settings import ProcessSettings

pytestmark = pytest.mark.e2e
yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests: scripts/check-manifests installs it")

CA_DIR = "/etc/orderflow/ca"
CA_FILE = f"{CA_DIR}/ca.crt"
PROCESSES = {spec.name: spec.module for spec in SERVICES}


@pytest.fixture(scope="module")
def production() -> Manifests:
    return Manifests(build("overlays/production"))


def environment(container: dict, manifests: Manifests) -> dict[str, str]:
    """The container's variables as the kubelet sets them: $(VAR) expanded in order, Secrets as placeholders."""
    provided = manifests.operator_secrets(("user", "password"), ("postgres", "password"))
    env: dict[str, str] = {}
    for var in declared_env(container, manifests, provided, secrets_exist=True):
        env[var.name] = expand(var.value, env) if var.literal else var.value
    return env


def certificate_names(manifests: Manifests, name: str) -> set[str]:
    certificate = manifests.get("Certificate", name)
    assert certificate is not None, f"no Certificate {name}"
    return set(certificate["spec"]["dnsNames"])


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return (spec.get("initContainers") or []) + spec["containers"]


def program(container: dict) -> str:
    """What docker/entrypoint.sh runs: its first argument (``payment``, ``migrate``, ...)."""
    return (container.get("args") or [""])[0]


def settings_class(process: str) -> type[ProcessSettings]:
    module = __import__(f"{PROCESSES[process]}.main", fromlist=["main"])
    return next(
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, ProcessSettings) and c.__module__ == module.__name__
    )


def test_every_container_starts_in_production_mode_on_tls(
    production: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker_names = certificate_names(production, "orderflow-broker-tls")
    db_names = certificate_names(production, "orderflow-db-server-tls")
    checked = []
    for workload in production.workloads():
        spec = pod_spec(workload)
        ca_volumes = {
            v["name"]
            for v in spec.get("volumes") or []
            if v.get("secret", {}).get("secretName") == "orderflow-ca"
            and v["secret"].get("items") == [{"key": "ca.crt", "path": "ca.crt"}]
        }
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
            assert CA_DIR in mounts and mounts[CA_DIR]["name"] in ca_volumes, f"{where}: the CA is not mounted"
            assert mounts[CA_DIR].get("readOnly") is True, where
            env = environment(container, production)
            for name in list(env):
                monkeypatch.delenv(name, raising=False)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            assert env["ORDERFLOW_ENVIRONMENT"] == "production", where
            assert env["PGSSLROOTCERT"] == CA_FILE, where
            name = program(container)
            if name in PROCESSES:
                settings = settings_class(name)()  # RefusedInProduction (SystemExit) would end the test here
                amqp, database = urlsplit(settings.amqp_url), urlsplit(settings.database_url)
                assert (amqp.scheme, amqp.port, parse_qs(amqp.query)["cafile"]) == ("amqps", 5671, [CA_FILE]), where
                assert amqp.hostname in broker_names, f"{where}: {amqp.hostname} is not in the broker's certificate"
            else:
                assert name == "migrate", where
                args = container.get("args") or []
                only = args[args.index("--service") + 1] if "--service" in args else None
                ctl = CtlSettings()
                ctl.refuse_development_defaults(only=only)
                database = urlsplit(ctl.admin_database_url)
            assert parse_qs(database.query)["sslmode"] == ["verify-full"], where
            assert database.hostname in db_names, f"{where}: {database.hostname} is not in the database's certificate"
            checked.append(name)
    assert sorted(set(checked)) == sorted({*PROCESSES, "migrate"})
    assert checked.count("migrate") == len(PROCESSES) + 1  # each Deployment's init container and the Job
