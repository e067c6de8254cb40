"""What the checker reads and reports: the snapshot of every database, violations, the report."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

CONFIRMED = "CONFIRMED"
#: A compensation failed after its retries: money or stock may still be held, for an operator to redrive.
FAILED_CRITICAL = "FAILED_CRITICAL"
#: The cancellation workflow's statuses (orchestrator/cancellation.json).
CANCELLED_BY_CUSTOMER, CANCELLATION_FAILED = "CANCELLED_BY_CUSTOMER", "CANCELLATION_FAILED"
CANCELLATION_ENDS = frozenset({CANCELLED_BY_CUSTOMER, CANCELLATION_FAILED})
#: Every status a cancellation saga is counted by in the figures.
CANCELLATION_STATUSES = ("CANCELLED_BY_CUSTOMER", "CANCELLATION_FAILED", "RUNNING")
#: Stripe refunds that moved money or will.
REFUND_COUNTED = ("succeeded", "pending", "requires_action")
#: PaymentIntent statuses that may still take money: an authorization to capture, or an attempt we could
#: still confirm or that is still being processed. ``canceled`` and ``requires_payment_method`` (declined)
#: take nothing more.
INTENT_OPEN = ("requires_capture", "requires_action", "requires_confirmation", "processing")


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
    #: What the check did not judge and why, one line each (e.g. the payment provider when not configured).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        return {"figures": self.figures, "notes": self.notes, "violations": [asdict(v) for v in self.violations]}


@dataclass(frozen=True)
class Refund:
    id: str
    amount: int
    status: str
    #: Made by the payment service: its metadata names the order (one made at Stripe's dashboard names none).
    ours: bool = True


@dataclass(frozen=True)
class Intent:
    """A PaymentIntent as the payment provider holds it, with its refunds (minor units)."""

    id: str
    status: str
    amount: int
    amount_received: int
    currency: str
    refunds: tuple[Refund, ...] = ()

    @property
    def refunded(self) -> int:
        """Money returned: succeeded refunds only (a pending one has not reached the customer yet)."""
        return sum(r.amount for r in self.refunds if r.status == "succeeded")

    @property
    def kept(self) -> int:
        return self.amount_received - self.refunded

    def describe(self) -> str:
        refunded = f", refunded {self.refunded}" if self.refunded else ""
        pending = sum(r.amount for r in self.refunds if r.status in REFUND_COUNTED and r.status != "succeeded")
        waiting = f", {pending} refund pending" if pending else ""
        return f"{self.id} {self.status} {self.amount_received}/{self.amount} {self.currency}{refunded}{waiting}"


@dataclass
class Saga:
    status: str
    notification_error: bool = False
    #: History entries the rules read, oldest first: (event, lane, state, detail).
    history: list[tuple[str, str, str | None, Any]] = field(default_factory=list)
    moved: str = ""
    #: The priced amount in minor units and its currency ($.inventory), once CheckInventory answered.
    amount_minor: int | None = None
    currency: str | None = None
    #: The status of the order's cancellation saga (the cancellation workflow), if a CancelOrder started one.
    cancellation: str | None = None
    #: The cancellation saga's own facts: its NotifyCancellation failed (caught), the refund it recorded
    #: ($.refund.refundId), the error it ended with (a CANCELLATION_FAILED's).
    cancellation_notification_error: bool = False
    cancellation_refund_id: str | None = None
    cancellation_error: str | None = None

    @property
    def refunded_by_hand(self) -> bool:
        """Customer service asked for a refund of this order (a manual refund, orchestrator/api_refund.py): a
        CONFIRMED order may then keep less than it was charged, down to nothing. It never exceeds the charge
        all the same (refunds-within-charge)."""
        return any(event == "ManualRefundRequested" for event, *_ in self.history)

    def judged(self) -> str | None:
        """The order's status as the money, stock and record rules judge it: its saga's, or
        CANCELLED_BY_CUSTOMER once its cancellation completed (refunded, restocked, voided); None while a
        cancellation runs or after one failed: exempt, as FAILED_CRITICAL is, until an operator redrives it."""
        if self.cancellation is None:
            return self.status
        return CANCELLED_BY_CUSTOMER if self.cancellation == CANCELLED_BY_CUSTOMER else None


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
    #: The payment provider's PaymentIntents of every order that had ended when it was read; None: not read.
    provider: dict[str, list[Intent]] | None = None
    #: The cancellation notices (notification kind 'cancellation'), by order and channel.
    cancellation_notices: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Customer service's manual refunds (saga_manual_action rows, action 'refund'), by order, oldest first.
    manual_refunds: dict[str, list[asyncpg.Record]] = field(default_factory=dict)
    #: Orders with an effect younger than the orchestrator's saga retention; None: every order is (no retention).
    recent: set[str] | None = None
    #: Products held more than once for one order (reservations active or committed), with how many holds.
    double_holds: dict[str, dict[str, int]] = field(default_factory=dict)

    def settled(self) -> Iterator[tuple[str, Saga]]:
        """Orders whose saga has ended: the ones whose effects are final."""
        return ((o, s) for o, s in self.sagas.items() if s.status in self.terminal)

    def refunded(self, order_id: str) -> int:
        return sum(r["amount_minor"] for r in self.refunds.get(order_id, []) if r["status"] in REFUND_COUNTED)

    def taken(self, order_id: str) -> int:
        payment = self.payments.get(order_id)
        return payment["amount_minor"] if payment is not None and payment["status"] == "succeeded" else 0

    def net(self, order_id: str) -> int:
        """Money kept from the order in minor units, by our ledger."""
        return self.taken(order_id) - self.refunded(order_id)

    def intents(self, order_id: str) -> list[Intent]:
        return (self.provider or {}).get(order_id, [])
