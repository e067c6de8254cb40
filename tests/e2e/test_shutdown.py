"""Graceful shutdown on SIGTERM, as Kubernetes sends it (issue 5, point 5), on a stack of this module's own.

A domain service gets SIGTERM with orders in flight: it turns unready, stops consuming, finishes (or hands
back) what it holds, flushes its outbox and exits within DRAIN_SECONDS; the supervisor starts it again and
every order completes, charged once. In-flight work is made observable with the local Stripe server's delay
fault: a ProcessPayment handler waits on Stripe while the signal arrives.
"""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest
from faults_support import (
    add_stripe_fault,
    charges_per_order,
    failed_attempts,
    outbox_rows,
    private_stack,
    publish_orders,
    readyz,
    sagas_started,
    wait_for_step,
    wait_terminal,
)
from harness import Stack, eventually, http_json, is_ready, new_id, order_body, seed, stock_of

pytestmark = pytest.mark.e2e

DRAIN_SECONDS = 6.0
#: Interpreter start-up is not part of it, but exit is: imports unloading, logging flushed.
EXIT_MARGIN_SECONDS = 2.0
ORDERS = 5


@pytest.fixture(scope="module")
async def own_stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    env = {"DRAIN_SECONDS": str(DRAIN_SECONDS)}
    extra_env = {name: dict(env) for name in ("orchestrator", "inventory", "payment", "orders", "notify")}
    # notify deadlocks its pool when it holds DB_POOL_SIZE - 1 NotifyCustomer deliveries at once (each takes a
    # second connection for its claims): test_outages' backlog test shows that; here it would only hide what
    # these tests look at, so notify gets room for a full prefetch.
    extra_env["notify"]["DB_POOL_SIZE"] = "40"
    async with private_stack(tmp_path_factory.mktemp("shutdown"), extra_env, request=request) as stack:
        yield stack


async def submit(stack: Stack, orders: list[dict]) -> None:
    connection = await aio_pika.connect(stack.settings.amqp_url)
    async with connection:
        await publish_orders(await connection.channel(), orders)


async def stripe_delays_left(stack: Stack) -> int:
    """How many more requests the Stripe server's delay faults will slow down (a fault's count goes down as a
    request takes it): fewer than queued means a payment handler is waiting on Stripe now."""
    _, faults = await asyncio.to_thread(http_json, f"{stack.stripe_url}/_test/faults")
    return sum(f["count"] for f in faults["data"])


@pytest.fixture
async def clear_stripe_faults(own_stack: Stack) -> AsyncIterator[None]:
    yield
    await asyncio.to_thread(http_json, f"{own_stack.stripe_url}/_test/faults", method="DELETE")


async def terminate(stack: Stack, service: str) -> tuple[asyncio.subprocess.Process, int, float]:
    """SIGTERM the service's process group, as the kubelet signals a container; returns the process, its
    restart count before, and when the signal went."""
    child = stack.supervisor.by_name(service)
    assert child.process is not None and child.process.returncode is None
    restarts = child.restarts
    signalled = time.monotonic()
    os.killpg(child.process.pid, signal.SIGTERM)
    return child.process, restarts, signalled


async def exited(process: asyncio.subprocess.Process, signalled: float) -> tuple[int, float]:
    """Wait for the process to end, at most DRAIN_SECONDS plus the margin after the signal; returns its exit
    code and how long it took."""
    deadline = DRAIN_SECONDS + EXIT_MARGIN_SECONDS + 10  # fail with the measured time rather than hang
    code = await asyncio.wait_for(process.wait(), deadline)
    return code, time.monotonic() - signalled


async def draining_seen(stack: Stack, service: str, timeout: float) -> dict:
    """/readyz answering 503 with draining true, seen while the process is still up."""

    async def probe() -> dict | None:
        status, body = await readyz(stack, service)
        return body if status == 503 and body and body["checks"]["draining"] else None

    return await eventually(probe, timeout=timeout, interval=0.05, what=f"{service} /readyz 503 draining")


async def restarted(stack: Stack, service: str, restarts: int) -> None:
    child = stack.supervisor.by_name(service)

    async def ready_again() -> bool:
        return child.restarts == restarts + 1 and await asyncio.to_thread(is_ready, stack.port(service))

    await eventually(ready_again, timeout=30, what=f"{service} restarted by the supervisor and ready")


async def every_order_confirmed_once(
    stack: Stack, sku: str, stock: int, order_ids: list[str], *, in_progress_refusals: bool = False
) -> None:
    """Every order CONFIRMED, charged once, its stock taken once, and no step failed or timed out (but for
    Stripe refusing a retried payment while the abandoned call with the same key is still in progress, when
    ``in_progress_refusals``)."""
    statuses = await wait_terminal(stack, order_ids, timeout=120)
    assert {o: s for o, s in statuses.items() if s != "CONFIRMED"} == {}
    failures = await failed_attempts(stack, order_ids)
    if in_progress_refusals:
        failures = [f for f in failures if not ("ProcessPayment" in f and "in-progress request" in f)]
    assert failures == []
    charges = await charges_per_order(stack, order_ids)
    assert {o: n for o, n in charges.items() if n != 1} == {}, "an order was not charged exactly once"
    assert await stock_of(stack, sku) == stock - len(order_ids)


async def test_sigterm_finishes_in_flight_payments_flushes_and_exits_within_drain(
    own_stack: Stack, clear_stripe_faults: None
) -> None:
    stack = own_stack
    sku, stock = new_id("sku-"), 50
    await seed(stack, {sku: (stock, "4.00")})
    orders = [order_body(new_id(), [(sku, 1)]) for _ in range(ORDERS)]
    order_ids = [o["orderId"] for o in orders]
    # Each payment's confirmation (POST /v1/payment_intents/{id}/confirm, the call that moves money; the create
    # before it, POST /v1/payment_intents, goes at once) waits 1.5 s on Stripe: well within the consumers' half of
    # the drain budget, even when a loaded machine starts the five handlers up to a second apart. (A prefix that
    # also matched the creates let a fast handler's confirmation take a delay meant for a slow one's create, and
    # two such waits in a row outlasted the budget.)
    await add_stripe_fault(stack, delay_ms=1500, count=ORDERS, method="POST", path_prefix="/v1/payment_intents/")
    await submit(stack, orders)
    await wait_for_step(stack, order_ids, "ProcessPayment")

    async def waiting_on_stripe() -> bool:
        return await stripe_delays_left(stack) < ORDERS

    await eventually(waiting_on_stripe, timeout=30, what="a payment handler waiting on Stripe")

    process, restarts, signalled = await terminate(stack, "payment")
    body = await draining_seen(stack, "payment", timeout=2)
    code, took = await exited(process, signalled)
    left_in_outbox = await outbox_rows(stack, "payment")

    assert body["ready"] is False, body
    assert code == 0, f"payment exited with {code} after SIGTERM"
    assert took <= DRAIN_SECONDS + EXIT_MARGIN_SECONDS, f"payment took {took:.1f}s to exit"
    assert left_in_outbox == 0, "the outbox was not flushed before exit"
    logs = stack.logs("payment")
    assert '"draining"' in logs and '"stopped"' in logs
    await restarted(stack, "payment", restarts)
    await every_order_confirmed_once(stack, sku, stock, order_ids)
    print(f"\npayment drained in-flight payments and exited {took:.1f}s after SIGTERM (DRAIN_SECONDS={DRAIN_SECONDS})")


async def test_sigterm_hands_back_work_longer_than_the_drain_and_exits_in_time(
    own_stack: Stack, clear_stripe_faults: None
) -> None:
    """A payment whose Stripe call outlasts the drain budget is handed back (its delivery is redelivered to the
    restarted process, and Stripe's idempotency key makes the retry one charge): the process still exits in
    time instead of waiting for it."""
    stack = own_stack
    sku, stock = new_id("sku-"), 50
    await seed(stack, {sku: (stock, "5.00")})
    order = order_body(new_id(), [(sku, 1)])
    # Longer than the process may take to exit, not much longer: Stripe finishes the abandoned call (while it
    # runs, the redelivered command's call with the same idempotency key is refused as in progress, and the
    # definition retries it).
    delay = DRAIN_SECONDS + EXIT_MARGIN_SECONDS + 0.5
    await add_stripe_fault(stack, delay_ms=int(delay * 1000), count=1, method="POST", path_prefix="/v1/payment_intents")
    await submit(stack, [order])

    async def waiting_on_stripe() -> bool:
        return await stripe_delays_left(stack) == 0

    await eventually(waiting_on_stripe, timeout=30, what="the payment handler waiting on Stripe")
    process, restarts, signalled = await terminate(stack, "payment")
    await draining_seen(stack, "payment", timeout=2)
    code, took = await exited(process, signalled)
    left_in_outbox = await outbox_rows(stack, "payment")

    assert took <= DRAIN_SECONDS + EXIT_MARGIN_SECONDS, (
        f"payment took {took:.1f}s to exit: it waited for a {delay:.0f}s Stripe call instead of handing it back"
    )
    assert code == 0, f"payment exited with {code} after SIGTERM"
    assert left_in_outbox == 0, "a handler committed after the outbox was flushed"
    await restarted(stack, "payment", restarts)
    await every_order_confirmed_once(stack, sku, stock, [order["orderId"]], in_progress_refusals=True)
    print(f"\npayment handed back a {delay:.1f}s Stripe call and exited {took:.1f}s after SIGTERM")


@pytest.mark.parametrize("service", ["inventory", "payment", "orders", "notify"])
async def test_sigterm_with_orders_flowing_loses_nothing(own_stack: Stack, service: str) -> None:
    stack = own_stack
    sku, stock = new_id("sku-"), 50
    await seed(stack, {sku: (stock, "1.50")})
    orders = [order_body(new_id(), [(sku, 1)]) for _ in range(ORDERS)]
    order_ids = [o["orderId"] for o in orders]
    await submit(stack, orders)
    # The signal comes as the first saga starts: the other orders reach the service while it drains or is away.
    await eventually(lambda: sagas_started(stack, order_ids), timeout=30, what="orders under way")

    process, restarts, signalled = await terminate(stack, service)
    code, took = await exited(process, signalled)
    left_in_outbox = await outbox_rows(stack, service)

    assert code == 0, f"{service} exited with {code} after SIGTERM"
    assert took <= DRAIN_SECONDS + EXIT_MARGIN_SECONDS, f"{service} took {took:.1f}s to exit"
    assert left_in_outbox == 0, f"the {service} outbox was not flushed before exit"
    await restarted(stack, service, restarts)
    await every_order_confirmed_once(stack, sku, stock, order_ids)
