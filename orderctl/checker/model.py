"""What the checker reads and reports: the snapshot of every database, violations, the report."""

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import asyncpg

CONFIRMED = "CONFIRMED"
#: A compensation failed after its retries: money or stock may still be held, for an operator to redrive.
FAILED_CRITICAL = "FAILED_CRITICAL"
#: Stripe refunds that moved money or will.
REFUND_COUNTED = ("succeeded", "pending", "requires_action")


class CheckError(Exception):
    """A database could not be read as the checker expects (not migrated, not reachable)."""


@dataclass(frozen=True)
class Violation:
    rule: str
    order_id: str | None
    detail: str


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        return {"figures": self.figures, "violations": [asdict(v) for v in self.violations]}


@dataclass
class Saga:
    status: str
    notification_error: bool = False
    #: History entries the rules read, oldest first: (event, lane, state, detail).
    history: list[tuple[str, str, str | None, Any]] = field(default_factory=list)
    moved: str = ""


@dataclass
class Snapshot:
    """Everything the rules read, keyed by order id where the data is per order."""

    allow_running: bool
    terminal: frozenset[str]
    sagas: dict[str, Saga]
    products: dict[str, asyncpg.Record]
    reservations: dict[str, list[str]]
    payments: dict[str, asyncpg.Record]
    refunds: dict[str, list[asyncpg.Record]]
    records: dict[str, str]
    notifications: dict[str, dict[str, str]]
    stripe: dict[str, Any] | None = None

    def settled(self) -> Iterator[tuple[str, Saga]]:
        """Orders whose saga has ended: the ones whose effects are final."""
        return ((o, s) for o, s in self.sagas.items() if s.status in self.terminal)

    @cached_property
    def intents_by_order(self) -> dict[str, list[dict[str, Any]]]:
        intents: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for intent in (self.stripe or {}).get("payment_intents", []):
            if order_id := (intent.get("metadata") or {}).get("orderId"):
                intents[order_id].append(intent)
        return intents

    @cached_property
    def charges_by_intent(self) -> dict[str, list[dict[str, Any]]]:
        charges: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for charge in (self.stripe or {}).get("charges", []):
            charges[charge.get("payment_intent") or ""].append(charge)
        return charges

    def refunded(self, order_id: str) -> int:
        return sum(r["amount_minor"] for r in self.refunds.get(order_id, []) if r["status"] in REFUND_COUNTED)

    def taken(self, order_id: str) -> int:
        payment = self.payments.get(order_id)
        return payment["amount_minor"] if payment is not None and payment["status"] == "succeeded" else 0

    def net(self, order_id: str) -> int:
        """Money kept from the order in minor units: Stripe's charges when given, else our ledger."""
        if self.stripe is None:
            return self.taken(order_id) - self.refunded(order_id)
        charges = self.charges_by_intent
        return sum(
            c["amount"] - c["amount_refunded"]
            for intent in self.intents_by_order.get(order_id, [])
            for c in charges.get(intent["id"], [])
            if c["status"] == "succeeded" and c.get("captured", True)
        )
