"""Poison and bad input (issue 5, point 3): never stop a consumer, never lose a message.

Every consumer queue of the contract gets messages that are not JSON, fail the schema, are too large, carry an
unknown schema version or type: each is dead-lettered into ``<queue>.dlq`` with the reason in its headers and
counted in ``orderflow_dead_lettered_messages_total``, and the consumer goes on. A message that passes validation
but keeps crashing its handler is dead-lettered by the broker after the delivery limit. Then hypothesis throws
generated malformed messages at every consumer: each one ends dead-lettered or handled (never both, never
neither), and well-formed orders sent among them complete. Last, generated control characters in every field
that can reach a header (issue 15, item 5), payload and envelope alike: each message is refused at the edge,
dead-lettered with a reason naming the field, an OrderRequested answered with order.rejected, none handled.
"""

import asyncio
import hashlib
import json
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from faults_support import (
    DELIVERY_LIMIT,
    MAX_MESSAGE_BYTES,
    TARGETS,
    QueueTarget,
    Tap,
    Throw,
    charges_per_order,
    check_targets_cover_contract,
    dead_letter_tap,
    dlq_depth,
    handled_ids,
    publish_orders,
    rejection_tap,
    reply_tap,
    sagas_started,
    throw,
    wait_terminal,
)
from harness import Stack, db, eventually, metric_value, new_id, order_body, outcome_of, publish_raw, seed
from header_fields import FORBIDDEN, header_bound_paths, poisoned, value_at, with_value
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from plumbing.envelope import HEADER_CAUSATION, HEADER_SAFE_PATTERN

pytestmark = pytest.mark.e2e

DEAD_LETTERED = "orderflow_dead_lettered_messages_total"
#: The x-death-kind values, which are also the metric's reason label (docs/runbook.md, OrderflowDeadLetters).
DOCUMENTED_KINDS = {"too_large", "bad_envelope", "invalid_json", "schema", "unknown_type", "schema_version"}
HANDLED = "orderflow_messages_handled_total"


@dataclass
class Taps:
    dead_letters: Tap
    rejections: Tap
    replies: Tap
    reply_key: str


@pytest.fixture
async def taps(channel) -> Taps:
    reply_key = f"poison-test-{uuid.uuid4().hex[:8]}"
    return Taps(
        dead_letters=await dead_letter_tap(channel),
        rejections=await rejection_tap(channel),
        replies=await reply_tap(channel, reply_key),
        reply_key=reply_key,
    )


def _doc(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _set_all(value: Any, key: str, new: Any) -> Any:
    """``value`` with every ``key`` (at any depth) set to ``new``."""
    if isinstance(value, dict):
        return {k: new if k == key else _set_all(v, key, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_set_all(v, key, new) for v in value]
    return value


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # the x-death-kind the consumer must give
    names: str  # a word the x-death-reason must contain: what is wrong
    item: Throw


def poison_cases(target: QueueTarget, reply_key: str) -> list[Case]:
    """The bad inputs of issue 5 point 3 that apply to ``target``'s message type, each with a fresh order id."""

    def case(name: str, kind: str, names: str, body: bytes, **overrides: Any) -> Case:
        order_id = new_id("ORDER#poison-")
        data = body.replace(b"ORDER#placeholder", order_id.encode())
        fields: dict[str, Any] = {
            # A client publishes OrderRequested without a type: the queue's default applies.
            "message_type": None if target.queue == "orchestrator.order-requests" else target.message_type,
            "correlation_id": order_id,
            "reply_to": reply_key if target.is_command else None,
            "headers": {"x-causation-id": f"cmd-{uuid.uuid4().hex}"} if not target.is_command else {},
        }
        fields.update(overrides)
        return Case(name, kind, names, Throw(target=target, body=data, **fields))

    valid = target.payload("ORDER#placeholder")
    required = "orderId" if "orderId" in valid else "amount"
    cases = [
        case("not JSON", "invalid_json", "JSON", b'{"orderId": "ORDER#placeholder", "items": [ oops'),
        case("not UTF-8", "invalid_json", "JSON", b"\xff\xfe\x00\x81 binary"),
        case(f"missing {required}", "schema", required, _doc({k: v for k, v in valid.items() if k != required})),
        case("wrong types", "schema", required, _doc({**valid, required: 12345 if required == "orderId" else "lots"})),
        case(
            "too large",
            "too_large",
            f"exceeds {MAX_MESSAGE_BYTES}",
            _doc({**valid, "padding": "x" * (MAX_MESSAGE_BYTES + 1)}),
        ),
        case("schema version 99", "schema_version", "99", _doc(valid), headers={"x-schema-version": 99}),
        case("unknown message type", "unknown_type", "NoSuchMessage", _doc(valid), message_type="NoSuchMessage"),
        case('x-attempt "many"', "bad_envelope", "many", _doc(valid), headers={"x-attempt": "many"}),
        # AMQP headers are typed: a table or an array where a number belongs is a bad envelope too.
        case("x-attempt a table", "bad_envelope", "", _doc(valid), headers={"x-attempt": {"n": 1}}),
        case("x-schema-version an array", "bad_envelope", "", _doc(valid), headers={"x-schema-version": [1]}),
    ]
    if target.has_quantity:
        cases += [
            case("quantity 0", "schema", "quantity", _doc(_set_all(valid, "quantity", 0))),
            case("quantity -1", "schema", "quantity", _doc(_set_all(valid, "quantity", -1))),
            case('quantity "2" (a string)', "schema", "quantity", _doc(_set_all(valid, "quantity", "2"))),
        ]
    else:
        cases.append(case("amount -1", "schema", "amount", _doc({**valid, "amount": -1})))
    if target.non_empty_list:
        cases.append(
            case(
                f"empty {target.non_empty_list}",
                "schema",
                target.non_empty_list,
                _doc({**valid, target.non_empty_list: []}),
            )
        )
    return cases


def _readable_order_id(body: bytes) -> str | None:
    try:
        order_id = json.loads(body).get("orderId")
    except ValueError:
        return None
    return order_id if isinstance(order_id, str) else None


def _metric(stack: Stack, service: str, name: str, **labels: str) -> float:
    return metric_value(stack.port(service), name, **labels)


async def metric(stack: Stack, service: str, name: str, **labels: str) -> float:
    return await asyncio.to_thread(_metric, stack, service, name, **labels)


async def valid_message_is_handled(stack: Stack, channel, taps: Taps, target: QueueTarget) -> None:
    """The consumer still serves: a valid message sent after the poison is handled (its inbox row commits),
    and a command is answered."""
    order_id = new_id("ORDER#after-poison-")
    item = Throw(
        target=target,
        body=_doc(target.payload(order_id)),
        message_type=target.message_type,
        correlation_id=order_id,
        reply_to=taps.reply_key if target.is_command else None,
        headers={} if target.is_command else {"x-causation-id": f"cmd-{uuid.uuid4().hex}"},
    )
    await throw(channel, item)

    async def handled() -> bool:
        return item.message_id in await handled_ids(stack, target.service, [item.message_id])

    await eventually(handled, timeout=30, what=f"a valid {target.message_type} handled after the poison")
    if target.is_command:
        reply = (await taps.replies.wait_for([item.message_id]))[item.message_id]
        assert reply.message_type in ("CommandFailed", *REPLIES_OF[target.message_type]), reply


#: The success replies of the sample commands (the samples name an absent product, so most fail).
REPLIES_OF = {
    "CheckInventory": ("InventoryChecked",),
    "ProcessPayment": ("PaymentProcessed",),
    "CreateOrderRecord": ("OrderRecordCreated",),
    "NotifyCustomer": ("CustomerNotified",),
}


def test_every_consumer_queue_is_targeted() -> None:
    """The queues below are exactly those of contracts.asyncapi.consumer_queues, reached by their bindings."""
    check_targets_cover_contract()


@pytest.mark.parametrize("queue", list(TARGETS))
async def test_poison_is_dead_lettered_with_its_reason_and_the_consumer_goes_on(
    stack: Stack, channel, taps: Taps, queue: str
) -> None:
    target = TARGETS[queue]
    cases = poison_cases(target, taps.reply_key)
    kinds = Counter(c.kind for c in cases)
    before = {kind: await metric(stack, target.service, DEAD_LETTERED, queue=queue, reason=kind) for kind in kinds}
    depth_before = await dlq_depth(channel, queue)

    for c in cases:
        await throw(channel, c.item)
    try:
        seen = await taps.dead_letters.wait_for([c.item.message_id for c in cases], timeout=10)
    except AssertionError:
        missing = [c.name for c in cases if c.item.message_id not in taps.dead_letters.seen]
        raise AssertionError(f"not dead-lettered within 10s on {queue}: {missing}") from None

    problems = []
    for c in cases:
        letter = seen[c.item.message_id]
        reason, kind = letter.headers.get("x-death-reason", ""), letter.headers.get("x-death-kind")
        if (
            letter.routing_key != queue
            or kind != c.kind
            or not reason.startswith(f"{c.kind}:")
            or c.names not in reason
        ):
            problems.append(f"{c.name}: routed {letter.routing_key!r}, kind {kind!r}, reason {reason!r}")
        if letter.body != c.item.body:
            problems.append(f"{c.name}: the dead letter's body differs from what was sent")
    assert not problems, "\n".join(problems)

    # Dead letters went to the queue's own dead-letter queue, not only through the exchange (the tap's copy
    # can arrive before the quorum queue has committed the last one).
    async def in_dlq() -> bool:
        return await dlq_depth(channel, queue) >= depth_before + len(cases)

    await eventually(in_dlq, timeout=10, what=f"{len(cases)} more messages in {queue}.dlq")
    for kind, count in kinds.items():

        async def counted(kind: str = kind, count: int = count) -> bool:
            now = await metric(stack, target.service, DEAD_LETTERED, queue=queue, reason=kind)
            return now >= before[kind] + count

        await eventually(counted, timeout=10, what=f"{DEAD_LETTERED}{{queue={queue},reason={kind}}} +{count}")
    # None of them was handled.
    assert not await handled_ids(stack, target.service, [c.item.message_id for c in cases])

    if queue == "orchestrator.order-requests":
        # An invalid OrderRequested is also answered with order.rejected naming the reason.
        rejected = await taps.rejections.wait_for([c.item.message_id for c in cases])
        for c in cases:
            body = json.loads(rejected[c.item.message_id].body)
            assert any(r.startswith(f"{c.kind}:") and c.names in r for r in body["reasons"]), (c.name, body)
            assert body["orderId"] == _readable_order_id(c.item.body), (c.name, body)

    await valid_message_is_handled(stack, channel, taps, target)


async def test_orders_complete_after_poison_on_every_queue(stack: Stack, channel, listener) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "3.00")})
    order_id = new_id()
    await publish_orders(channel, [order_body(order_id, [(sku, 2)])])
    assert (await outcome_of(listener, order_id))["status"] == "CONFIRMED"


async def test_order_for_an_unknown_product_ends_with_an_outcome_naming_it(stack: Stack, channel, listener) -> None:
    """Not a schema failure (only the catalog knows products): the saga ends, the order is not lost."""
    order_id, sku = new_id(), new_id("sku-unknown-")
    await publish_orders(channel, [order_body(order_id, [(sku, 1)])])
    outcome = await outcome_of(listener, order_id)
    assert outcome["status"] in ("CANCELLED", "FAILED"), outcome
    assert outcome["error"]["Error"] == "InventoryError" and sku in outcome["error"]["Cause"], outcome


async def crashing_release(stack: Stack, taps: Taps, order_id: str) -> Throw:
    """A valid ReleaseInventory whose remembered result was corrupted in the database (as a bad migration or a
    hand edit would): reading it back fails the reply's schema, so every delivery's handler raises."""
    key = f"{order_id}-release"
    conn = await db(stack.settings, "inventory")
    try:
        await conn.execute(
            "INSERT INTO idempotency_record (idempotency_id, operation, result) VALUES ($1, 'release', $2)",
            key,
            '{"corrupted": true}',
        )
    finally:
        await conn.close()
    target = TARGETS["inventory.commands"]
    body = {"orderId": order_id, "idempotencyId": key}
    return Throw(
        target=target,
        body=_doc(body),
        message_type="ReleaseInventory",
        correlation_id=order_id,
        reply_to=taps.reply_key,
    )


async def test_a_message_that_keeps_crashing_its_handler_is_dead_lettered_by_the_broker(
    stack: Stack, channel, taps: Taps
) -> None:
    order_id = new_id("ORDER#crash-")
    item = await crashing_release(stack, taps, order_id)
    requeued = await metric(
        stack, "inventory", HANDLED, queue="inventory.commands", type="ReleaseInventory", outcome="requeued"
    )
    started = time.monotonic()
    await throw(channel, item)

    letter = (await taps.dead_letters.wait_for([item.message_id], timeout=60))[item.message_id]
    elapsed = time.monotonic() - started
    # The broker dead-lettered it (x-death), not the consumer (which would have set x-death-kind).
    assert "x-death-kind" not in letter.headers, letter.headers
    deaths = letter.headers.get("x-death") or []
    assert deaths and deaths[0].get("reason") == "delivery_limit", letter.headers
    assert deaths[0].get("queue") == "inventory.commands", letter.headers
    assert letter.routing_key == "inventory.commands"

    async def all_counted() -> float:
        now = await metric(
            stack, "inventory", HANDLED, queue="inventory.commands", type="ReleaseInventory", outcome="requeued"
        )
        return now - requeued if now - requeued >= DELIVERY_LIMIT else 0

    attempts = await eventually(all_counted, timeout=10, what="the requeued deliveries counted")
    # Bounded: the first delivery and DELIVERY_LIMIT redeliveries, no more.
    assert DELIVERY_LIMIT <= attempts <= DELIVERY_LIMIT + 1, attempts
    assert item.message_id not in taps.replies.seen, "a crashing handler must not answer"
    assert not await handled_ids(stack, "inventory", [item.message_id])
    print(f"\ncrash loop: {attempts:.0f} deliveries requeued, dead-lettered by the broker after {elapsed:.1f}s")
    await valid_message_is_handled(stack, channel, taps, TARGETS["inventory.commands"])


async def test_a_command_without_reply_to_is_dead_lettered_before_it_has_effects(
    stack: Stack, channel, taps: Taps
) -> None:
    """A command nobody can be answered for is unreadable (a bad envelope), like one without a type: it must be
    dead-lettered with a documented kind before its handler runs, not after it charged a card."""
    target = TARGETS["payment.commands"]
    order_id = new_id("ORDER#no-reply-to-")
    item = Throw(
        target=target,
        body=_doc(target.payload(order_id)),
        message_type=target.message_type,
        correlation_id=order_id,
        reply_to=None,
    )
    await throw(channel, item)
    letter = (await taps.dead_letters.wait_for([item.message_id]))[item.message_id]
    charges = await charges_per_order(stack, [order_id])
    kind, reason = letter.headers.get("x-death-kind"), letter.headers.get("x-death-reason", "")
    problems = []
    if kind != "bad_envelope" or "reply-to" not in reason:
        problems.append(f"dead-lettered with kind {kind!r}, reason {reason!r}")
    if charges[order_id]:
        problems.append(f"handled before it was dead-lettered: {charges[order_id]} card charge(s) at Stripe")
    assert not problems, "; ".join(problems)


async def test_an_order_request_the_database_cannot_store_is_rejected(stack: Stack, channel, taps: Taps) -> None:
    """An OrderRequested with a NUL character (valid JSON, and pydantic accepts it) can never be handled: the
    saga's row cannot hold it. The client must hear order.rejected, as for any invalid request; a request
    dead-lettered silently by the broker's delivery limit leaves the client waiting forever."""
    order_id = new_id("ORDER#nul-")
    body = order_body(order_id, [("sku-with-\u0000-nul", 1)])
    item = Throw(target=TARGETS["orchestrator.order-requests"], body=_doc(body), message_type=None)
    await throw(channel, item)

    letter = (await taps.dead_letters.wait_for([item.message_id], timeout=60))[item.message_id]
    assert letter.routing_key == "orchestrator.order-requests"
    try:
        rejected = (await taps.rejections.wait_for([item.message_id], timeout=10))[item.message_id]
    except AssertionError:
        how = f"x-death-kind {letter.headers['x-death-kind']!r}" if "x-death-kind" in letter.headers else "the broker"
        raise AssertionError(f"dead-lettered by {how}, but no order.rejected was published") from None
    assert json.loads(rejected.body)["orderId"] == order_id


# -- property-based: generated malformed messages at every consumer -------------------------------
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
#: What AMQP headers can carry, for the envelope's headers (x-attempt, x-schema-version, ...).
HEADER_VALUES = (
    st.integers(-(2**31), 2**31)
    | st.text(max_size=20)
    # What the client library encodes (a 32-bit float field) and RabbitMQ accepts (no NaN or infinity).
    | st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.lists(st.integers(0, 9), max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9), max_size=2)
)
WEIRD = (
    st.sampled_from([0, -1, -(10**9), 10**12, 1.5, True, "2", "", None, [], {}, "x" * 5000])
    | st.text(max_size=300)
    | JSON_VALUES
)
PLACEHOLDER = "ORDER#hyp"
#: Printable ASCII: what surrounds a generated control character, so it is the only thing wrong.
PRINTABLE_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _replace(value: Any, path: tuple, new: Any, *, drop: bool = False) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if drop and not rest:
            return {k: v for k, v in value.items() if k != head}
        return {k: _replace(v, rest, new, drop=drop) if k == head else v for k, v in value.items()}
    if drop and not rest:
        return [v for i, v in enumerate(value) if i != head]
    return [_replace(v, rest, new, drop=drop) if i == head else v for i, v in enumerate(value)]


def _leaves(doc: Any, kind: type) -> list[tuple]:
    return [p for p in _paths(doc) if isinstance(_get(doc, p), kind) and not isinstance(_get(doc, p), bool)]


def _get(doc: Any, path: tuple) -> Any:
    for step in path:
        doc = doc[step]
    return doc


NUMBERS = st.sampled_from([0, -1, 1, 2, 10_000, 10_001, 10**9, 0.5, 1e308, -0.0]) | st.integers() | st.floats()


@st.composite
def mutated_payload(draw: st.DrawFn, target: QueueTarget) -> bytes:
    """The target's valid payload with one to three mutations: a field dropped, an extra field, a value of the
    wrong type, a huge or arbitrary unicode string (which may still be valid), a zero, negative or absurd number."""
    doc: Any = target.payload(PLACEHOLDER)
    for _ in range(draw(st.integers(1, 2))):
        action = draw(
            st.sampled_from(["drop", "extra", "retype", "retext", "retext", "retext", "number", "number", "huge"])
        )
        paths, texts, numbers = _paths(doc), _leaves(doc, str), _leaves(doc, int | float)
        if action == "drop" and paths:
            doc = _replace(doc, draw(st.sampled_from(paths)), None, drop=True)
        elif action == "retype" and paths:
            doc = _replace(doc, draw(st.sampled_from(paths)), draw(WEIRD))
        elif action == "retext" and texts:
            doc = _replace(doc, draw(st.sampled_from(texts)), draw(st.text(min_size=1, max_size=150)))
        elif action == "number" and numbers:
            doc = _replace(doc, draw(st.sampled_from(numbers)), draw(NUMBERS))
        elif action == "huge" and texts:
            doc = _replace(doc, draw(st.sampled_from(texts)), "x" * draw(st.sampled_from([201, 5_000, 70_000])))
        elif isinstance(doc, dict):
            doc = {**doc, draw(st.text(max_size=12)): draw(JSON_VALUES)}
    return json.dumps(doc).encode()


@st.composite
def malformed(draw: st.DrawFn) -> tuple[QueueTarget, bytes, str | None, dict[str, Any], bool]:
    """A message for some consumer queue: random bytes, random JSON or a mutated valid payload, mostly under the
    queue's own message type, sometimes with envelope headers of any AMQP type."""
    target = draw(st.sampled_from(list(TARGETS.values())))
    body = draw(
        st.one_of(
            st.binary(max_size=200),
            JSON_VALUES.map(lambda v: json.dumps(v).encode()),
            mutated_payload(target),
            mutated_payload(target),
            mutated_payload(target),
        )
    )
    which = draw(st.sampled_from(["own"] * 6 + ["none", "known", "random"]))
    message_type = {
        "own": lambda: target.message_type,
        "none": lambda: None,
        "known": lambda: draw(st.sampled_from(["CommandFailed", *(t.message_type for t in TARGETS.values())])),
        "random": lambda: draw(st.text(max_size=30)),
    }[which]()
    header_names = st.sampled_from(["x-schema-version", "x-attempt", "x-causation-id", "x-occurred-at", "x-other"])
    headers = draw(st.just({}) | st.just({}) | st.dictionaries(header_names, HEADER_VALUES, max_size=2))
    with_reply_to = draw(st.sampled_from([True, True, True, False])) if target.is_command else False
    return target, body, message_type or None, headers, with_reply_to


@dataclass
class Tally:
    thrown: int = 0
    dead_lettered: int = 0
    handled: int = 0
    by_kind: Counter = field(default_factory=Counter)
    orders: list[str] = field(default_factory=list)


async def fate_of(stack: Stack, taps: Taps, item: Throw) -> tuple[bool, bool]:
    """(dead-lettered, handled) of one message, once it has one."""
    dead = item.message_id in taps.dead_letters.seen
    handled = bool(await handled_ids(stack, item.target.service, [item.message_id]))
    return dead, handled


async def throw_batch(stack: Stack, channel, taps: Taps, batch: list[tuple], sku: str, tally: Tally) -> None:
    items = []
    for target, body, message_type, headers, with_reply_to in batch:
        order_id = new_id("ORDER#hyp-")
        headers = {"x-causation-id": f"cmd-{uuid.uuid4().hex}", **headers} if not target.is_command else headers
        items.append(
            Throw(
                target=target,
                body=body.replace(PLACEHOLDER.encode(), order_id.encode()),
                message_type=message_type,
                headers=headers,
                correlation_id=order_id,
                reply_to=taps.reply_key if with_reply_to else None,
            )
        )
    for item in items:
        await throw(channel, item)
    # A well-formed order among the malformed messages.
    order_id = new_id()
    tally.orders.append(order_id)
    await publish_orders(channel, [order_body(order_id, [(sku, 1)])])
    tally.thrown += len(items)

    for item in items:

        async def settled(item: Throw = item) -> tuple[bool, bool] | None:
            dead, handled = await fate_of(stack, taps, item)
            return (dead, handled) if dead or handled else None

        dead, handled = await eventually(
            settled, timeout=10, interval=0.05, what=f"{item} to be dead-lettered or handled"
        )
        # Let a late second fate show, then check there is exactly one.
        assert (dead, handled) != (True, True), f"both dead-lettered and handled: {item}"
        if dead:
            tally.dead_lettered += 1
            letter = taps.dead_letters.seen[item.message_id][0]
            kind = letter.headers.get("x-death-kind")
            tally.by_kind[kind or "broker: delivery limit"] += 1
            assert kind is None or kind in DOCUMENTED_KINDS, f"undocumented x-death-kind {kind!r} for {item}"
            if item.target.queue == "orchestrator.order-requests":
                # An OrderRequested that cannot start is answered: order.rejected, caused by this message.
                await taps.rejections.wait_for([item.message_id], timeout=10)
        else:
            tally.handled += 1
            tally.by_kind["handled"] += 1
            if item.target.is_command and item.reply_to:
                # A command that was handled is answered (a success or CommandFailed).
                await taps.replies.wait_for([item.message_id], timeout=30)


async def test_generated_malformed_messages_are_dead_lettered_or_handled_and_orders_still_complete(
    stack: Stack, channel, taps: Taps
) -> None:
    sku = new_id("sku-")
    await seed(stack, {sku: (1000, "1.00")})
    loop = asyncio.get_running_loop()
    tally = Tally()
    started = time.monotonic()

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        # Each example runs against the real stack; a failing one is reported as found, not shrunk for minutes.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(batch=st.lists(malformed(), min_size=1, max_size=5))
    def barrage(batch: list[tuple]) -> None:
        future = asyncio.run_coroutine_threadsafe(throw_batch(stack, channel, taps, batch, sku, tally), loop)
        future.result(timeout=120)

    # Hypothesis drives synchronously: it runs in a thread and hands each batch to this event loop.
    await asyncio.to_thread(barrage)

    statuses = await wait_terminal(stack, tally.orders, timeout=90)
    assert set(statuses.values()) == {"CONFIRMED"}, Counter(statuses.values())
    # No message lost: each one thrown ended dead-lettered or handled, and not both.
    assert tally.thrown == tally.dead_lettered + tally.handled
    print(
        f"\nhypothesis: {tally.thrown} malformed messages in {time.monotonic() - started:.1f}s: "
        f"{tally.dead_lettered} dead-lettered, {tally.handled} handled; by kind {dict(tally.by_kind)}; "
        f"{len(tally.orders)} well-formed orders all CONFIRMED"
    )


async def test_an_order_id_that_cannot_be_a_correlation_id_is_rejected_and_the_next_order_confirmed(
    stack: Stack, channel, listener
) -> None:
    """Issue 14: 150 'é' are 300 bytes of UTF-8, and no AMQP short string (a correlation id) holds more than 255.
    Such a request used to start a saga whose every command was unpublishable, and its client heard nothing.
    Now the edge refuses it, and the rejection itself, which cannot be correlated by that orderId, still goes
    out: correlated by a digest of it, carrying it as sent. An order published right after is served."""
    heard: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind("orders", "order.rejected")

    async def hear(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        causation = (message.headers or {}).get("x-causation-id")
        heard[causation.decode() if isinstance(causation, bytes) else str(causation)] = message

    await queue.consume(hear, no_ack=True)
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "2.00")})

    order_id = "é" * 150
    request_id = f"request-{uuid.uuid4().hex}"
    await publish_raw(channel, _doc(order_body(order_id, [(sku, 1)])), message_id=request_id)
    rejected = await eventually(lambda: _async(heard.get(request_id)), timeout=30, what="order.rejected")
    body = json.loads(rejected.body)
    assert body["orderId"] == order_id, body
    assert any(r.startswith("schema:") and "orderId" in r for r in body["reasons"]), body
    assert rejected.correlation_id == "invalid:" + hashlib.sha256(order_id.encode()).hexdigest()

    after = new_id()
    await publish_raw(channel, _doc(order_body(after, [(sku, 1)])))
    assert (await outcome_of(listener, after))["status"] == "CONFIRMED"
    conn = await db(stack.settings, "orchestrator")
    try:
        assert await conn.fetchval("SELECT count(*) FROM saga WHERE order_id = $1", order_id) == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox_parked") == 0, "nothing unpublishable was written"
    finally:
        await conn.close()


async def _async(value: Any) -> Any:
    return value


# -- property-based: control characters in every field that can reach a header (issue 15, item 5) ---------------
#: The envelope's properties and header, by where a publisher sets them; the reason names them so.
ENVELOPE_FIELDS = {
    "message_id": "message-id",
    "correlation_id": "correlation-id",
    "type": "type",
    "reply_to": "reply-to",
    HEADER_CAUSATION: HEADER_CAUSATION,
}
HEADER_SAFE = re.compile(HEADER_SAFE_PATTERN)


def header_fields(target: QueueTarget) -> list[tuple[str, Any]]:
    """("payload", path) for each header-bound payload field, ("envelope", name) for each envelope field."""
    payload = [("payload", path) for path in header_bound_paths(target.message_type, target.payload(PLACEHOLDER))]
    envelope = [name for name in ENVELOPE_FIELDS if name != "reply_to" or target.is_command]
    return payload + [("envelope", name) for name in envelope]


FIELDS = [(target, where, which) for target in TARGETS.values() for where, which in header_fields(target)]


@dataclass(frozen=True)
class ControlCase:
    item: Throw
    where: str
    names: str  # what the reason must name
    order_id: str


def control_case(
    target: QueueTarget, where: str, which: Any, poison: tuple[str, str, str], reply_key: str
) -> ControlCase:
    order_id = new_id("ORDER#ctl-")
    body = target.payload(order_id)
    fields: dict[str, Any] = {
        "message_type": None if target.queue == "orchestrator.order-requests" else target.message_type,
        "correlation_id": order_id,
        "reply_to": reply_key if target.is_command else None,
        "headers": {} if target.is_command else {HEADER_CAUSATION: f"cmd-{uuid.uuid4().hex}"},
        "message_id": f"thrown-{uuid.uuid4().hex}",
    }
    if where == "payload":
        body = with_value(body, which, poisoned(value_at(body, which), *poison))
        names = ".".join(map(str, which))
    elif which == HEADER_CAUSATION:
        fields["headers"] = {HEADER_CAUSATION: poisoned(f"cmd-{uuid.uuid4().hex}", *poison)}
        names = ENVELOPE_FIELDS[which]
    else:
        attribute = "message_type" if which == "type" else which
        fields[attribute] = poisoned(fields[attribute] or target.message_type, *poison)
        names = ENVELOPE_FIELDS[which]
    return ControlCase(Throw(target=target, body=_doc(body), **fields), where, names, order_id)


def rejection_key(message_id: str) -> str:
    """The x-causation-id of the order.rejected answering a request with this message id."""
    if HEADER_SAFE.fullmatch(message_id):
        return message_id
    return "invalid:" + hashlib.sha256(message_id.encode()).hexdigest()


async def check_refused(stack: Stack, taps: Taps, case: ControlCase) -> list[str]:
    """What is wrong with how the edge treated one case (nothing, when it was refused as it must be)."""
    item, problems = case.item, []
    letter = (await taps.dead_letters.wait_for([item.message_id], timeout=15))[item.message_id]
    kind, reason = letter.headers.get("x-death-kind"), letter.headers.get("x-death-reason", "")
    if kind != ("schema" if case.where == "payload" else "bad_envelope") or case.names not in reason:
        problems.append(f"dead-lettered as {kind!r} with reason {reason!r}")
    if not HEADER_SAFE.fullmatch(reason):
        problems.append(f"x-death-reason holds a control character: {reason!r}")
    if "\x00" not in item.message_id and await handled_ids(stack, item.target.service, [item.message_id]):
        problems.append("handled although refused")
    if item.target.queue == "orchestrator.order-requests":
        key = rejection_key(item.message_id)
        rejected = (await taps.rejections.wait_for([key], timeout=15))[key]
        if not json.loads(rejected.body)["reasons"]:
            problems.append("order.rejected without a reason")
        if await sagas_started(stack, [case.order_id]):
            problems.append("a saga started")
    if item.message_id in taps.replies.seen:
        problems.append("a command was answered although refused")
    return [f"{item!r}: {p}" for p in problems]


async def test_generated_control_characters_in_every_header_bound_field_are_refused_at_the_edge(
    stack: Stack, channel, taps: Taps, listener
) -> None:
    """Each example puts a generated control character (C0, DEL, C1, U+2028/2029, with text around it) into every
    field that can reach a header, one message per field, across every consumer queue."""
    loop = asyncio.get_running_loop()
    thrown: list[int] = []

    async def barrage(poisons: list[tuple[str, str, str]]) -> None:
        cases = [
            control_case(target, where, which, poison, taps.reply_key)
            for (target, where, which), poison in zip(FIELDS, poisons, strict=True)
        ]
        for case in cases:
            await throw(channel, case.item)
        problems = []
        for case in cases:  # one at a time: each check opens database connections, and the server is shared
            problems += await check_refused(stack, taps, case)
        assert not problems, "\n".join(problems)
        thrown.append(len(cases))

    poison = st.tuples(
        st.text(PRINTABLE_CHARS, max_size=6), st.sampled_from(FORBIDDEN), st.text(PRINTABLE_CHARS, max_size=6)
    )

    @settings(
        max_examples=6,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(poisons=st.lists(poison, min_size=len(FIELDS), max_size=len(FIELDS)))
    def run(poisons: list[tuple[str, str, str]]) -> None:
        asyncio.run_coroutine_threadsafe(barrage(poisons), loop).result(timeout=120)

    await asyncio.to_thread(run)
    sku = new_id("sku-")
    await seed(stack, {sku: (5, "2.00")})
    after = new_id()
    await publish_orders(channel, [order_body(after, [(sku, 1)])])
    assert (await outcome_of(listener, after))["status"] == "CONFIRMED"
    print(f"\ncontrol characters: {sum(thrown)} messages over {len(FIELDS)} header-bound fields, all refused")
