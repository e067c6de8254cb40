"""The invariant checker: reads every service's database (and Stripe, if asked) and reports violations.

What the guide promises, as rules over one snapshot: every order ends in exactly
one terminal status, no order is charged twice, money is kept exactly for
CONFIRMED orders, stock is never lost nor doubled, compensations finish, and a
CONFIRMED order has its record and its notification. Each rule is a small
function in ``RULES`` with a name and a docstring; ``orderctl check`` runs them.

The databases cannot be read in one snapshot, so the orchestrator's is read
twice, before and after the others. An order is judged by the status it had
in both reads; one that moved in between, or appeared, counts as running. A
saga ends only after its effects are done, so a saga read as ended has every
effect in the later reads; every order with an effect has a saga by the
second read. While orders run (``allow_running``) the rules judge only the
ended ones; at quiescence a running order is itself a violation.
"""

import asyncio
import json
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import asyncpg

from orchestrator import definition
from orchestrator.definition import FailState, ParallelState, SucceedState, TaskState, Workflow
from orchestrator.state import RUNNING
from orderctl.config import CtlSettings
from plumbing.db import connect, database_name

CONFIRMED = "CONFIRMED"
#: A compensation failed after its retries: money or stock may still be held, for an operator to redrive.
FAILED_CRITICAL = "FAILED_CRITICAL"
#: Stripe refunds that moved money or will.
_REFUND_COUNTED = ("succeeded", "pending", "requires_action")


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
        return sum(r["amount_minor"] for r in self.refunds.get(order_id, []) if r["status"] in _REFUND_COUNTED)

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


#: A rule yields (order id or None, what is wrong) for each violation it finds.
Rule = Callable[[Snapshot], Iterator[tuple[str | None, str]]]
#: Every rule, in the order they run: (name, function); the function's docstring says what it checks.
RULES: list[tuple[str, Rule]] = []


def rule(name: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES.append((name, fn))
        return fn

    return register


@rule("terminal-status")
def terminal_status(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every saga ends in exactly one terminal status of the workflow, and its history agrees.

    RUNNING is allowed only with ``allow_running``. An ended saga's last ExecutionSucceeded or
    ExecutionFailed names its status, with no ExecutionRedriven after it."""
    for order_id, saga in snap.sagas.items():
        if saga.status == RUNNING:
            if not snap.allow_running:
                yield order_id, f"still RUNNING{saga.moved}"
            continue
        if saga.status not in snap.terminal:
            yield order_id, f"status {saga.status!r} is not a terminal status"
            continue
        ends = [(event, detail) for event, _, _, detail in saga.history if event.startswith("Execution")]
        last = ends[-1] if ends else None
        if last is None or last[0] == "ExecutionRedriven":
            yield order_id, f"status {saga.status} but its history has not ended"
        elif (last[1] or {}).get("status") != saga.status:
            yield order_id, f"status {saga.status} but history ended {(last[1] or {}).get('status')}"


@rule("single-charge")
def single_charge(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """No order charged more than once, at Stripe: one PaymentIntent per order (metadata orderId),
    at most one succeeded charge per PaymentIntent. Our ledger holds one payment per order by its key."""
    charges = snap.charges_by_intent
    for order_id, intents in snap.intents_by_order.items():
        if len(intents) > 1:
            ids = ", ".join(sorted(i["id"] for i in intents))
            yield order_id, f"{len(intents)} PaymentIntents: {ids}"
        for intent in intents:
            succeeded = [c for c in charges.get(intent["id"], []) if c["status"] == "succeeded"]
            if len(succeeded) > 1:
                yield order_id, f"{intent['id']} has {len(succeeded)} succeeded charges"


@rule("refunds-within-charge")
def refunds_within_charge(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Refunds never exceed what was charged: in our ledger (refund rows against the payment row)
    and at Stripe (each charge's amount_refunded against its amount)."""
    for order_id in sorted(set(snap.payments) | set(snap.refunds)):
        taken, refunded = snap.taken(order_id), snap.refunded(order_id)
        if refunded > taken:
            yield order_id, f"refunded {refunded} of {taken} charged (minor units)"
    for charge in (snap.stripe or {}).get("charges", []):
        if charge["amount_refunded"] > charge["amount"]:
            order_id = (charge.get("metadata") or {}).get("orderId")
            detail = f"charge {charge['id']} refunded {charge['amount_refunded']} of {charge['amount']}"
            yield order_id, detail


@rule("money-iff-confirmed")
def money_iff_confirmed(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Money taken minus refunded is positive exactly for CONFIRMED orders (Stripe's charges when
    given, else payment status 'succeeded' less refunds). FAILED_CRITICAL orders are exempt: their
    refund is the compensation that did not finish, waiting for a redrive."""
    for order_id, saga in snap.settled():
        if saga.status == FAILED_CRITICAL:
            continue
        net = snap.net(order_id)
        if saga.status == CONFIRMED and net <= 0:
            yield order_id, f"CONFIRMED but {net} kept (minor units)"
        elif saga.status != CONFIRMED and net > 0:
            yield order_id, f"{saga.status} but {net} kept (minor units)"


@rule("stock-never-negative")
def stock_never_negative(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """No product's stock is below zero."""
    for product_id, p in snap.products.items():
        if p["stock"] < 0:
            yield None, f"{product_id}: stock {p['stock']}"


@rule("stock-balance")
def stock_balance(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Stock plus active and committed reservations equals the stock put in (product.received,
    kept by the trigger of services/inventory/migrations/0002_stock_ledger.sql)."""
    for product_id, p in snap.products.items():
        held = p["active"] + p["committed"]
        if p["stock"] + held != p["received"]:
            detail = f"{product_id}: stock {p['stock']} + reserved {held} != received {p['received']}"
            yield None, detail


@rule("reservation-settled")
def reservation_settled(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """An ended order holds no active reservation: a CONFIRMED one has its reservation committed
    (active is allowed while running: the commit follows order.confirmed), any other has none active
    or committed (FAILED_CRITICAL may keep an active one: its release did not finish). At most one
    reservation per order is not released."""
    for order_id, saga in snap.settled():
        statuses = Counter(snap.reservations.get(order_id, []))
        held = statuses["active"] + statuses["committed"]
        if held > 1:
            yield order_id, f"{held} reservations hold stock"
        if saga.status == CONFIRMED:
            if statuses["committed"] or (statuses["active"] and snap.allow_running):
                continue
            found = ", ".join(sorted(statuses.elements())) or "none"
            yield order_id, f"CONFIRMED without a committed reservation ({found})"
        elif statuses["committed"] or (statuses["active"] and saga.status != FAILED_CRITICAL):
            found = ", ".join(s for s in ("active", "committed") if statuses[s])
            yield order_id, f"{saga.status} with a reservation {found}"


@rule("compensations-finished")
def compensations_finished(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every compensation that started (a Task marked Compensation was scheduled) succeeded in the
    end, or its order is FAILED_CRITICAL. Read from saga_history, per lane and state."""
    for order_id, saga in snap.settled():
        if saga.status == FAILED_CRITICAL:
            continue
        last: dict[tuple[str, str | None], str] = {}
        for event, lane, state, _ in saga.history:
            if event in ("TaskScheduled", "TaskSucceeded"):
                last[(lane, state)] = event
        for (lane, state), event in sorted(last.items(), key=str):
            if event == "TaskScheduled":
                yield order_id, f"{state} ({lane}) started, never succeeded"


@rule("order-record")
def order_record(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every CONFIRMED order has one order record (its key makes it at most one), CONFIRMED too;
    every order record belongs to a CONFIRMED saga."""
    for order_id, saga in snap.settled():
        record = snap.records.get(order_id)
        if saga.status == CONFIRMED and record != CONFIRMED:
            yield order_id, f"CONFIRMED but order record is {record or 'missing'}"
        elif saga.status != CONFIRMED and record is not None:
            yield order_id, f"{saga.status} but an order record exists ({record})"


@rule("notification")
def notification(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every CONFIRMED order had one notification attempt: an email row, sent (or 'sending': an
    unknown outcome is never sent twice) unless the saga caught a notificationError, when the row
    may be failed or missing (the failure came before the notify service). Nothing is sent for an
    order that did not confirm."""
    for order_id, saga in snap.settled():
        channels = snap.notifications.get(order_id, {})
        email = channels.get("email")
        if saga.status == CONFIRMED:
            if not saga.notification_error and email not in ("sent", "sending"):
                yield order_id, f"CONFIRMED, no notificationError, email {email or 'missing'}"
        elif channels:
            yield order_id, f"{saga.status} but notified: {sorted(channels)}"


@rule("effects-without-saga")
def effects_without_saga(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every effect (reservation, payment, refund, order record, notification, Stripe PaymentIntent)
    belongs to a submitted order: one with a saga."""
    sources = {
        "reservation": snap.reservations,
        "payment": snap.payments,
        "refund": snap.refunds,
        "order record": snap.records,
        "notification": snap.notifications,
        "stripe": snap.intents_by_order,
    }
    orphans: dict[str, list[str]] = defaultdict(list)
    for where, orders in sources.items():
        for order_id in orders:
            if order_id not in snap.sagas:
                orphans[order_id].append(where)
    for order_id, where in sorted(orphans.items()):
        yield order_id, "no saga, yet " + ", ".join(where)


# -- reading -------------------------------------------------------------------------------------
def terminal_statuses(workflow: Workflow) -> frozenset[str]:
    """Statuses of the workflow's Succeed and Fail states; FAILED also ends a saga no catcher saved."""
    statuses = {"FAILED"}
    for state in workflow.States.values():
        if isinstance(state, SucceedState | FailState):
            statuses.add(state.Status or ("SUCCEEDED" if isinstance(state, SucceedState) else "FAILED"))
    return frozenset(statuses)


def compensation_steps(states: dict[str, Any]) -> set[str]:
    """Names of the Task states marked Compensation, branches included (history names a branch's
    state without its Parallel's prefix)."""
    names: set[str] = set()
    for name, state in states.items():
        if isinstance(state, TaskState) and state.Compensation:
            names.add(name)
        elif isinstance(state, ParallelState):
            for branch in state.Branches:
                names |= compensation_steps(branch.States)
    return names


async def _read(url: str, queries: dict[str, tuple[Any, ...]]) -> dict[str, list[asyncpg.Record]]:
    """Run ``queries`` (name: (sql, *args)) in one read-only repeatable-read transaction."""
    try:
        conn = await connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise CheckError(f"{database_name(url)}: {exc}") from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return {name: await conn.fetch(sql, *args) for name, (sql, *args) in queries.items()}
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise CheckError(f"{database_name(url)}: {exc}; run `orderctl migrate`") from exc
    finally:
        await conn.close()


_SAGAS = """SELECT order_id, status,
    coalesce(jsonb_typeof(state #> '{main,data,notificationError}'), 'null') <> 'null' AS notification_error
    FROM saga"""
_HISTORY = """SELECT order_id, event, lane, state, detail FROM saga_history
    WHERE event IN ('ExecutionSucceeded', 'ExecutionFailed', 'ExecutionRedriven')
       OR (event IN ('TaskScheduled', 'TaskSucceeded') AND state = ANY($1::text[]))
    ORDER BY id"""
_PRODUCTS = """SELECT p.product_id, p.stock, p.received,
    coalesce(sum(l.quantity) FILTER (WHERE r.status = 'active'), 0) AS active,
    coalesce(sum(l.quantity) FILTER (WHERE r.status = 'committed'), 0) AS committed
    FROM product p
    LEFT JOIN reservation_line l ON l.product_id = p.product_id
    LEFT JOIN reservation r ON r.reservation_id = l.reservation_id
    GROUP BY p.product_id"""


def _fetch_stripe_state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url.rstrip('/')}/_test/state", timeout=30) as response:
        return json.loads(response.read())


async def snapshot(
    settings: CtlSettings,
    *,
    allow_running: bool,
    workflow: Workflow,
    stripe_state: dict[str, Any] | None = None,
    stripe_url: str | None = None,
) -> Snapshot:
    """Read every database: the orchestrator's first and last, the services' in between (see above)."""
    steps = sorted(compensation_steps(workflow.States))
    first = await _read(settings.database_url("orchestrator"), {"sagas": (_SAGAS,), "history": (_HISTORY, steps)})
    inventory = await _read(
        settings.database_url("inventory"),
        {"products": (_PRODUCTS,), "reservations": ("SELECT order_id, status FROM reservation",)},
    )
    payment = await _read(
        settings.database_url("payment"),
        {
            "payments": ("SELECT order_id, payment_intent_id, amount_minor, status FROM payment",),
            "refunds": ("SELECT order_id, refund_id, amount_minor, status FROM refund",),
        },
    )
    orders = await _read(settings.database_url("orders"), {"records": ("SELECT order_id, status FROM order_record",)})
    notify = await _read(
        settings.database_url("notify"), {"rows": ("SELECT order_id, channel, status FROM notification",)}
    )
    if stripe_url is not None:
        stripe_state = await asyncio.to_thread(_fetch_stripe_state, stripe_url)
    second = await _read(settings.database_url("orchestrator"), {"sagas": (_SAGAS,)})

    before = {r["order_id"]: r for r in first["sagas"]}
    sagas: dict[str, Saga] = {}
    for row in second["sagas"]:
        earlier = before.get(row["order_id"])
        if earlier is None:
            sagas[row["order_id"]] = Saga(RUNNING, moved=" (started while being read)")
        elif earlier["status"] != row["status"]:
            moved = f" (moved from {earlier['status']} to {row['status']} while being read)"
            sagas[row["order_id"]] = Saga(RUNNING, moved=moved)
        else:
            sagas[row["order_id"]] = Saga(row["status"], earlier["notification_error"])
    for h in first["history"]:
        if (saga := sagas.get(h["order_id"])) is not None:
            saga.history.append((h["event"], h["lane"], h["state"], h["detail"]))

    reservations: dict[str, list[str]] = defaultdict(list)
    for r in inventory["reservations"]:
        reservations[r["order_id"]].append(r["status"])
    refunds: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for r in payment["refunds"]:
        refunds[r["order_id"]].append(r)
    notifications: dict[str, dict[str, str]] = defaultdict(dict)
    for r in notify["rows"]:
        notifications[r["order_id"]][r["channel"]] = r["status"]
    return Snapshot(
        allow_running=allow_running,
        terminal=terminal_statuses(workflow),
        sagas=sagas,
        products={p["product_id"]: p for p in inventory["products"]},
        reservations=dict(reservations),
        payments={p["order_id"]: p for p in payment["payments"]},
        refunds=dict(refunds),
        records={r["order_id"]: r["status"] for r in orders["records"]},
        notifications=dict(notifications),
        stripe=stripe_state,
    )


def figures(snap: Snapshot) -> dict[str, int]:
    """What the run amounts to: orders by status, money, stock, records, notifications."""
    statuses = Counter(s.status for s in snap.sagas.values())
    reservations = Counter(status for statuses in snap.reservations.values() for status in statuses)
    emails = Counter(channels.get("email") for channels in snap.notifications.values())
    counted = [r for rows in snap.refunds.values() for r in rows if r["status"] in _REFUND_COUNTED]
    out = {
        "orders": len(snap.sagas),
        **{f"orders_{status.lower()}": n for status, n in sorted(statuses.items())},
        "charges": sum(1 for o in snap.payments if snap.taken(o) > 0),
        "charged_minor": sum(snap.taken(o) for o in snap.payments),
        "refunds": len(counted),
        "refunded_minor": sum(r["amount_minor"] for r in counted),
        "compensations_started": sum(
            len({(lane, state) for event, lane, state, _ in s.history if event == "TaskScheduled"})
            for s in snap.sagas.values()
        ),
        "products": len(snap.products),
        "stock": sum(p["stock"] for p in snap.products.values()),
        "stock_received": sum(p["received"] for p in snap.products.values()),
        **{f"reservations_{status}": reservations[status] for status in ("active", "committed", "released")},
        "order_records": len(snap.records),
        **{f"emails_{status}": emails[status] for status in ("sent", "sending", "failed")},
    }
    if snap.stripe is not None:
        charges = snap.stripe.get("charges", [])
        out["stripe_payment_intents"] = len(snap.stripe.get("payment_intents", []))
        out["stripe_succeeded_charges"] = sum(1 for c in charges if c["status"] == "succeeded")
        out["stripe_refunds"] = len(snap.stripe.get("refunds", []))
    return out


async def check(
    settings: CtlSettings,
    allow_running: bool = False,
    stripe_state: dict[str, Any] | None = None,
    *,
    stripe_url: str | None = None,
    workflow: Workflow | None = None,
) -> Report:
    """Run every rule over a fresh snapshot.

    ``allow_running`` False means quiescence: a running saga is a violation. ``stripe_state`` is the
    local Stripe server's ``GET /_test/state``; with ``stripe_url`` it is fetched between the two
    reads of the orchestrator, which keeps it consistent with running orders too.
    """
    snap = await snapshot(
        settings,
        allow_running=allow_running,
        workflow=workflow or definition.load(),
        stripe_state=stripe_state,
        stripe_url=stripe_url,
    )
    violations = [Violation(name, order_id, detail) for name, fn in RULES for order_id, detail in fn(snap)]
    return Report(violations=violations, figures=figures(snap))


def render(report: Report) -> str:
    """The report as ``orderctl check`` prints it."""
    width = max(map(len, report.figures), default=0)
    lines = [f"{name:<{width}}  {value:>10}" for name, value in report.figures.items()]
    lines.append(f"\nviolations: {len(report.violations)}")
    lines += [f"  {v.rule:<22} {v.order_id or '-':<36} {v.detail}" for v in report.violations]
    return "\n".join(lines)
