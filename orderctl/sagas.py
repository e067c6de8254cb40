"""``orderctl list`` (sagas by filter), the API mode of ``status``, ``history`` and ``redrive``, and
``redrive`` by filter.

With ``--api-url`` or ORDERFLOW_API_URL these go through the orchestrator's API (docs/api.md) with
ORDERFLOW_API_TOKEN: no database URL or password is needed, and a redrive runs in the orchestrator. Without,
they read the orchestrator's database as before (local use); ``list`` then runs the API's own query
(orchestrator/saga_queries.py), so both modes print the same. ``redrive`` with the list's filters instead of an
order id is the API's bulk redrive (POST /api/v1/sagas/redrive), so only through the API: ``--dry-run`` lists
what it would restart, without it each matching redrivable saga is redriven and audited.
"""

import argparse
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator import saga_queries
from orchestrator.api_models import DEFAULT_BULK, MAX_BULK, MAX_PAGE, REDRIVABLE, SAGA_STATUSES, ListQuery, SagaFilter
from orderctl import api_client, output, reach
from orderctl.config import CtlSettings
from orderctl.errors import CtlError, UsageError
from orderctl.output import Col

Command = Callable[[CtlSettings, argparse.Namespace], Awaitable[int]]
#: The filter options, as argparse stores them: ``list`` and ``redrive`` by filter take the same.
FILTER_DESTS = (
    "status",
    "step",
    "error",
    "product",
    "search",
    "created_from",
    "created_to",
    "updated_from",
    "updated_to",
)

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def when(value: str) -> datetime:
    """A time with its zone (2026-12-06T10:00:00Z), or an age (30s, 10m, 2h, 7d) meaning that long ago."""
    age = _AGE.match(value)
    if age:
        return datetime.now(UTC) - timedelta(**{_UNITS[age[2]]: int(age[1])})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"invalid time {value!r}: e.g. 2026-12-06T10:00:00Z, or an age: 30s, 10m, 2h, 7d"
        )
    return moment


def add_api_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--api-url",
        help="go through the orchestrator's API at this URL, e.g. http://127.0.0.1:8080 (default: ORDERFLOW_API_URL; "
        "neither: read the database); the token comes from ORDERFLOW_API_TOKEN",
    )


def register(sub: argparse._SubParsersAction, command: Any, json_flag: Any) -> None:
    """``orderctl list``; orderctl/main.py calls this, and add_api_flag for status, history and redrive."""
    ls = command(sub, "list", "list sagas by status, step, error, product, time or order id (newest first)")
    add_filters(ls)
    ls.add_argument("--limit", type=int, default=50, help=f"sagas per page, 1 to {MAX_PAGE} (default: 50)")
    ls.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    add_api_flag(ls)
    json_flag(ls)
    ls.set_defaults(run=cmd_list)


def add_filters(cmd: argparse.ArgumentParser) -> None:
    """The listing's filters (GET /api/v1/sagas): every one given holds; a repeated one matches any value."""
    cmd.add_argument("--status", action="append", choices=SAGA_STATUSES, help="this status (repeatable: any of them)")
    cmd.add_argument("--step", action="append", help="in (or ended in) this state, e.g. ProcessPayment (repeatable)")
    cmd.add_argument(
        "--error", action="append", help="recorded this error anywhere in its history, e.g. RefundFailed (repeatable)"
    )
    cmd.add_argument("--product", help="a line of the order holds this product id")
    cmd.add_argument("--search", metavar="TEXT", help="the order id contains this text")
    for name, what in [("created", "started"), ("updated", "last changed")]:
        cmd.add_argument(f"--{name}-from", type=when, metavar="TIME", help=f"{what} at or after TIME (or an age: 2h)")
        cmd.add_argument(f"--{name}-to", type=when, metavar="TIME", help=f"{what} before TIME (or an age: 10m)")


def filter_of(args: argparse.Namespace) -> dict[str, Any]:
    """The filter options as SagaFilter's fields."""
    return {
        "status": args.status or [],
        "step": args.step or [],
        "error": args.error or [],
        "product": args.product,
        "q": args.search,
        "createdFrom": args.created_from,
        "createdTo": args.created_to,
        "updatedFrom": args.updated_from,
        "updatedTo": args.updated_to,
    }


def query_of(args: argparse.Namespace) -> ListQuery:
    return ListQuery(**filter_of(args), limit=args.limit, cursor=args.cursor)


def add_bulk_redrive(cmd: argparse.ArgumentParser, single: Command) -> None:
    """``orderctl redrive`` by filter: the list's filters, --dry-run and --limit beside the one order id; ``single``
    is the command for one order id (orderctl/commands.py's), run when one is given."""
    add_filters(cmd)
    cmd.add_argument(
        "--dry-run", action="store_true", help="with filters: only list the sagas it would redrive; nothing changes"
    )
    cmd.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_BULK,
        help=f"with filters: redrive at most this many, newest first, 1 to {MAX_BULK} (default: {DEFAULT_BULK})",
    )
    cmd.add_argument("--json", action="store_true", help="with filters: print the API's answer as JSON")

    async def run(settings: CtlSettings, args: argparse.Namespace) -> int:
        filtered = any(getattr(args, dest) for dest in FILTER_DESTS)
        if args.order_id is not None:
            if filtered or args.dry_run:
                raise UsageError("redrive takes an order id, or filters (--status, --error, ...), not both")
            return await single(settings, args)
        if not filtered:
            raise UsageError("redrive needs an order id, or filters (--status, --error, ...) for the sagas they match")
        return await cmd_bulk_redrive(settings, args)

    cmd.set_defaults(run=run)


async def cmd_bulk_redrive(settings: CtlSettings, args: argparse.Namespace) -> int:
    """POST /api/v1/sagas/redrive with the filter: print what was (or with --dry-run would be) redriven."""
    url = api_client.required_api_url(settings, args.api_url, "redrive with filters")
    if not 1 <= args.limit <= MAX_BULK:
        raise UsageError(f"--limit: 1 to {MAX_BULK}")
    body = {
        "filter": SagaFilter(**filter_of(args)).model_dump(mode="json", exclude_defaults=True),
        "dryRun": args.dry_run,
        "limit": args.limit,
        "reason": args.reason,
    }
    async with api_client.connect(settings, url) as api:
        result = await api.post("/api/v1/sagas/redrive", body)
    if args.json:
        output.as_json(result)
    else:
        ids = result["orderIds"]
        for order_id in ids:
            print(order_id)
        what = "would redrive" if result["dryRun"] else "redriven"
        kinds = ", ".join(sorted(REDRIVABLE))
        print(f"{what}: {len(ids)} of {result['matched']} redrivable ({kinds}) the filter matches", flush=True)
        if result["truncated"]:
            print(f"more: {result['matched'] - len(ids)} left over --limit {args.limit}; run it again")
        if result["dryRun"] and ids:
            print("to redrive them, run the same command without --dry-run")
        for failure in result["failed"]:
            print(f"not redriven: {failure['orderId']}: {failure['reason']}")
    if result["failed"]:
        raise CtlError(f"{len(result['failed'])} of the matching sagas could not be redriven (changed meanwhile)")
    return 0


def query_params(query: ListQuery) -> list[tuple[str, str]]:
    """The query string of GET /api/v1/sagas for ``query``: list filters repeated, times in ISO 8601."""
    params: list[tuple[str, str]] = []
    for name, value in query.model_dump(exclude_none=True).items():
        for one in value if isinstance(value, list) else [value]:
            params.append((name, one.isoformat() if isinstance(one, datetime) else str(one)))
    return params


async def cmd_list(settings: CtlSettings, args: argparse.Namespace) -> int:
    query = query_of(args)
    url = api_client.api_url(settings, args.api_url)
    if url is not None:
        async with api_client.connect(settings, url) as api:
            page = await api.get("/api/v1/sagas", query_params(query))
    else:
        conn = await reach.database(settings, "orchestrator")
        try:
            page = (await saga_queries.listing(conn, query)).model_dump(mode="json")
        except saga_queries.BadCursor as exc:
            raise UsageError(f"--cursor: {exc}") from None
        finally:
            await conn.close()
    if args.json:
        output.as_json(page)
        return 0
    columns = [Col("ORDER", key=True), Col("STATUS"), Col("STEP"), Col("ERROR"), Col("CREATED"), Col("UPDATED")]
    columns.append(Col("REDRIVES", right=True))
    rows = [
        [
            s["orderId"],
            s["status"],
            s["currentStep"],
            (s["error"] or {}).get("Error"),
            s["createdAt"][:19].replace("T", " "),
            s["updatedAt"][:19].replace("T", " "),
            s["redriveCount"] or "",
        ]
        for s in page["items"]
    ]
    output.table(columns, rows)
    counts = ", ".join(f"{status} {n}" for status, n in page["counts"].items() if n)
    print(f"{len(rows)} of {page['total']} shown; by status (other filters): {counts or 'none'}", flush=True)
    if page["nextCursor"]:
        print(f"more: add --cursor {page['nextCursor']}")
    return 0


def as_view(saga: dict[str, Any]) -> dict[str, Any]:
    """The API's saga (SagaDetail) in the shape of the direct mode's view (orchestrator/status.py): the same
    text and the same --json in both modes."""
    attempts = [
        {
            "step": step["step"],
            "lane": step["lane"],
            "attempt": a["attempt"],
            "startedAt": a["startedAt"],
            "endedAt": a["endedAt"],
            "outcome": a["outcome"],
            "error": a["error"],
            "cause": a["cause"],
            **({"reconcile": True} if a["reconcile"] else {}),
        }
        for step in saga["steps"]
        for a in step["attempts"]
    ]
    attempts.sort(key=lambda a: a["startedAt"])
    history = [{k: v for k, v in h.items() if k != "id"} for h in saga["history"]]
    keys = ("orderId", "status", "currentStep", "version", "workflow", "createdAt", "updatedAt", "amount", "currency")
    view = {k: saga[k] for k in keys}
    view.update(
        error=saga["error"],
        notificationError=saga["notificationError"],
        compensation=saga["compensation"],
        steps=attempts,
        history=history,
    )
    return view


async def api_view(settings: CtlSettings, url: str, order_id: str) -> dict[str, Any]:
    async with api_client.connect(settings, url) as api:
        return as_view(await api.get(api_client.saga_path(order_id)))


async def api_redrive(settings: CtlSettings, url: str, order_id: str, reason: str | None) -> dict[str, Any]:
    async with api_client.connect(settings, url) as api:
        return await api.post(api_client.saga_path(order_id, "/redrive"), {"reason": reason})
