"""The orderctl command line: the parser, and the one error handler every command goes through.

Every error ends as one line on stderr and a documented exit code (orderctl/errors.py); a traceback only
with ``--debug``.
"""

import argparse
import asyncio
import inspect
import logging
import os
import sys
import traceback
from decimal import Decimal, InvalidOperation
from importlib import metadata
from typing import NoReturn

import shtab

from orchestrator import definition
from orderctl import commands
from orderctl.argtypes import count, seconds
from orderctl.broker_users import register as register_broker_users
from orderctl.cancels import register as register_cancel
from orderctl.config import SERVICES, CtlSettings
from orderctl.errors import EXIT_CODES, INTERRUPTED, OK, USAGE, describe
from orderctl.outbox import cmd_outbox
from orderctl.refunds import register as register_refund
from orderctl.sagas import add_api_flag, add_bulk_redrive
from orderctl.sagas import register as register_list
from orderctl.tokens import add_parser as add_token_parser
from orderctl.workflows import cmd_workflow


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage is one ``--help`` away); its subparsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def price(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"invalid price {value!r}: an amount such as 9.50")
    return amount


def version() -> str:
    try:
        return metadata.version("orderflow")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


#: Shared by every command: --debug may come before or after the command's name.
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument(
    "--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, print the traceback and log"
)


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="orderctl",
        description="Run and inspect Orderflow. Settings come from ORDERFLOW_* variables (docs/operations.md).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("--debug", action="store_true", help="on an error, print the traceback and log")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(within: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
        return within.add_parser(name, help=help, description=help, parents=[_COMMON])

    def json_flag(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")

    services = [s.name for s in SERVICES]

    m = command(sub, "migrate", "create databases and roles if missing, apply migrations")
    m.add_argument("--service", choices=services, help="only this process's database (default: all)")
    m.set_defaults(run=commands.cmd_migrate)

    u = command(sub, "up", "start every process and keep them running until Ctrl-C")
    u.add_argument("--no-dev-servers", action="store_true", help="do not start the local Stripe server and SMTP sink")
    u.add_argument(
        "--log-dir", default=None, help="write each process's log here instead of the terminal"
    ).complete = shtab.DIRECTORY
    u.set_defaults(run=commands.cmd_up)

    s = command(sub, "stock", "show or set stock and prices")
    s_sub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    json_flag(command(s_sub, "show", "list the catalog: price, stock and units reserved"))
    s_set = command(s_sub, "set", "set a product's stock (and price, name, currency); then list the catalog")
    s_set.add_argument("product_id", help="the product's id, e.g. sku-mug")
    s_set.add_argument("quantity", type=count, help="units in stock")
    s_set.add_argument("--price", type=price, help="unit price in major units, e.g. 9.50 (required for a new product)")
    s_set.add_argument("--name", help="display name (default: unchanged, or the product id)")
    s_set.add_argument("--currency", default="usd", help="ISO currency code (default: usd)")
    json_flag(s_set)
    s.set_defaults(run=commands.cmd_stock)

    sb = command(sub, "submit", "publish OrderRequested messages from a JSON file (one order or a list)")
    sb.add_argument(
        "file", help="a JSON file: one OrderRequested or a list of them; - reads stdin"
    ).complete = shtab.FILE
    sb.add_argument(
        "--wait", type=seconds, default=0, metavar="SECONDS", help="wait this long for the outcomes (default: no wait)"
    )
    json_flag(sb)
    sb.set_defaults(run=commands.cmd_submit)

    st = command(sub, "status", "show an order's saga: status, steps, attempts, errors")
    st.add_argument("order_id", help="the order's id, e.g. 'ORDER#123' (quote the #)")
    add_api_flag(st)
    json_flag(st)
    st.set_defaults(run=commands.cmd_status)

    h = command(sub, "history", "every event of an order's saga, as Step Functions' execution history")
    h.add_argument("order_id", help="the order's id, e.g. 'ORDER#123' (quote the #)")
    add_api_flag(h)
    json_flag(h)
    h.set_defaults(run=commands.cmd_history)

    o = command(sub, "orders", "list recent order records (newest first)")
    o.add_argument("--limit", type=count, default=20, help="at most this many (default: 20)")
    json_flag(o)
    o.set_defaults(run=commands.cmd_orders)

    r = command(sub, "redrive", "restart a FAILED_CRITICAL saga from the step that failed")
    r.add_argument("order_id", nargs="?", help="the FAILED_CRITICAL order's id (or filters, below, for many)")
    r.add_argument(
        "--workflow-file",
        default=str(definition.DEFINITION_FILE),
        help="the workflow definition the orchestrator runs (default: the packaged one; not with --api-url, where "
        "the orchestrator uses its own)",
    ).complete = shtab.FILE
    r.add_argument("--reason", help="why, for the audit entry (with --api-url)")
    add_api_flag(r)
    r.set_defaults(run=commands.cmd_redrive)
    add_bulk_redrive(r, commands.cmd_redrive)  # --status, --error, ... --dry-run: many, through the API

    register_list(sub, command, json_flag)
    register_refund(sub, command, json_flag)
    register_cancel(sub, command, json_flag)

    d = command(sub, "demo", "migrate, start everything, run sample orders and print their outcomes")
    d.add_argument("--timeout", type=seconds, default=120.0, help="seconds to wait for the outcomes (default: 120)")
    d.add_argument(
        "--keep-running",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the outcomes, keep the processes up for the console until Ctrl-C (default: when stdin is a "
        "terminal)",
    )
    json_flag(d)
    d.set_defaults(run=commands.cmd_demo)

    c = command(sub, "check", "check the invariants over every database; exit 1 on a violation")
    c.add_argument("--allow-running", action="store_true", help="sagas still running are not violations")
    c.add_argument(
        "--stripe-url",
        help="read the payment provider at this Stripe-compatible server, e.g. http://127.0.0.1:12111 "
        "(default: STRIPE_API_KEY / STRIPE_API_BASE; neither set: the provider rules are skipped)",
    )
    c.add_argument(
        "--saga-retention-days",
        type=float,
        default=90.0,
        help="the orchestrator's SAGA_RETENTION_DAYS: an order whose effects are all older may have lost its"
        " finished saga to retention, which is no violation (default: 90)",
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(run=commands.cmd_check)

    q = command(sub, "dlq", "list, show, replay or purge dead letters")
    q_sub = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    queue_help = "a consumer queue or its .dlq, e.g. orchestrator.order-requests"
    id_help = "a dead letter's message id (repeatable)"
    json_flag(command(q_sub, "list", "every dead-letter queue with its message count"))
    q_show = command(q_sub, "show", "peek at a dead-letter queue's messages; none is removed")
    q_show.add_argument("queue", help=queue_help)
    q_show.add_argument("--limit", type=count, default=20, help="show at most this many (default: 20)")
    json_flag(q_show)
    q_replay = command(q_sub, "replay", "republish dead letters where they were first published")
    q_replay.add_argument("queue", help=queue_help)
    q_which = q_replay.add_mutually_exclusive_group(required=True)
    q_which.add_argument("--message-id", action="append", help=id_help)
    q_which.add_argument("--all", action="store_true", help="every dead letter of the queue")
    q_replay.add_argument(
        "--force", action="store_true", help="replay without checking the saga's state (see docs/runbook.md)"
    )
    q_replay.add_argument(
        "--drop-skipped", action="store_true", help="delete the dead letters the check holds back, not keep them"
    )
    q_purge = command(q_sub, "purge", "delete dead letters: one by message id, or all")
    q_purge.add_argument("queue", help=queue_help)
    q_purge.add_argument("--message-id", action="append", help=id_help + "; none: every dead letter")
    q_purge.add_argument("--yes", action="store_true", help="really delete")
    q.set_defaults(run=commands.cmd_dlq)

    ob = command(sub, "outbox", "list, retry or drop outbox rows the relay parked as unpublishable")
    ob_sub = ob.add_subparsers(dest="action", required=True, metavar="ACTION")
    ob_list = command(ob_sub, "parked", "every parked row with its reason")
    ob_list.add_argument("--service", choices=services, help="only this process's database (default: all)")
    json_flag(ob_list)
    for action, what in [("retry", "put a parked row back into the outbox"), ("drop", "delete a parked row")]:
        ob_action = command(ob_sub, action, what)
        ob_action.add_argument("id", type=int, help="the row's id, as `orderctl outbox parked` shows it")
        ob_action.add_argument("--service", required=True, choices=services, help="the database that holds the row")
    ob.set_defaults(run=cmd_outbox)

    w = command(sub, "workflow", "the stored workflow definitions: versions, sagas on each, JSON, differences")
    w_sub = w.add_subparsers(dest="action", required=True, metavar="ACTION")
    json_flag(command(w_sub, "list", "every stored version, newest first, with its sagas and those still running"))
    w_show = command(w_sub, "show", "print a stored definition's JSON")
    w_show.add_argument("name", help="the workflow's name, e.g. order")
    w_show.add_argument("version", nargs="?", help="a version from `orderctl workflow list` (default: the newest)")
    w_diff = command(w_sub, "diff", "what changed between two stored versions (a unified diff of their JSON)")
    w_diff.add_argument("name", help="the workflow's name, e.g. order")
    w_diff.add_argument("v1", help="the older version")
    w_diff.add_argument("v2", help="the newer version")
    w.set_defaults(run=cmd_workflow)

    add_token_parser(sub, command, json_flag)

    register_broker_users(sub, command)

    k = command(sub, "completion", "print a shell completion script (see docs/operations.md)")
    k.add_argument("shell", choices=["bash", "zsh"], help="the shell the script is for")
    k.set_defaults(run=commands.cmd_completion)
    return p


def _logging(debug: bool) -> None:
    """Libraries log a failed connection as a warning; orderctl says it once, in its own line."""
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        return
    for name in ("aiormq", "aio_pika", "asyncpg", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; any error becomes one line on stderr and its exit code."""
    try:
        if not inspect.iscoroutinefunction(args.run):
            return args.run(None, args)
        return asyncio.run(args.run(CtlSettings(), args))
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:  # `orderctl ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except Exception as exc:
        message, code = describe(exc)
        if args.debug:
            traceback.print_exc()
        print(f"orderctl: {message}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    _logging(args.debug)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
