"""``orderctl demo``: the main job. Migrate, start everything, seed a catalog, run sample orders, print outcomes,
then the console's address and a viewer token to open it with (issue 17's done-criterion), and keep running for
the console until Ctrl-C when started from a terminal."""

import asyncio
import json
import signal
import sys
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Any

from contracts.base import Customer, OrderItem
from contracts.orders import OrderRequested
from orchestrator import api_tokens
from orchestrator.status import saga_view
from orderctl import client, output, reach
from orderctl.config import SERVICES, CtlSettings
from orderctl.errors import CtlError
from orderctl.output import Col
from orderctl.provision import migrate_all
from orderctl.supervisor import Supervisor, children
from orderctl.tokens import creator
from services.inventory import repository as inventory_repo

CATALOG = [
    ("sku-tshirt", "Orderflow T-shirt", 20, Decimal("19.99")),
    ("sku-mug", "Saga mug", 50, Decimal("9.50")),
    ("sku-sticker", "Compensation sticker", 500, Decimal("1.25")),
]


#: Faults the demo injects, by order id suffix, so every path of the guide's Order Status Flow shows.
DEMO_FAULTS: dict[str, list[dict[str, Any]]] = {
    "orders": [
        {
            "messageType": "CreateOrderRecord",
            "error": "OrderRecordError",
            "cause": "injected: record store refused",
            "correlationIdPattern": "-(record|critical)$",
        },
    ],
    "notify": [
        {
            "messageType": "NotifyCustomer",
            "error": "NotificationError",
            "cause": "injected: mailbox unavailable",
            "correlationIdPattern": "-notify$",
        },
    ],
    "payment": [
        {"messageType": "ProcessPayment", "error": "NoReply", "times": 1, "correlationIdPattern": "-slow$"},
        {
            "messageType": "RefundPayment",
            "error": "RefundFailed",
            "cause": "injected: refund refused",
            "correlationIdPattern": "-critical$",
        },
    ],
}


def sample_orders(run: str) -> list[tuple[str, OrderRequested]]:
    """One order per path of the guide's Order Status Flow; the suffix selects an injected fault."""
    customer = Customer(email="ada@example.com", phone="+15550001111")

    def order(n: int, items: list[tuple[str, int]], pm: str = "pm_card_visa", suffix: str = "") -> OrderRequested:
        return OrderRequested(
            orderId=f"ORDER#{run}-{n}{suffix}",
            customer=customer,
            items=[OrderItem(productId=p, quantity=q) for p, q in items],
            paymentMethodId=pm,
        )

    return [
        ("happy path", order(1, [("sku-tshirt", 2), ("sku-mug", 1)])),
        ("happy path", order(2, [("sku-sticker", 10)])),
        ("insufficient stock (quantity 9999)", order(3, [("sku-mug", 9999)])),
        ("payment declined", order(4, [("sku-tshirt", 1)], "pm_card_chargeDeclined")),
        ("insufficient funds", order(5, [("sku-mug", 2)], "pm_card_chargeDeclinedInsufficientFunds")),
        ("order record fails: refund + release", order(6, [("sku-mug", 1)], suffix="-record")),
        ("notification fails: still confirmed", order(7, [("sku-sticker", 4)], suffix="-notify")),
        ("payment reply lost: timeout, retry", order(8, [("sku-sticker", 2)], suffix="-slow")),
        ("record and refund fail: critical", order(9, [("sku-tshirt", 1)], suffix="-critical")),
    ]


async def seed_catalog(settings: CtlSettings) -> None:
    conn = await reach.database(settings, "inventory")
    try:
        for product_id, name, stock, price in CATALOG:
            await inventory_repo.upsert_product(conn, product_id, name=name, stock=stock, price=price, currency="usd")
    finally:
        await conn.close()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


async def wait_ready(settings: CtlSettings, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pending = {s.name for s in SERVICES}
    while pending:
        pending = {name for name in pending if not await asyncio.to_thread(_ready, settings.http_port(name))}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise CtlError(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))} (see var/log)")
        await asyncio.sleep(0.2)


def say(line: str) -> None:
    """What the demo is doing, on stderr: stdout holds only the outcomes (a table, or JSON with --json)."""
    print(line, file=sys.stderr, flush=True)


async def run_demo(
    settings: CtlSettings, *, timeout: float = 120.0, as_json: bool = False, keep_running: bool | None = None
) -> int:
    """The demo; ``keep_running`` (None: when stdin is a terminal) leaves the processes up for the console
    until Ctrl-C or SIGTERM."""
    if keep_running is None:
        keep_running = sys.stdin.isatty()
    say("migrating databases ...")
    await migrate_all(settings)
    faults = {service: {"FAULTS": json.dumps(rules)} for service, rules in DEMO_FAULTS.items()}
    supervisor = Supervisor(children(settings, dev_servers=True, extra_env=faults), log_dir="var/log")
    say("starting processes (logs in var/log/) ...")
    await supervisor.start()
    try:
        await wait_ready(settings)
        await seed_catalog(settings)
        run = time.strftime("%Y%m%d%H%M%S")
        orders = sample_orders(run)
        async with client.connect(settings.amqp_url) as channel:
            listener = client.OutcomeListener()
            await listener.start(channel)
            for _, order in orders:
                await client.publish_order(channel, order)
            say(
                f"published {len(orders)} orders; waiting for outcomes (the lost payment reply waits out "
                "ProcessPayment's 60 s timeout, then its 5 s retry) ..."
            )
            with output.OrderProgress(len(orders)) as progress:
                outcomes = await listener.wait_for(
                    [o.orderId for _, o in orders], timeout, lambda order_id, o: progress.done(order_id, o["status"])
                )
        conn = await reach.database(settings, "orchestrator")
        try:
            views = {o.orderId: await saga_view(conn, o.orderId) for _, o in orders}
        finally:
            await conn.close()
        rows = outcome_rows(orders, outcomes, views)
        if as_json:
            output.as_json([dict(zip(OUTCOME_HEADERS, row, strict=True)) for row in rows])
        else:
            output.table(
                [
                    Col("ORDER", key=True),
                    Col("PATH"),
                    Col("STATUS"),
                    Col("AMOUNT", right=True),
                    Col("ERROR"),
                    Col("STEPS"),
                ],
                rows,
            )
        await show_console(settings, run, len(orders), to_stderr=as_json)
        if keep_running:
            say("the processes keep running for the console; Ctrl-C stops them")
            await until_stopped()
        return 0 if len(outcomes) == len(orders) else 1
    finally:
        await supervisor.stop()


def console_url(settings: CtlSettings) -> str:
    """The console as ``orderctl up`` and the demo serve it: the orchestrator's API port on this host."""
    return f"http://127.0.0.1:{settings.orchestrator_api_port}/console/"


async def viewer_token(settings: CtlSettings, run: str) -> str:
    """A new viewer token, made as ``orderctl token create --role viewer`` makes one (only its hash is kept)."""
    conn = await reach.database(settings, "orchestrator")
    try:
        token, _ = await api_tokens.create(conn, role="viewer", name=f"demo-{run}-viewer", created_by=creator())
    finally:
        await conn.close()
    return token


def _listed(settings: CtlSettings, token: str, run: str) -> int:
    """How many of this run's sagas the API lists to ``token``: the console reads the same listing."""
    query = urllib.parse.urlencode({"q": f"ORDER#{run}-", "limit": 50})
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.orchestrator_api_port}/api/v1/sagas?{query}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return len(json.load(response)["items"])


async def show_console(settings: CtlSettings, run: str, orders: int, *, to_stderr: bool) -> None:
    """Print the console's address (and a link to this run's orders) and a viewer token; stdout unless it holds
    JSON. The API is asked first with the token, so what is printed is known to work."""
    token = await viewer_token(settings, run)
    url = console_url(settings)
    try:
        listed = await asyncio.to_thread(_listed, settings, token, run)
        seen = f"it lists this run's {listed} of {orders} orders"
    except (OSError, ValueError, KeyError) as exc:
        seen = f"the API did not answer ({exc}): see var/log/orchestrator.log"
    lines = [
        "",
        f"console: {url}  ({seen}: {url}?{urllib.parse.urlencode({'q': f'ORDER#{run}-'})})",
        f"viewer token: {token}",
        "  (log in with it; to redrive from the console: orderctl token create --role operator)",
    ]
    print("\n".join(lines), file=sys.stderr if to_stderr else sys.stdout, flush=True)


async def until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def steps_taken(view: dict[str, Any] | None) -> str:
    if not view:
        return "-"
    names: list[str] = []
    for step in view["steps"]:
        label = step["step"] + ("" if step["outcome"] == "succeeded" else f"({step['error'] or step['outcome']})")
        if not names or names[-1] != label:
            names.append(label)
    return " > ".join(names)


OUTCOME_HEADERS = ("orderId", "path", "status", "amount", "error", "steps")


def outcome_rows(
    orders: list[tuple[str, OrderRequested]], outcomes: dict[str, dict[str, Any]], views: dict[str, Any]
) -> list[list[str]]:
    """One row per sample order: OUTCOME_HEADERS' values, "NO OUTCOME" for an order that had none in time."""
    rows = []
    for path, order in orders:
        outcome = outcomes.get(order.orderId, {})
        error = outcome.get("error") or outcome.get("notificationError") or {}
        amount = outcome.get("amount")
        rows.append(
            [
                order.orderId,
                path,
                outcome.get("status", "NO OUTCOME"),
                "-" if amount is None else f"{amount:.2f}",
                error.get("Error", "") if isinstance(error, dict) else "",
                steps_taken(views.get(order.orderId)),
            ]
        )
    return rows
