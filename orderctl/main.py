"""The orderctl command line."""

import argparse
import asyncio
import json
import signal
import sys
from decimal import Decimal
from pathlib import Path

from contracts.orders import OrderRequested
from orchestrator import definition
from orchestrator.runner import Runner
from orchestrator.state import Redriven
from orchestrator.status import saga_view
from orderctl import client
from orderctl.config import SERVICES, CtlSettings
from orderctl.demo import run_demo, steps_taken
from orderctl.outbox import cmd_outbox
from orderctl.provision import migrate_all
from orderctl.supervisor import Supervisor, children
from plumbing import outbox
from plumbing.db import connect
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
    conn = await connect(settings.inventory_database_url)
    try:
        if args.action == "set":
            existing = await inventory_repo.products(conn, [args.product_id])
            name = args.name or (existing[args.product_id]["name"] if existing else args.product_id)
            if not existing and args.price is None:
                print("a new product needs --price", file=sys.stderr)
                return 2
            await inventory_repo.upsert_product(
                conn, args.product_id, name=name, stock=args.quantity, price=args.price, currency=args.currency
            )
        rows = await inventory_repo.list_products(conn)
    finally:
        await conn.close()
    print(f"{'PRODUCT':<20} {'NAME':<28} {'PRICE':>10} {'CUR':<4} {'STOCK':>7} {'RESERVED':>9}")
    for r in rows:
        print(
            f"{r['product_id']:<20} {r['name'][:28]:<28} {r['price']:>10} {r['currency']:<4} "
            f"{r['stock']:>7} {r['reserved']:>9}"
        )
    return 0


async def cmd_submit(settings: CtlSettings, args: argparse.Namespace) -> int:
    document = json.loads(await asyncio.to_thread(Path(args.file).read_text))
    orders = [OrderRequested.model_validate(d) for d in (document if isinstance(document, list) else [document])]
    async with client.connect(settings.amqp_url) as channel:
        listener = client.OutcomeListener()
        if args.wait:
            await listener.start(channel)
        for order in orders:
            await client.publish_order(channel, order)
            print(f"published {order.orderId}")
        if args.wait:
            outcomes = await listener.wait_for([o.orderId for o in orders], args.wait)
            for order in orders:
                outcome = outcomes.get(order.orderId)
                print(f"{order.orderId}: {outcome['status'] if outcome else 'no outcome yet'}")
    return 0


async def _view(settings: CtlSettings, order_id: str) -> dict | None:
    conn = await connect(settings.orchestrator_database_url)
    try:
        view = await saga_view(conn, order_id)
    finally:
        await conn.close()
    if view is None:
        print(f"no saga for {order_id}", file=sys.stderr)
    return view


async def cmd_status(settings: CtlSettings, args: argparse.Namespace) -> int:
    view = await _view(settings, args.order_id)
    if view is None:
        return 1
    if args.json:
        print(json.dumps(view, indent=2, default=str))
        return 0
    print(f"order    {view['orderId']}\nstatus   {view['status']}\nstep     {view['currentStep']}")
    print(f"amount   {view['amount']} {view['currency'] or ''}")
    if view["error"]:
        print(f"error    {view['error']['Error']}: {view['error']['Cause']}")
    if view["notificationError"]:
        print(f"notify   {view['notificationError']['Error']}: {view['notificationError']['Cause']}")
    print(f"path     {steps_taken(view)}\n")
    print(f"{'STEP':<26} {'LANE':<9} {'TRY':>3}  {'OUTCOME':<10} {'STARTED':<27} ERROR")
    for step in view["steps"]:
        print(
            f"{step['step']:<26} {step['lane']:<9} {step['attempt']:>3}  {step['outcome']:<10} "
            f"{step['startedAt']:<27} {step['error'] or ''}"
        )
    return 0


async def cmd_orders(settings: CtlSettings, args: argparse.Namespace) -> int:
    conn = await connect(settings.orders_database_url)
    try:
        rows = await conn.fetch(
            """SELECT order_id, status, amount, currency, payment_intent_id, created_at
               FROM order_record ORDER BY created_at DESC LIMIT $1""",
            args.limit,
        )
    finally:
        await conn.close()
    print(f"{'ORDER':<36} {'STATUS':<10} {'AMOUNT':>10} {'CUR':<4} {'PAYMENT':<30} CREATED")
    for r in rows:
        print(
            f"{r['order_id']:<36} {r['status']:<10} {r['amount']:>10} {r['currency']:<4} "
            f"{r['payment_intent_id']:<30} {r['created_at']:%Y-%m-%d %H:%M:%S}"
        )
    return 0


async def cmd_redrive(settings: CtlSettings, args: argparse.Namespace) -> int:
    conn = await connect(settings.orchestrator_database_url)
    try:
        async with conn.transaction():
            status = await conn.fetchval("SELECT status FROM saga WHERE order_id = $1 FOR UPDATE", args.order_id)
            if status is None:
                print(f"no saga for {args.order_id}", file=sys.stderr)
                return 1
            if status != "FAILED_CRITICAL":
                print(f"{args.order_id} is {status}; only FAILED_CRITICAL sagas are redriven", file=sys.stderr)
                return 2
            runner = Runner(definition.load(Path(args.workflow_file)))
            decision = await runner.apply(conn, args.order_id, Redriven(), causation_id=None)
            await outbox.announce(conn)  # the orchestrator's relay publishes the commands this wrote
    finally:
        await conn.close()
    assert decision is not None
    restarted = ", ".join(sorted({c.state for c in decision.commands})) or "-"
    print(f"{args.order_id} redriven from {restarted}; follow it with: orderctl status '{args.order_id}'")
    return 0


async def cmd_history(settings: CtlSettings, args: argparse.Namespace) -> int:
    view = await _view(settings, args.order_id)
    if view is None:
        return 1
    print(f"{view['orderId']}  {view['status']}  ({len(view['history'])} events)\n")
    print(f"{'AT':<26} {'EVENT':<22} {'STATE':<26} {'LANE':<9} {'TRY':>3}  ERROR / DETAIL")
    for h in view["history"]:
        note = ": ".join(x for x in (h["error"], h["cause"]) if x) or (json.dumps(h["detail"]) if h["detail"] else "")
        print(
            f"{h['at'][:26]:<26} {h['event']:<22} {h['state'] or '':<26} {h['lane']:<9} "
            f"{h['attempt'] if h['attempt'] is not None else '':>3}  {note}"
        )
    return 0


async def cmd_demo(settings: CtlSettings, args: argparse.Namespace) -> int:
    return await run_demo(settings, timeout=args.timeout)


async def cmd_check(settings: CtlSettings, args: argparse.Namespace) -> int:
    from orderctl import checker

    try:
        report = await checker.check(settings, allow_running=args.allow_running, stripe_url=args.stripe_url)
    except (checker.CheckError, OSError) as exc:
        print(f"cannot check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_json(), indent=2) if args.json else checker.render(report))
    return 0 if report.ok else 1


async def cmd_dlq(settings: CtlSettings, args: argparse.Namespace) -> int:
    from orderctl import dlq

    ids = set(args.message_id) if getattr(args, "message_id", None) else None
    try:
        if args.action == "list":
            print(dlq.render_counts(await dlq.counts(settings.amqp_url)))
        elif args.action == "show":
            total, letters = await dlq.show(settings.amqp_url, args.queue, limit=args.limit)
            print(f"{dlq.resolve(args.queue)}: {total} dead letter(s), showing {len(letters)}")
            if letters:
                print(dlq.render_letters(letters))
        elif args.action == "replay":
            from orderctl.dlq_check import saga_check

            check = None if args.force else saga_check(settings.orchestrator_database_url, args.queue)
            chosen = None if args.all else ids
            done = await dlq.replay(settings.amqp_url, args.queue, chosen, check=check, drop_skipped=args.drop_skipped)
            for letter in done.replayed:
                assert letter.origin is not None
                print(f"replayed {letter.message_id or '-'} to {letter.origin[0] or '(default)'} {letter.origin[1]}")
            where = "dropped" if done.dropped else f"left in {dlq.resolve(args.queue)}"
            for letter, why in done.skipped:
                print(f"skipped {letter.message_id or '-'}: {why}; {where}")
            if not done.replayed and not done.skipped:
                print("nothing to replay" if args.all else "no matching dead letter", file=sys.stderr)
                return 0 if args.all else 1
        elif args.action == "purge":
            what = f"message(s) {', '.join(sorted(ids))}" if ids else "every message"
            if not args.yes:
                print(f"this deletes {what} of {dlq.resolve(args.queue)}; add --yes", file=sys.stderr)
                return 2
            purged = await dlq.purge(settings.amqp_url, args.queue, ids)
            print(f"purged {purged} dead letter(s) from {dlq.resolve(args.queue)}")
            if ids and not purged:
                return 1
    except dlq.DlqError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orderctl", description="Run and inspect Orderflow.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="create databases and roles if missing, apply migrations")
    m.add_argument("--service", choices=[s.name for s in SERVICES])
    m.set_defaults(run=cmd_migrate)

    u = sub.add_parser("up", help="start every process and keep them running until Ctrl-C")
    u.add_argument("--no-dev-servers", action="store_true", help="do not start the local Stripe server and SMTP sink")
    u.add_argument("--log-dir", default=None, help="write each process's log here instead of the terminal")
    u.set_defaults(run=cmd_up)

    s = sub.add_parser("stock", help="show or set stock and prices")
    s_sub = s.add_subparsers(dest="action", required=True)
    s_sub.add_parser("show")
    s_set = s_sub.add_parser("set")
    s_set.add_argument("product_id")
    s_set.add_argument("quantity", type=int)
    s_set.add_argument("--price", type=Decimal)
    s_set.add_argument("--name")
    s_set.add_argument("--currency", default="usd")
    s.set_defaults(run=cmd_stock)

    sb = sub.add_parser("submit", help="publish OrderRequested messages from a JSON file (one order or a list)")
    sb.add_argument("file")
    sb.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait this long for the outcomes")
    sb.set_defaults(run=cmd_submit)

    st = sub.add_parser("status", help="show an order's saga: status, steps, attempts, errors")
    st.add_argument("order_id")
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=cmd_status)

    h = sub.add_parser("history", help="every event of an order's saga, as Step Functions' execution history")
    h.add_argument("order_id")
    h.set_defaults(run=cmd_history)

    o = sub.add_parser("orders", help="list recent order records (newest first)")
    o.add_argument("--limit", type=int, default=20)
    o.set_defaults(run=cmd_orders)

    r = sub.add_parser("redrive", help="restart a FAILED_CRITICAL saga from the step that failed")
    r.add_argument("order_id")
    r.add_argument("--workflow-file", default=str(definition.DEFINITION_FILE))
    r.set_defaults(run=cmd_redrive)

    d = sub.add_parser("demo", help="migrate, start everything, run sample orders and print their outcomes")
    d.add_argument("--timeout", type=float, default=120.0)
    d.set_defaults(run=cmd_demo)

    c = sub.add_parser("check", help="check the invariants over every database; exit 1 on a violation")
    c.add_argument("--allow-running", action="store_true", help="sagas still running are not violations")
    c.add_argument(
        "--stripe-url",
        help="read the payment provider at this Stripe-compatible server, e.g. http://127.0.0.1:12111 "
        "(default: STRIPE_API_KEY / STRIPE_API_BASE; neither set: the provider rules are skipped)",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=cmd_check)

    q = sub.add_parser("dlq", help="list, show, replay or purge dead letters")
    q_sub = q.add_subparsers(dest="action", required=True)
    q_sub.add_parser("list", help="every dead-letter queue with its message count")
    q_show = q_sub.add_parser("show", help="peek at a dead-letter queue's messages; none is removed")
    q_show.add_argument("queue", help="a consumer queue or its .dlq, e.g. orchestrator.order-requests")
    q_show.add_argument("--limit", type=int, default=20)
    q_replay = q_sub.add_parser("replay", help="republish dead letters where they were first published")
    q_replay.add_argument("queue")
    q_which = q_replay.add_mutually_exclusive_group(required=True)
    q_which.add_argument("--message-id", action="append", help="a dead letter's message id (repeatable)")
    q_which.add_argument("--all", action="store_true")
    q_replay.add_argument(
        "--force", action="store_true", help="replay without checking the saga's state (see docs/runbook.md)"
    )
    q_replay.add_argument(
        "--drop-skipped", action="store_true", help="delete the dead letters the check holds back, not keep them"
    )
    q_purge = q_sub.add_parser("purge", help="delete dead letters: one by message id, or all")
    q_purge.add_argument("queue")
    q_purge.add_argument("--message-id", action="append", help="a dead letter's message id (repeatable)")
    q_purge.add_argument("--yes", action="store_true", help="really delete")
    q.set_defaults(run=cmd_dlq)

    ob = sub.add_parser("outbox", help="list, retry or drop outbox rows the relay parked as unpublishable")
    ob_sub = ob.add_subparsers(dest="action", required=True)
    ob_list = ob_sub.add_parser("parked", help="every parked row with its reason")
    ob_list.add_argument("--service", choices=[s.name for s in SERVICES])
    ob_list.add_argument("--json", action="store_true")
    for action, what in [("retry", "put a parked row back into the outbox"), ("drop", "delete a parked row")]:
        ob_action = ob_sub.add_parser(action, help=what)
        ob_action.add_argument("id", type=int, help="the row's id, as `orderctl outbox parked` shows it")
        ob_action.add_argument("--service", required=True, choices=[s.name for s in SERVICES])
    ob.set_defaults(run=cmd_outbox)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(asyncio.run(args.run(CtlSettings(), args)))


if __name__ == "__main__":
    main()
