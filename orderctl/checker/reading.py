"""Reading one consistent snapshot of every database (and Stripe), and running the rules over it."""

import asyncio
import json
import urllib.request
from collections import Counter, defaultdict
from typing import Any

import asyncpg

from orchestrator import definition
from orchestrator.definition import FailState, ParallelState, SucceedState, TaskState, Workflow
from orchestrator.state import RUNNING
from orderctl.checker.model import REFUND_COUNTED, CheckError, Report, Saga, Snapshot, Violation
from orderctl.checker.rules import RULES
from orderctl.config import CtlSettings
from plumbing.db import connect, database_name


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
