"""Reading one consistent snapshot of every database (and the payment provider), and running the rules over it."""

from collections import Counter, defaultdict
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from orchestrator import definition, saga_retention
from orchestrator.cancellation import CANCELLATION_WORKFLOW
from orchestrator.definition import FailState, ParallelState, SucceedState, TaskState, Workflow
from orchestrator.state import RUNNING
from orderctl.checker.model import (
    CANCELLATION_FAILED,
    CANCELLATION_STATUSES,
    REFUND_COUNTED,
    CheckError,
    Report,
    Saga,
    Snapshot,
    Violation,
)
from orderctl.checker.provider import LOCAL_API_KEY, ProviderConfig, read_provider
from orderctl.checker.rules import PROVIDER_RULES, RULES
from orderctl.config import CtlSettings
from plumbing.db import connect, database_name
from services.payment.money import to_minor


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


_SAGAS = """SELECT order_id, status, coalesce(workflow_name, 'order') AS workflow, subject_order_id,
    coalesce(jsonb_typeof(state #> '{main,data,notificationError}'), 'null') <> 'null' AS notification_error,
    state #>> '{main,data,inventory,amount}' AS amount, state #>> '{main,data,inventory,currency}' AS currency,
    state #>> '{main,data,refund,refundId}' AS refund_id,
    coalesce(state #>> '{error,Error}', state #>> '{main,error,Error}', state #>> '{main,data,error,Error}') AS error
    FROM saga"""
#: Whether an effect is younger than the orchestrator's saga retention ($1 days): an older one's saga may have been
#: purged (orchestrator/saga_retention.py), so its order having no saga is no violation.
_RECENT = "{} >= now() - $1::float8 * interval '1 day' AS recent"
#: The same product held twice for one order (two reservations holding it, whether the order's one
#: reservation or line holds of a definition that reserves line by line).
_DOUBLE_HOLDS = """SELECT r.order_id, l.product_id, count(*) AS holds FROM reservation r
    JOIN reservation_line l ON l.reservation_id = r.reservation_id
    WHERE r.status IN ('active', 'committed') GROUP BY r.order_id, l.product_id HAVING count(*) > 1"""
_MANUAL_REFUNDS = """SELECT order_id, request_key, command_id, request, amount, outcome, result FROM saga_manual_action
    WHERE action = 'refund' ORDER BY requested_at, command_id"""
_HISTORY = """SELECT order_id, event, lane, state, detail FROM saga_history
    WHERE event IN ('ExecutionSucceeded', 'ExecutionFailed', 'ExecutionRedriven', 'ManualRefundRequested')
       OR (event IN ('TaskScheduled', 'TaskSucceeded') AND state = ANY($1::text[]))
    ORDER BY id"""
_PRODUCTS = """SELECT p.product_id, p.stock, p.received,
    coalesce(sum(l.quantity) FILTER (WHERE r.status = 'active'), 0) AS active,
    coalesce(sum(l.quantity) FILTER (WHERE r.status = 'committed'), 0) AS committed
    FROM product p
    LEFT JOIN reservation_line l ON l.product_id = p.product_id
    LEFT JOIN reservation r ON r.reservation_id = l.reservation_id
    GROUP BY p.product_id"""


def priced(row: asyncpg.Record) -> tuple[int | None, str | None]:
    """The saga's priced amount ($.inventory.amount, major units) in the provider's minor units."""
    if row["amount"] is None or row["currency"] is None:
        return None, row["currency"]
    try:
        return to_minor(Decimal(row["amount"]), row["currency"]), row["currency"].lower()
    except InvalidOperation:
        return None, row["currency"]


def provider_config(
    settings: CtlSettings, *, provider: ProviderConfig | None = None, stripe_url: str | None = None
) -> ProviderConfig | None:
    """Which payment provider to read: the one given, else a Stripe-compatible server at ``stripe_url``,
    else STRIPE_API_KEY / STRIPE_API_BASE (the payment process's names); None when none is configured."""
    key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    if provider is not None:
        return provider
    if stripe_url:
        return ProviderConfig(api_key=key or LOCAL_API_KEY, api_base=stripe_url)
    if key or settings.stripe_api_base:
        return ProviderConfig(api_key=key or LOCAL_API_KEY, api_base=settings.stripe_api_base or None)
    return None


async def snapshot(
    settings: CtlSettings,
    *,
    allow_running: bool,
    workflow: Workflow,
    provider: ProviderConfig | None = None,
    saga_retention_days: float = saga_retention.DEFAULT_DAYS,
) -> Snapshot:
    """Read every database, and the provider's PaymentIntents of every ended order: the orchestrator's
    first and last, the others in between (see above)."""
    terminal = terminal_statuses(workflow)
    steps = sorted(compensation_steps(workflow.States))
    first = await _read(
        settings.database_url("orchestrator"),
        {"sagas": (_SAGAS,), "history": (_HISTORY, steps), "manual": (_MANUAL_REFUNDS,)},
    )
    days = saga_retention_days
    inventory = await _read(
        settings.database_url("inventory"),
        {
            "products": (_PRODUCTS,),
            "reservations": (f"SELECT order_id, status, {_RECENT.format('created_at')} FROM reservation", days),
            "double_holds": (_DOUBLE_HOLDS,),
        },
    )
    payment = await _read(
        settings.database_url("payment"),
        {
            "payments": (
                "SELECT order_id, payment_intent_id, amount_minor, status, "
                f"{_RECENT.format('created_at')} FROM payment",
                days,
            ),
            "refunds": (
                f"SELECT order_id, refund_id, amount_minor, status, {_RECENT.format('created_at')} FROM refund",
                days,
            ),
        },
    )
    orders = await _read(
        settings.database_url("orders"),
        {"records": (f"SELECT order_id, status, {_RECENT.format('created_at')} FROM order_record", days)},
    )
    notify = await _read(
        settings.database_url("notify"),
        # The confirmation is what the order workflow sends; a cancellation notice is the cancellation's own.
        {"rows": (f"SELECT order_id, kind, channel, status, {_RECENT.format('updated_at')} FROM notification", days)},
    )
    intents = None
    if provider is not None:  # only ended orders are judged: the others' intents may still change
        ended = (r["order_id"] for r in first["sagas"] if r["status"] in terminal and r["workflow"] == "order")
        intents = await read_provider(provider, ended)
    second = await _read(settings.database_url("orchestrator"), {"sagas": (_SAGAS,)})

    before = {r["order_id"]: r for r in first["sagas"]}
    sagas: dict[str, Saga] = {}
    # A cancellation saga is its order's: read as the order's cancellation status, judged with the order.
    cancellations: dict[str, asyncpg.Record | None] = {}
    for row in second["sagas"]:
        if row["workflow"] == CANCELLATION_WORKFLOW:
            earlier = before.get(row["order_id"])
            moved = earlier is None or earlier["status"] != row["status"]
            cancellations[row["subject_order_id"]] = None if moved else earlier
            continue
        earlier = before.get(row["order_id"])
        if earlier is None:
            sagas[row["order_id"]] = Saga(RUNNING, moved=" (started while being read)")
        elif earlier["status"] != row["status"]:
            moved = f" (moved from {earlier['status']} to {row['status']} while being read)"
            sagas[row["order_id"]] = Saga(RUNNING, moved=moved)
        else:
            amount_minor, currency = priced(row)
            sagas[row["order_id"]] = Saga(
                row["status"], earlier["notification_error"], amount_minor=amount_minor, currency=currency
            )
    for order_id, cancelling in cancellations.items():
        if (saga := sagas.get(order_id)) is None:
            continue
        if cancelling is None:  # started or moved while being read: running
            saga.cancellation = RUNNING
            continue
        saga.cancellation = cancelling["status"]
        saga.cancellation_notification_error = cancelling["notification_error"]
        saga.cancellation_refund_id = cancelling["refund_id"]
        saga.cancellation_error = cancelling["error"]
    manual: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for r in first["manual"]:
        manual[r["order_id"]].append(r)
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
    notices: dict[str, dict[str, str]] = defaultdict(dict)
    for r in notify["rows"]:
        (notices if r["kind"] == "cancellation" else notifications)[r["order_id"]][r["channel"]] = r["status"]
    recent = {
        r["order_id"]
        for rows in (inventory["reservations"], payment["payments"], payment["refunds"])
        + (orders["records"], notify["rows"])
        for r in rows
        if r["recent"]
    }
    double_holds: dict[str, dict[str, int]] = defaultdict(dict)
    for r in inventory["double_holds"]:
        double_holds[r["order_id"]][r["product_id"]] = r["holds"]
    return Snapshot(
        allow_running=allow_running,
        recent=recent,
        double_holds=dict(double_holds),
        terminal=terminal,
        sagas=sagas,
        products={p["product_id"]: p for p in inventory["products"]},
        reservations=dict(reservations),
        payments={p["order_id"]: p for p in payment["payments"]},
        refunds=dict(refunds),
        records={r["order_id"]: r["status"] for r in orders["records"]},
        notifications=dict(notifications),
        provider=intents,
        cancellation_notices=dict(notices),
        manual_refunds=dict(manual),
    )


def figures(snap: Snapshot) -> dict[str, int]:
    """What the run amounts to: orders by status, money, stock, records, notifications."""
    statuses = Counter(s.status for s in snap.sagas.values())
    reservations = Counter(status for statuses in snap.reservations.values() for status in statuses)
    emails = Counter(channels.get("email") for channels in snap.notifications.values())
    counted = [r for rows in snap.refunds.values() for r in rows if r["status"] in REFUND_COUNTED]
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
        **cancellation_figures(snap),
    }
    if snap.provider is not None:
        intents = [i for found in snap.provider.values() for i in found]
        out["provider_orders_read"] = len(snap.provider)
        out["provider_payment_intents"] = len(intents)
        out["provider_succeeded"] = sum(1 for i in intents if i.status == "succeeded")
        out["provider_received_minor"] = sum(i.amount_received for i in intents)
        out["provider_refunds"] = sum(len(i.refunds) for i in intents)
        out["provider_refunded_minor"] = sum(i.refunded for i in intents)
    return out


def cancellation_figures(snap: Snapshot) -> dict[str, int]:
    """The cancellations and manual refunds: sagas by status, stock restocked, notices, refunds by outcome."""
    cancellations = Counter(s.cancellation for s in snap.sagas.values() if s.cancellation is not None)
    manual = Counter(r["outcome"] for rows in snap.manual_refunds.values() for r in rows)
    notices = Counter(channels.get("email") for channels in snap.cancellation_notices.values())
    restocked = sum(statuses.count("restocked") for statuses in snap.reservations.values())
    return {
        "cancellations": sum(cancellations.values()),
        **{f"cancellations_{status.lower()}": cancellations[status] for status in CANCELLATION_STATUSES},
        "reservations_restocked": restocked,
        **{f"cancellation_emails_{status}": notices[status] for status in ("sent", "sending", "failed")},
        "manual_refunds": sum(manual.values()),
        **{f"manual_refunds_{outcome}": manual[outcome] for outcome in ("succeeded", "failed", "pending")},
        "orders_refunded_by_hand": sum(1 for rows in snap.manual_refunds.values() if rows),
    }


def critical_notes(snap: Snapshot) -> list[str]:
    """CANCELLATION_FAILED sagas, as the critical state they are: not a violation (an operator redrives it, as
    a FAILED_CRITICAL order), but named in the report with the error it ended with, never passed over."""
    failed = sorted((o, s.cancellation_error) for o, s in snap.sagas.items() if s.cancellation == CANCELLATION_FAILED)
    if not failed:
        return []
    named = ", ".join(f"{order_id} ({error or 'no error recorded'})" for order_id, error in failed[:20])
    more = f" and {len(failed) - 20} more" if len(failed) > 20 else ""
    return [f"critical: {len(failed)} cancellation(s) {CANCELLATION_FAILED}, to redrive: {named}{more}"]


async def check(
    settings: CtlSettings,
    allow_running: bool = False,
    *,
    provider: ProviderConfig | None = None,
    stripe_url: str | None = None,
    workflow: Workflow | None = None,
    saga_retention_days: float = saga_retention.DEFAULT_DAYS,
) -> Report:
    """Run every rule over a fresh snapshot.

    ``allow_running`` False means quiescence: a running saga is a violation. The payment provider is read
    through the Stripe SDK: ``provider`` if given, else a Stripe-compatible server at ``stripe_url`` (with
    STRIPE_API_KEY or the local test key), else STRIPE_API_KEY / STRIPE_API_BASE from the settings. With
    none, the provider rules are skipped and the report's notes say so. Effects older than
    ``saga_retention_days`` may have lost their saga to the orchestrator's retention: no violation.
    """
    config = provider_config(settings, provider=provider, stripe_url=stripe_url)
    snap = await snapshot(
        settings,
        allow_running=allow_running,
        workflow=workflow or definition.load(),
        provider=config,
        saga_retention_days=saga_retention_days,
    )
    violations = [Violation(name, order_id, detail) for name, fn in RULES for order_id, detail in fn(snap)]
    if config is None:
        note = "payment provider not read (set STRIPE_API_KEY, or STRIPE_API_BASE for a Stripe-compatible server)"
        notes = [f"{note}; skipped: {', '.join(PROVIDER_RULES)}"]
    else:
        notes = [f"payment provider read at {config.where}: the PaymentIntents and refunds of every ended order"]
    return Report(violations=violations, figures=figures(snap), notes=notes + critical_notes(snap))


def render(report: Report) -> str:
    """The report as ``orderctl check`` prints it."""
    width = max(map(len, report.figures), default=0)
    lines = [f"{name:<{width}}  {value:>10}" for name, value in report.figures.items()]
    lines += [f"\nnote: {note}" for note in report.notes]
    lines.append(f"\nviolations: {len(report.violations)}")
    lines += [f"  {v.rule:<22} {v.order_id or '-':<36} {v.detail}" for v in report.violations]
    return "\n".join(lines)
