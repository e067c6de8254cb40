"""``orderctl cancel``: stop a RUNNING saga, or cancel a CONFIRMED order for its customer, through the
orchestrator's API (docs/api.md, "Cancel").

Only through the API (``--api-url`` or ORDERFLOW_API_URL, with ORDERFLOW_API_TOKEN, an operator's): the
orchestrator stops the running saga and sends it down its compensation, or starts the cancellation workflow of
a confirmed order, and audits who asked. With ``--wait`` (the default 60 s) it follows the saga that carries
the cancellation out until it ends and says how.
"""

import argparse
from typing import Any

from orderctl import api_client, output
from orderctl.argtypes import seconds
from orderctl.config import CtlSettings
from orderctl.errors import CtlError


def register(sub: argparse._SubParsersAction, command: Any, json_flag: Any) -> None:
    """``orderctl cancel``; orderctl/main.py calls this."""
    c = command(
        sub,
        "cancel",
        "stop a RUNNING saga and compensate it, or cancel a CONFIRMED order: refund, restock, void, notify "
        "(through the API; audited)",
    )
    c.add_argument("order_id", help="the order's id, e.g. 'ORDER#123' (quote the #)")
    c.add_argument("--reason", required=True, help="why (the customer's words), for the refund and the audit entry")
    c.add_argument(
        "--wait",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for the cancellation to end (default: 60; 0: do not wait)",
    )
    c.add_argument(
        "--api-url",
        help="the orchestrator's API, e.g. http://127.0.0.1:8080 (default: ORDERFLOW_API_URL); the token comes "
        "from ORDERFLOW_API_TOKEN",
    )
    json_flag(c)
    c.set_defaults(run=cmd_cancel)


async def cmd_cancel(settings: CtlSettings, args: argparse.Namespace) -> int:
    url = api_client.required_api_url(settings, args.api_url, "cancel")
    async with api_client.connect(settings, url) as api:
        asked = await api.post(api_client.saga_path(args.order_id, "/cancel"), {"reason": args.reason})
        saga = None
        if args.wait > 0:  # until it leaves RUNNING, or as it stands when the wait is over
            saga, _ = await api_client.follow(api, asked["cancellation"], args.wait, lambda s: s["status"] != "RUNNING")
    status = saga["status"] if saga else asked["status"]
    if args.json:
        output.as_json({**asked, "status": status, "saga": saga})
    elif asked.get("stoppedAt"):
        print(
            f"{args.order_id}: stopped at {asked['stoppedAt']}, compensating through {asked['compensation']}: "
            f"{status}; follow it with orderctl status '{args.order_id}'"
        )
    else:
        print(f"{args.order_id}: cancellation {status}; follow it with orderctl status '{asked['cancellation']}'")
    if status == "FAILED_CRITICAL":
        error = (saga or {}).get("error") or {}
        raise CtlError(f"{args.order_id}: a compensation failed: {error.get('Error')}: {error.get('Cause')}")
    if status == "CANCELLATION_FAILED":
        error = (saga or {}).get("error") or {}
        raise CtlError(f"{args.order_id}: the cancellation failed: {error.get('Error')}: {error.get('Cause')}")
    return 0
