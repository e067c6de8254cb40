"""``orderctl refund``: customer service's manual refund, through the orchestrator's API (docs/api.md).

Only through the API (``--api-url`` or ORDERFLOW_API_URL, with ORDERFLOW_API_TOKEN): the refund is sent and
audited by the orchestrator, never written to its database from here. Each run sends an Idempotency-Key (a new
one unless ``--idempotency-key`` names it) and prints it: running again with the same key refunds once.
"""

import argparse
import uuid
from typing import Any

from orderctl import api_client, output
from orderctl.argtypes import amount, seconds
from orderctl.config import CtlSettings
from orderctl.errors import CtlError

#: The saga's history events that end a manual refund (orchestrator/manual_actions.py).
OUTCOMES = ("ManualRefundSucceeded", "ManualRefundFailed")


def register(sub: argparse._SubParsersAction, command: Any, json_flag: Any) -> None:
    """``orderctl refund``; orderctl/main.py calls this."""
    r = command(sub, "refund", "refund part or all of what an order was charged (through the API; audited)")
    r.add_argument("order_id", help="the order's id, e.g. 'ORDER#123' (quote the #)")
    r.add_argument("--amount", type=amount, help="how much, in the order's currency (default: all that remains)")
    r.add_argument("--reason", required=True, help="why, for the audit entry and the refund (one line)")
    r.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the request's Idempotency-Key: the same key again refunds once (default: a new key, printed)",
    )
    r.add_argument(
        "--wait",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for the payment service's answer (default: 30; 0: do not wait)",
    )
    r.add_argument(
        "--api-url",
        help="the orchestrator's API, e.g. http://127.0.0.1:8080 (default: ORDERFLOW_API_URL); the token comes "
        "from ORDERFLOW_API_TOKEN",
    )
    json_flag(r)
    r.set_defaults(run=cmd_refund)


def _outcome(saga: dict[str, Any], command_id: str) -> dict[str, Any] | None:
    """The history entry that ended the refund, once the payment service answered."""
    return next((h for h in saga["history"] if h["event"] in OUTCOMES and h["commandId"] == command_id), None)


async def cmd_refund(settings: CtlSettings, args: argparse.Namespace) -> int:
    url = api_client.required_api_url(settings, args.api_url, "refund")
    key = args.idempotency_key or str(uuid.uuid4())
    body: dict[str, Any] = {"reason": args.reason}
    if args.amount is not None:
        body["amount"] = str(args.amount)
    async with api_client.connect(settings, url) as api:
        asked = await api.post(api_client.saga_path(args.order_id, "/refund"), body, headers={"Idempotency-Key": key})
        ended = None
        if asked["status"] == "pending" and args.wait > 0:
            command_id = asked["commandId"]
            saga, _ = await api_client.follow(
                api, args.order_id, args.wait, lambda saga: _outcome(saga, command_id) is not None
            )
            ended = _outcome(saga, command_id)
    status, error = asked["status"], asked.get("error")
    if ended is not None:
        status = "succeeded" if ended["event"] == "ManualRefundSucceeded" else "failed"
        error = ended["error"] and f"{ended['error']}: {ended['cause']}"
    if args.json:
        output.as_json({**asked, "status": status, "outcome": ended})
    else:
        how_much = f"{asked['expected']:.2f} {asked['currency'].upper()}"
        again = " (an earlier request with this key)" if asked["replayed"] else ""
        print(f"{args.order_id}: refund of {how_much} {status}{again}; Idempotency-Key {key}", flush=True)
    if status == "failed":
        raise CtlError(f"{args.order_id}: the refund failed: {error or 'see orderctl history'}")
    return 0
