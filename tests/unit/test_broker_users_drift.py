"""The Kubernetes User, Permission and TopicPermission objects say what contracts/permissions.py says, and each
process reads its RabbitMQ credentials from its own Secret, the one its User imports."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from contracts import permissions
from plumbing.topology import REPLIES_EXCHANGE

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parents[2] / "deploy/k8s"


def objects(path: Path) -> list[dict]:
    return [o for o in yaml.safe_load_all(path.read_text()) if o]


def test_the_manifests_express_the_permissions_table() -> None:
    found = objects(K8S / "components/broker-users/users.yaml")
    users = {o["metadata"]["name"]: o for o in found if o["kind"] == "User"}
    grants = {o["spec"]["userReference"]["name"]: o["spec"] for o in found if o["kind"] == "Permission"}
    topics: dict[str, dict[str, dict]] = {}
    for o in found:
        if o["kind"] == "TopicPermission":
            spec = o["spec"]
            topics.setdefault(spec["userReference"]["name"], {})[spec["permissions"]["exchange"]] = spec["permissions"]
    table = permissions.table()
    assert set(users) == set(grants) == {permissions.user_name(p) for p in table}
    for process, access in table.items():
        name = permissions.user_name(process)
        assert users[name]["spec"]["importCredentialsSecret"]["name"] == f"orderflow-broker-{process}"
        assert users[name]["spec"]["tags"] == []  # no management access, no impersonation
        assert grants[name]["vhost"] == "/"
        g = access.grant
        assert grants[name]["permissions"] == {"configure": g.configure, "write": g.write, "read": g.read}
        expected = {t.exchange: {"exchange": t.exchange, "write": t.write, "read": t.read} for t in access.topics}
        assert topics.get(name, {}) == expected


def test_the_manifests_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("gen_broker_users", K8S / "gen-broker-users.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.OUT.read_text() == generator.render(), "run deploy/k8s/gen-broker-users.py"


@pytest.mark.parametrize("process", permissions.PROCESSES)
def test_each_process_reads_its_own_secret(process: str) -> None:
    deployment = next(o for o in objects(K8S / f"base/{process}.yaml") if o["kind"] == "Deployment")
    env = {e["name"]: e for c in deployment["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    for variable, key in (("AMQP_USERNAME", "username"), ("AMQP_PASSWORD", "password")):
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (f"orderflow-broker-{process}", key)


def test_only_the_orchestrator_sends_commands_and_events_and_no_service_reads_another_s_queue() -> None:
    table = permissions.table()
    for service in permissions.SERVICES:
        grant = table[service].grant
        assert grant.write.count("commands") == 2  # its own queue and dead-letter queue (binding), no exchange
        others = [s for s in permissions.SERVICES if s != service]
        for other in others:
            assert f"{other}\\.commands" not in grant.read + grant.configure
        assert REPLIES_EXCHANGE.replace(".", "\\.") not in grant.read  # cannot bind to the replies


def test_a_reply_is_accepted_only_from_its_service_or_a_shared_user() -> None:
    check = permissions.sender_refusal
    mine = {"own_user": "orderflow-orchestrator", "own_process": "orchestrator"}
    assert check("PaymentProcessed", "orderflow-payment", **mine) is None
    assert check("PaymentProcessed", "orderflow-notify", **mine).startswith("forged: ")
    assert check("PaymentProcessed", None, **mine).startswith("forged: ")
    assert check("CommandFailed", "orderflow-notify", **mine) is None
    assert check("CustomerNotified", "orderflow-notify", **mine) is None
    # One user for every process (guest on a development machine): nothing can be told apart, all pass.
    assert check("PaymentProcessed", "guest", own_user="guest", own_process="orchestrator") is None
    assert check("PaymentProcessed", None, own_user="guest", own_process="orchestrator") is None
    assert check("PaymentProcessed", "other", own_user="guest", own_process="orchestrator").startswith("forged: ")
    # Every reply type has its senders.
    replies = {s.model.__name__ for s in permissions.MESSAGES if s.kind == "reply"}
    assert set(permissions.REPLY_SENDERS) == replies
