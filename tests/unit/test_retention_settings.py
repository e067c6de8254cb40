"""Retention settings: a retention shorter than the redelivery window it must cover is refused at start, and
the floor stays above the longest window the workflow allows."""

import pytest
from pydantic import ValidationError

from orchestrator import definition
from orchestrator.definition import ParallelState, TaskState
from plumbing import retention
from plumbing.settings import ProcessSettings
from services.inventory.main import InventorySettings
from services.payment.main import PaymentSettings

pytestmark = pytest.mark.unit


def test_defaults_are_a_week_and_thirty_days() -> None:
    assert ProcessSettings().inbox_retention_hours == 168
    assert PaymentSettings().webhook_event_retention_hours == 720


def test_an_inbox_retention_below_the_floor_is_refused_naming_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("INBOX_RETENTION_HOURS", "12")
    with pytest.raises(ValidationError, match="INBOX_RETENTION_HOURS=12 is shorter than 24 h"):
        InventorySettings()
    monkeypatch.setenv("INBOX_RETENTION_HOURS", "24")
    assert InventorySettings().inbox_retention_hours == 24


def test_a_webhook_retention_shorter_than_stripes_retries_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("WEBHOOK_EVENT_RETENTION_HOURS", "48")
    with pytest.raises(ValidationError, match=r"WEBHOOK_EVENT_RETENTION_HOURS=48 .* Stripe's webhook retries"):
        PaymentSettings()


def test_rules_take_plain_identifiers_only() -> None:
    with pytest.raises(ValueError, match="plain identifier"):
        retention.Rule(table="inbox; DROP TABLE inbox", column="processed_at", hours=168)


def longest_redelivery_window_seconds(workflow: definition.Workflow, delivery_limit: int) -> float:
    """A generous bound on how long after its first delivery a message can arrive again: every step of the
    saga run with every retry at its longest wait, each delivery of each command taking its whole window."""

    def bound(states: dict) -> float:
        total = 0.0
        for state in states.values():
            if isinstance(state, TaskState):
                runs = 1 + sum(r.MaxAttempts for r in state.Retry)
                waits = sum(
                    min(r.IntervalSeconds * r.BackoffRate ** (n - 1), r.MaxDelaySeconds or float("inf"))
                    for r in state.Retry
                    for n in range(1, r.MaxAttempts + 1)
                )
                total += runs * state.TimeoutSeconds * delivery_limit + waits
            elif isinstance(state, ParallelState):
                total += sum(bound(branch.States) for branch in state.Branches) + (state.TimeoutSeconds or 0)
        return total

    return bound(workflow.States)


def test_the_floor_exceeds_the_workflows_longest_redelivery_window() -> None:
    window = longest_redelivery_window_seconds(definition.load(), ProcessSettings().delivery_limit)
    assert window < retention.RETENTION_FLOOR_HOURS * 3600, f"the workflow's window is {window / 3600:.1f} h"


def test_fraud_decisions_are_kept_ninety_days_and_never_under_the_idempotency_window(monkeypatch) -> None:
    assert PaymentSettings().fraud_screening_retention_days == 90
    monkeypatch.setenv("FRAUD_SCREENING_RETENTION_DAYS", "3")
    refused = r"FRAUD_SCREENING_RETENTION_DAYS=3 is shorter than 7 days, the idempotency window"
    with pytest.raises(ValidationError, match=refused):
        PaymentSettings()
