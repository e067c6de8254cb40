"""The Stripe events the local installations subscribe payment's endpoint to are exactly the ones it acts on."""

from pathlib import Path

import yaml

from devservers.stripe_server.__main__ import parse_args
from orderctl.config import STRIPE_WEBHOOK_EVENTS
from orderctl.supervisor import stripe_server_env
from services.payment.webhooks import HANDLED

ROOT = Path(__file__).resolve().parents[2]


def _listed(value: str) -> set[str]:
    return {event for event in value.split(",") if event}


def test_orderctl_subscribes_to_what_payment_handles() -> None:
    assert set(STRIPE_WEBHOOK_EVENTS) == HANDLED


def test_the_supervised_stripe_server_gets_the_list(monkeypatch) -> None:
    from orderctl.config import CtlSettings

    env = stripe_server_env(CtlSettings())
    monkeypatch.setenv("STRIPE_SIM_WEBHOOK_EVENTS", env["STRIPE_SIM_WEBHOOK_EVENTS"])
    assert _listed(parse_args([]).webhook_events) == HANDLED


def test_compose_and_the_local_overlay_list_the_same_events() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert _listed(compose["services"]["stripe-sim"]["environment"]["STRIPE_SIM_WEBHOOK_EVENTS"]) == HANDLED
    documents = list(yaml.safe_load_all((ROOT / "deploy/k8s/overlays/local/devservers.yaml").read_text()))
    env = [
        variable
        for document in documents
        if document and document.get("kind") == "Deployment"
        for container in document["spec"]["template"]["spec"]["containers"]
        for variable in container.get("env", [])
        if variable["name"] == "STRIPE_SIM_WEBHOOK_EVENTS"
    ]
    assert len(env) == 1 and _listed(env[0]["value"]) == HANDLED


def test_the_stripe_server_defaults_to_every_event(monkeypatch) -> None:
    monkeypatch.delenv("STRIPE_SIM_WEBHOOK_EVENTS", raising=False)
    assert parse_args([]).webhook_events == "*"
