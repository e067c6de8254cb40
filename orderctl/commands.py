"""What each orderctl command does; orderctl/main.py parses the arguments and handles the errors.

A command returns its exit code, or raises an orderctl.errors error for the one line the operator reads.
"""

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.orders import OrderRequested
from orchestrator import cancellation, definition
from orchestrator.api_models import REDRIVABLE
from orchestrator.definition import Workflow
from orchestrator.runner import Runner
from orchestrator.state import Redriven
from orchestrator.status import saga_view
from orderctl import api_client, client, output, reach, sagas
from orderctl.config import SERVICES, CtlSettings
from orderctl.demo import run_demo, steps_taken
from orderctl.errors import (
    NotFound,
    Unreachable,
    UsageError,
    fields,
    is_connect_error,
    unreachable,
    why_unreachable,
)
from orderctl.output import Col
from orderctl.provision import migrate_all
from orderctl.supervisor import Supervisor, children
from plumbing import outbox
from plumbing.db import database_name
from services.inventory import repository as inventory_repo


async def cmd_migrate(settings: CtlSettings, args: argparse.Namespace) -> int:
    applied = await migrate_all(settings, only=args.service)
    for service, names in applied.items():
        print(f"{service}: {', '.join(names) if names else 'up to date'}")
    return 0


async def cmd_up(settings: CtlSettings, args: argparse.Namespace) -> int:
    supervisor = Supervisor(children(settings, dev_servers=not args.no_dev_servers), log_dir=args.log_dir)
    await supervisor.start()
    names = ", ".join(c.name for c in supervisor.children)
    print(f"running: {names}. Ctrl-C stops them.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("stopping ...")
    await supervisor.stop()
    return 0


async def cmd_stock(settings: CtlSettings, args: argparse.Namespace) -> int:
    conn = await reach.database(settings, "inventory")
    try:
        if args.action == "set":
            existing = await inventory_repo.products(conn, [args.product_id])
            name = args.name or (existing[args.product_id]["name"] if existing else args.product_id)
            if not existing and args.price is None:
                raise UsageError(f"{args.product_id} is a new product: it needs --price")
            await inventory_repo.upsert_product(
                conn, args.product_id, name=name, stock=args.quantity, price=args.price, currency=args.currency
            )
        rows = await inventory_repo.list_products(conn)
    finally:
        await conn.close()
    if args.json:
        output.as_json([dict(r) for r in rows])
        return 0
    columns = [Col("PRODUCT", key=True), Col("NAME"), Col("PRICE", right=True), Col("CUR"), Col("STOCK", right=True)]
    columns.append(Col("RESERVED", right=True))
    keys = ("product_id", "name", "price", "currency", "stock", "reserved")
    output.table(columns, [[r[k] for k in keys] for r in rows])
    return 0


def read_orders(file: str) -> list[OrderRequested]:
    """The orders of a JSON file (``-``: standard input), one order or a list; errors name the file and field."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except FileNotFoundError:
        raise UsageError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    documents = document if isinstance(document, list) else [document]
    if not documents:
        raise UsageError(f"{file}: an empty list: no order to submit")
    orders = []
    for i, item in enumerate(documents, 1):
        try:
            orders.append(OrderRequested.model_validate(item))
        except ValidationError as exc:
            which = f"order {i}: " if isinstance(document, list) else ""
            raise UsageError(f"{file}: {which}{fields(exc)}") from None
    return orders


async def cmd_submit(settings: CtlSettings, args: argparse.Namespace) -> int:
    orders = read_orders(args.file)
    say = sys.stderr if args.json else sys.stdout
    async with client.connect(settings.amqp_url) as channel:
        listener = client.OutcomeListener()
        if args.wait:
            await listener.start(channel)
        for order in orders:
            await client.publish_order(channel, order)
            print(f"published {order.orderId}", file=say, flush=True)
        if not args.wait:
            return 0
        with output.OrderProgress(len(orders)) as progress:
            outcomes = await listener.wait_for(
                [o.orderId for o in orders], args.wait, lambda order_id, o: progress.done(order_id, o["status"])
            )
    if args.json:
        output.as_json([{"orderId": o.orderId, "outcome": outcomes.get(o.orderId)} for o in orders])
    else:
        for order in orders:
            outcome = outcomes.get(order.orderId)
            print(f"{order.orderId}: {outcome['status'] if outcome else 'no outcome yet'}")
    return 0 if len(outcomes) == len(orders) else 1


async def _view(settings: CtlSettings, order_id: str, api_url: str | None = None) -> dict[str, Any]:
    url = api_client.api_url(settings, api_url)
    if url is not None:  # through the orchestrator's API (--api-url, ORDERFLOW_API_URL): the same view
        return await sagas.api_view(settings, url, order_id)
    conn = await reach.database(settings, "orchestrator")
    try:
        view = await saga_view(conn, order_id)
    finally:
        await conn.close()
    if view is None:
        raise NotFound(f"no saga for {order_id}")
    return view


async def cmd_status(settings: CtlSettings, args: argparse.Namespace) -> int:
    view = await _view(settings, args.order_id, args.api_url)
    if args.json:
        output.as_json(view)
        return 0
    print(f"order    {view['orderId']}\nstatus   {view['status']}\nstep     {view['currentStep']}")
    print(f"amount   {view['amount']} {view['currency'] or ''}")
    if view["error"]:
        print(f"error    {view['error']['Error']}: {view['error']['Cause']}")
    if view["notificationError"]:
        print(f"notify   {view['notificationError']['Error']}: {view['notificationError']['Cause']}")
    print(f"path     {steps_taken(view)}\n")
    columns = [Col("STEP", key=True), Col("LANE"), Col("TRY", right=True), Col("OUTCOME"), Col("STARTED"), Col("ERROR")]
    keys = ("step", "lane", "attempt", "outcome", "startedAt", "error")
    output.table(columns, [[step[k] for k in keys] for step in view["steps"]])
    return 0


async def cmd_history(settings: CtlSettings, args: argparse.Namespace) -> int:
    view = await _view(settings, args.order_id, args.api_url)
    if args.json:
        output.as_json({"orderId": view["orderId"], "status": view["status"], "history": view["history"]})
        return 0
    print(f"{view['orderId']}  {view['status']}  ({len(view['history'])} events)\n")
    columns = [Col("AT"), Col("EVENT"), Col("STATE"), Col("LANE"), Col("TRY", right=True), Col("ERROR / DETAIL")]
    rows = []
    for h in view["history"]:
        note = ": ".join(x for x in (h["error"], h["cause"]) if x) or (json.dumps(h["detail"]) if h["detail"] else "")
        rows.append([h["at"][:26], h["event"], h["state"], h["lane"], h["attempt"], note])
    output.table(columns, rows)
    return 0


async def cmd_orders(settings: CtlSettings, args: argparse.Namespace) -> int:
    conn = await reach.database(settings, "orders")
    try:
        rows = await conn.fetch(
            """SELECT order_id, status, amount, currency, payment_intent_id, created_at
               FROM order_record ORDER BY created_at DESC LIMIT $1""",
            args.limit,
        )
    finally:
        await conn.close()
    if args.json:
        output.as_json([dict(r) for r in rows])
        return 0
    columns = [Col("ORDER", key=True), Col("STATUS"), Col("AMOUNT", right=True), Col("CUR"), Col("PAYMENT", key=True)]
    columns.append(Col("CREATED"))
    output.table(
        columns,
        [
            [r["order_id"], r["status"], r["amount"], r["currency"], r["payment_intent_id"], f"{r['created_at']:%F %T}"]
            for r in rows
        ],
    )
    return 0


def read_workflow(file: str) -> Workflow:
    """The workflow definition at ``file``; errors name the file."""
    try:
        return definition.load(Path(file))
    except FileNotFoundError:
        raise UsageError(f"{file}: no such file (--workflow-file)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValidationError as exc:
        raise UsageError(f"{file}: not a workflow definition: {fields(exc)}") from None


async def cmd_redrive(settings: CtlSettings, args: argparse.Namespace) -> int:
    url = api_client.api_url(settings, args.api_url)
    if url is not None:  # in the orchestrator, on the definition it deployed, audited (docs/api.md)
        done = await sagas.api_redrive(settings, url, args.order_id, args.reason)
        restarted = ", ".join(done["restarted"]) or "-"
        print(f"{args.order_id} redriven from {restarted}; follow it with: orderctl status '{args.order_id}'")
        return 0
    # A cancellation saga (CANCELLATION_FAILED) runs on the cancellation workflow, stored under its own name.
    others = {cancellation.CANCELLATION_WORKFLOW: definition.load(cancellation.DEFINITION_FILE)}
    runner = Runner(read_workflow(args.workflow_file), others=others)
    conn = await reach.database(settings, "orchestrator")
    try:
        async with conn.transaction():
            status = await conn.fetchval("SELECT status FROM saga WHERE order_id = $1 FOR UPDATE", args.order_id)
            if status is None:
                raise NotFound(f"no saga for {args.order_id}")
            if status not in REDRIVABLE:
                raise UsageError(
                    f"{args.order_id} is {status}; only {', '.join(sorted(REDRIVABLE))} sagas are redriven"
                )
            decision = await runner.apply(conn, args.order_id, Redriven(), causation_id=None)
            await outbox.announce(conn)  # the orchestrator's relay publishes the commands this wrote
    finally:
        await conn.close()
    assert decision is not None
    restarted = ", ".join(sorted({c.state for c in decision.commands})) or "-"
    print(f"{args.order_id} redriven from {restarted}; follow it with: orderctl status '{args.order_id}'")
    return 0


async def cmd_demo(settings: CtlSettings, args: argparse.Namespace) -> int:
    return await run_demo(settings, timeout=args.timeout, as_json=args.json, keep_running=args.keep_running)


def _check_failed(settings: CtlSettings, exc: Exception) -> Exception:
    """A CheckError as the operator needs it: an unreachable database names its ORDERFLOW_ variable."""
    cause = exc.__cause__
    if cause is not None and is_connect_error(cause):
        prefix = str(exc).split(":", 1)[0]
        for service in [s.name for s in SERVICES]:
            url = settings.database_url(service)
            if database_name(url) == prefix:
                return unreachable(f"PostgreSQL for {service}", reach.database_variable(service), url, cause)
        return Unreachable(f"cannot check: {exc} (--stripe-url, STRIPE_API_BASE): {why_unreachable(cause)}")
    if type(cause).__name__ == "APIConnectionError":  # stripe's: the provider could not be reached
        return Unreachable(f"cannot check: {exc} (--stripe-url, STRIPE_API_BASE)")
    if "orderctl migrate" in str(exc):
        return Unreachable(f"cannot check: {exc}")
    return UsageError(f"cannot check: {exc}")


async def cmd_check(settings: CtlSettings, args: argparse.Namespace) -> int:
    from orderctl import checker

    try:
        report = await checker.check(
            settings,
            allow_running=args.allow_running,
            stripe_url=args.stripe_url,
            saga_retention_days=args.saga_retention_days,
        )
    except checker.CheckError as exc:
        raise _check_failed(settings, exc) from exc
    if args.json:
        output.as_json(report.as_json())
    else:
        print(checker.render(report))
    return 0 if report.ok else 1


async def cmd_dlq(settings: CtlSettings, args: argparse.Namespace) -> int:
    from orderctl import dlq

    ids = set(args.message_id) if getattr(args, "message_id", None) else None
    if args.action == "list":
        found = await dlq.counts(settings.amqp_url)
        if args.json:
            output.as_json(found)
        else:
            dlq.print_counts(found)
    elif args.action == "show":
        total, letters = await dlq.show(settings.amqp_url, args.queue, limit=args.limit)
        if args.json:
            output.as_json(
                {"queue": dlq.resolve(args.queue), "total": total, "letters": list(map(dlq.as_json, letters))}
            )
            return 0
        print(f"{dlq.resolve(args.queue)}: {total} dead letter(s), showing {len(letters)}")
        if letters:
            print(dlq.render_letters(letters))
    elif args.action == "replay":
        from orderctl.dlq_check import saga_check

        check = None if args.force else saga_check(settings.database_url("orchestrator"), args.queue)
        chosen = None if args.all else ids
        done = await dlq.replay(settings.amqp_url, args.queue, chosen, check=check, drop_skipped=args.drop_skipped)
        for letter in done.replayed:
            assert letter.origin is not None
            print(f"replayed {letter.message_id or '-'} to {letter.origin[0] or '(default)'} {letter.origin[1]}")
        where = "dropped" if done.dropped else f"left in {dlq.resolve(args.queue)}"
        for letter, why in done.skipped:
            print(f"skipped {letter.message_id or '-'}: {why}; {where}")
        if not done.replayed and not done.skipped:
            if not args.all:
                raise NotFound(f"no dead letter with message id {', '.join(sorted(ids or ()))} in {args.queue}")
            print("nothing to replay", file=sys.stderr)
    elif args.action == "purge":
        what = f"message(s) {', '.join(sorted(ids))}" if ids else "every message"
        if not args.yes:
            raise UsageError(f"this deletes {what} of {dlq.resolve(args.queue)}; add --yes")
        purged = await dlq.purge(settings.amqp_url, args.queue, ids)
        print(f"purged {purged} dead letter(s) from {dlq.resolve(args.queue)}")
        if ids and not purged:
            return 1
    return 0


def cmd_completion(_: None, args: argparse.Namespace) -> int:
    import shtab

    from orderctl.main import parser

    print(shtab.complete(parser(), shell=args.shell))
    return 0
