"""The invariants, one small function each, registered in ``RULES`` with a name; the docstring says what it checks."""

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from functools import wraps
from typing import Any

from orchestrator.state import RUNNING
from orderctl.checker.model import (
    CANCELLATION_ENDS,
    CANCELLED_BY_CUSTOMER,
    CONFIRMED,
    FAILED_CRITICAL,
    INTENT_OPEN,
    REFUND_COUNTED,
    Snapshot,
)
from services.payment.money import to_minor

#: A rule yields (order id or None, what is wrong) for each violation it finds.
Rule = Callable[[Snapshot], Iterator[tuple[str | None, str]]]
#: Every rule, in the order they run: (name, function); the function's docstring says what it checks.
RULES: list[tuple[str, Rule]] = []
#: The rules that read the payment provider: they find nothing when it was not read (the report says so).
PROVIDER_RULES: list[str] = []


def rule(name: str, *, provider: bool = False) -> Callable[[Rule], Rule]:
    """Register a rule; a ``provider`` rule runs only when the provider was read (no intents is a finding)."""

    def register(fn: Rule) -> Rule:
        if provider:
            PROVIDER_RULES.append(name)

            @wraps(fn)
            def when_read(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
                return fn(snap) if snap.provider is not None else iter(())

            RULES.append((name, when_read))
        else:
            RULES.append((name, fn))
        return fn

    return register


@rule("terminal-status")
def terminal_status(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every saga ends in exactly one terminal status of the workflow, and its history agrees.

    RUNNING is allowed only with ``allow_running``. An ended saga's last ExecutionSucceeded or
    ExecutionFailed names its status, with no ExecutionRedriven after it."""
    for order_id, saga in snap.sagas.items():
        if saga.status == RUNNING:
            if not snap.allow_running:
                yield order_id, f"still RUNNING{saga.moved}"
            continue
        if saga.status not in snap.terminal:
            yield order_id, f"status {saga.status!r} is not a terminal status"
            continue
        ends = [(event, detail) for event, _, _, detail in saga.history if event.startswith("Execution")]
        last = ends[-1] if ends else None
        if last is None or last[0] == "ExecutionRedriven":
            yield order_id, f"status {saga.status} but its history has not ended"
        elif (last[1] or {}).get("status") != saga.status:
            yield order_id, f"status {saga.status} but history ended {(last[1] or {}).get('status')}"


@rule("single-charge", provider=True)
def single_charge(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """No order charged more than once: the payment provider holds at most one PaymentIntent per ended
    order (found by metadata orderId), since one idempotency key creates it. A PaymentIntent itself
    succeeds at most once."""
    for order_id, _ in snap.settled():
        intents = snap.intents(order_id)
        if len(intents) > 1:
            yield order_id, f"{len(intents)} PaymentIntents: " + "; ".join(i.describe() for i in intents)


@rule("refunds-within-charge")
def refunds_within_charge(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Refunds never exceed what was charged: in our ledger (refund rows against the payment row)
    and at the payment provider (each PaymentIntent's refunds, pending ones too, against what it received)."""
    for order_id in sorted(set(snap.payments) | set(snap.refunds)):
        taken, refunded = snap.taken(order_id), snap.refunded(order_id)
        if refunded > taken:
            yield order_id, f"refunded {refunded} of {taken} charged (minor units)"
    for order_id, intents in sorted((snap.provider or {}).items()):
        for intent in intents:
            counted = sum(r.amount for r in intent.refunds if r.status in REFUND_COUNTED)
            if counted > intent.amount_received:
                yield order_id, f"{intent.id} refunded {counted} of {intent.amount_received} received"


@rule("money-iff-confirmed")
def money_iff_confirmed(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Money taken minus refunded is positive exactly for CONFIRMED orders, by our ledger (payment
    status 'succeeded' less refunds; the provider-* rules judge the provider's side). FAILED_CRITICAL
    orders are exempt: their refund is the compensation that did not finish, waiting for a redrive. An order
    cancelled by its customer keeps nothing; one whose cancellation runs or failed is exempt likewise. A
    CONFIRMED order customer service refunded by hand may keep nothing."""
    for order_id, saga in snap.settled():
        status = saga.judged()
        if status is None or status == FAILED_CRITICAL:
            continue
        net = snap.net(order_id)
        if status == CONFIRMED and net <= 0 and not saga.refunded_by_hand:
            yield order_id, f"CONFIRMED but {net} kept (minor units)"
        elif status != CONFIRMED and net > 0:
            yield order_id, f"{status} but {net} kept (minor units)"


@rule("provider-money-returned", provider=True)
def provider_money_returned(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """No money kept for an order that is not CONFIRMED: at the payment provider, every PaymentIntent of an
    ended, not CONFIRMED order that received money is refunded in full (succeeded refunds equal to the
    amount received). FAILED_CRITICAL orders are exempt, as in money-iff-confirmed."""
    for order_id, saga in snap.settled():
        status = saga.judged()
        if status in (None, CONFIRMED, FAILED_CRITICAL):
            continue
        for intent in snap.intents(order_id):
            if intent.kept > 0:
                yield order_id, f"{status} but {intent.kept} kept: {intent.describe()}"


@rule("provider-intent-open", provider=True)
def provider_intent_open(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """No PaymentIntent of an ended order can still take money: none is requires_capture (an
    authorization), requires_confirmation, requires_action or processing. Canceled and declined
    (requires_payment_method) intents take nothing. FAILED_CRITICAL orders are exempt."""
    for order_id, saga in snap.settled():
        if saga.status == FAILED_CRITICAL:
            continue
        for intent in snap.intents(order_id):
            if intent.status in INTENT_OPEN:
                yield order_id, f"{saga.status} with an open PaymentIntent: {intent.describe()}"


@rule("provider-charge", provider=True)
def provider_charge(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """A CONFIRMED order has exactly one succeeded, unrefunded PaymentIntent at the payment provider, of
    the saga's priced amount ($.inventory.amount in minor units) and currency. A cancelled order is not
    CONFIRMED any more (provider-money-returned judges it). One customer service refunded by hand may be
    refunded in part or in full: its one succeeded PaymentIntent is its charge."""
    for order_id, saga in snap.settled():
        if saga.judged() != CONFIRMED:
            continue
        intents = snap.intents(order_id)
        by_hand = saga.refunded_by_hand
        standing = [i for i in intents if i.status == "succeeded" and (i.kept > 0 or by_hand)]
        if len(standing) != 1:
            found = "; ".join(i.describe() for i in intents) or "no PaymentIntent"
            yield order_id, f"CONFIRMED with {len(standing)} standing charges: {found}"
            continue
        intent = standing[0]
        if intent.refunded and not by_hand:
            yield order_id, f"CONFIRMED but partly refunded: {intent.describe()}"
        if saga.amount_minor is None:
            yield order_id, "CONFIRMED but the saga holds no priced amount ($.inventory.amount)"
        elif (intent.amount_received, intent.currency) != (saga.amount_minor, saga.currency):
            expected = f"{saga.amount_minor} {saga.currency}"
            yield order_id, f"CONFIRMED, priced {expected}, charged {intent.amount_received} {intent.currency}"


@rule("stock-never-negative")
def stock_never_negative(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """No product's stock is below zero."""
    for product_id, p in snap.products.items():
        if p["stock"] < 0:
            yield None, f"{product_id}: stock {p['stock']}"


@rule("stock-balance")
def stock_balance(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Stock plus active and committed reservations equals the stock put in (product.received,
    kept by the trigger of services/inventory/migrations/0002_stock_ledger.sql)."""
    for product_id, p in snap.products.items():
        held = p["active"] + p["committed"]
        if p["stock"] + held != p["received"]:
            detail = f"{product_id}: stock {p['stock']} + reserved {held} != received {p['received']}"
            yield None, detail


@rule("reservation-settled")
def reservation_settled(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """An ended order holds no active reservation: a CONFIRMED one has its reservation committed
        (active is allowed while running: the commit follows order.confirmed) and none released (sold stock
        back on sale), any other has none active or committed (FAILED_CRITICAL may keep an active one: its
        release did not finish). No product is held by two reservations of one order (an order holds one reservation,
    or one per line when its definition reserves line by line). An order cancelled by its
        customer holds none (its sold stock restocked); one whose cancellation runs or failed is not judged."""
    for order_id, saga in snap.settled():
        status = saga.judged()
        if status is None:
            continue
        statuses = Counter(snap.reservations.get(order_id, []))
        for product_id, holds in sorted(snap.double_holds.get(order_id, {}).items()):
            yield order_id, f"{holds} reservations hold {product_id}"
        if status == CONFIRMED:
            if statuses["released"]:
                yield order_id, f"CONFIRMED with {statuses['released']} released reservation(s)"
            if statuses["committed"] or (statuses["active"] and snap.allow_running):
                continue
            found = ", ".join(sorted(statuses.elements())) or "none"
            yield order_id, f"CONFIRMED without a committed reservation ({found})"
        elif statuses["committed"] or (statuses["active"] and status != FAILED_CRITICAL):
            found = ", ".join(s for s in ("active", "committed") if statuses[s])
            yield order_id, f"{status} with a reservation {found}"


@rule("compensations-finished")
def compensations_finished(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every compensation that started (a Task marked Compensation was scheduled) succeeded in the
    end, or its order is FAILED_CRITICAL. Read from saga_history, per lane and state."""
    for order_id, saga in snap.settled():
        if saga.status == FAILED_CRITICAL:
            continue
        last: dict[tuple[str, str | None], str] = {}
        for event, lane, state, _ in saga.history:
            if event in ("TaskScheduled", "TaskSucceeded"):
                last[(lane, state)] = event
        for (lane, state), event in sorted(last.items(), key=str):
            if event == "TaskScheduled":
                yield order_id, f"{state} ({lane}) started, never succeeded"


@rule("order-record")
def order_record(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """A CONFIRMED order record exactly when the saga is CONFIRMED: every CONFIRMED order has one order
    record (its key makes it at most one), CONFIRMED too; no other ended order has a CONFIRMED record (a
    compensated order's record is VOIDED, or absent; so is a cancelled order's, and one whose cancellation
    runs or failed is not judged)."""
    for order_id, saga in snap.settled():
        record, status = snap.records.get(order_id), saga.judged()
        if status is None:
            continue
        if status == CONFIRMED and record != CONFIRMED:
            yield order_id, f"CONFIRMED but order record is {record or 'missing'}"
        elif status != CONFIRMED and record == CONFIRMED:
            yield order_id, f"{status} but its order record is CONFIRMED"


@rule("notification")
def notification(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every CONFIRMED order had one notification attempt: an email row, sent (or 'sending': an
    unknown outcome is never sent twice) unless the saga caught a notificationError, when the row
    may be failed or missing (the failure came before the notify service). Nothing is sent for an
    order that did not confirm."""
    for order_id, saga in snap.settled():
        channels = snap.notifications.get(order_id, {})
        email = channels.get("email")
        if saga.status == CONFIRMED:
            if not saga.notification_error and email not in ("sent", "sending"):
                yield order_id, f"CONFIRMED, no notificationError, email {email or 'missing'}"
        elif channels:
            yield order_id, f"{saga.status} but notified: {sorted(channels)}"


@rule("cancellation-ended")
def cancellation_ended(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """A cancellation saga is of a CONFIRMED order (CancelOrder starts none for another) and ends
    CANCELLED_BY_CUSTOMER or CANCELLATION_FAILED; RUNNING only with ``allow_running``."""
    for order_id, saga in snap.sagas.items():
        if saga.cancellation is None:
            continue
        if saga.status != CONFIRMED:
            yield order_id, f"a cancellation of a {saga.status} order"
        if saga.cancellation == RUNNING and not snap.allow_running:
            yield order_id, "its cancellation is still RUNNING"
        elif saga.cancellation != RUNNING and saga.cancellation not in CANCELLATION_ENDS:
            yield order_id, f"its cancellation ended {saga.cancellation!r}"


@rule("cancellation-effects")
def cancellation_effects(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """A CANCELLED_BY_CUSTOMER order has every effect of its cancellation, each once: its sold stock restocked
    (a reservation 'restocked'; none left active or committed is reservation-settled's, and the stock ledger's
    balance, stock-balance's, so no unit came back twice), its order record VOIDED, and the customer told (a
    cancellation email sent, or 'sending', unless the cancellation caught a notificationError). Its refund is
    judged by money-iff-confirmed, provider-money-returned and refunds-accounted. No other order has any of them:
    no restocked reservation, no cancellation notice. An order whose cancellation runs or failed is not judged:
    a CANCELLATION_FAILED keeps what it did until its redrive (the report names it as critical)."""
    for order_id, saga in snap.settled():
        status = saga.judged()
        if status is None:
            continue
        statuses = snap.reservations.get(order_id, [])
        restocked = statuses.count("restocked")
        notice = snap.cancellation_notices.get(order_id, {})
        if status != CANCELLED_BY_CUSTOMER:
            if restocked:
                yield order_id, f"{status} but {restocked} reservation(s) restocked"
            if notice:
                yield order_id, f"{status} but a cancellation notice was sent: {sorted(notice)}"
            continue
        if not restocked:
            found = ", ".join(sorted(statuses)) or "none"
            yield order_id, f"{CANCELLED_BY_CUSTOMER} but no reservation restocked ({found})"
        record = snap.records.get(order_id)
        if record not in ("VOIDED", CONFIRMED):  # a CONFIRMED record is order-record's
            yield order_id, f"{CANCELLED_BY_CUSTOMER} but its order record is {record or 'missing'}, not VOIDED"
        email = notice.get("email")
        if not saga.cancellation_notification_error and email not in ("sent", "sending"):
            yield order_id, f"{CANCELLED_BY_CUSTOMER}, no notificationError, cancellation email {email or 'missing'}"


def _amount(value: Any) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None


@rule("manual-refunds")
def manual_refunds(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Customer service's refunds, by our records (saga_manual_action; one row per Idempotency-Key, the table's
    key): each gave back at most what it asked, under a Stripe refund of its own (no two keys recorded one
    refund id), and together never more than the order was charged (the payment ledger's charge); at quiescence
    each has its outcome (a pending one's reply never came). The provider's side is refunds-accounted's."""
    for order_id, rows in sorted(snap.manual_refunds.items()):
        saga = snap.sagas.get(order_id)
        if saga is None or saga.status == RUNNING:
            continue
        keys_of: dict[str, list[str]] = defaultdict(list)
        given_total, currency = Decimal(0), None
        for row in rows:
            key, request, result = row["request_key"], row["request"] or {}, row["result"] or {}
            currency = currency or request.get("currency")
            if row["outcome"] == "pending":
                if not snap.allow_running:
                    yield order_id, f"manual refund {key!r} still pending: its reply never came"
                continue
            if row["outcome"] != "succeeded":
                continue
            given, asked = _amount(result.get("amount")) or _amount(row["amount"]), _amount(request.get("amount"))
            if given is not None and asked is not None and given > asked:
                yield order_id, f"manual refund {key!r} gave back {given}, asked {asked}"
            given_total += given or 0
            if result.get("refundId"):
                keys_of[result["refundId"]].append(key)
        for refund_id, keys in sorted(keys_of.items()):
            if len(keys) > 1:
                yield order_id, f"{refund_id} recorded by {len(keys)} Idempotency-Keys: {sorted(keys)}"
        if currency and given_total and to_minor(given_total, currency) > snap.taken(order_id):
            yield order_id, f"manual refunds gave back {given_total} {currency}, {snap.taken(order_id)} charged (minor)"


@rule("refunds-accounted", provider=True)
def refunds_accounted(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """A CONFIRMED order refunded by hand or cancelled by its customer: every refund the payment provider holds
    for it is one a request recorded as its own, a manual refund's (its Idempotency-Key's refund id) or the
    cancellation's (RefundCancelledOrder's $.refund.refundId), and every recorded one is held. A refund nobody
    recorded is a key that refunded twice, or a refund whose answer was lost and taken for a failure; a recorded
    one the provider lacks was never made. A CANCELLED_BY_CUSTOMER order received money there (what its refunds
    give back must then equal it: provider-money-returned and refunds-within-charge). A refund made outside
    Orderflow (at Stripe's dashboard: no orderId in its metadata, which the payment service always sets) is no
    request's here and not judged. Not judged while its cancellation runs or after it failed, or while a manual
    refund is pending."""
    for order_id, saga in snap.settled():
        rows = snap.manual_refunds.get(order_id, [])
        if saga.status != CONFIRMED or (not rows and saga.cancellation is None):
            continue
        if saga.judged() is None or any(r["outcome"] == "pending" for r in rows):
            continue
        recorded = {
            r["result"]["refundId"]: f"manual refund {r['request_key']!r}"
            for r in rows
            if r["outcome"] == "succeeded" and (r["result"] or {}).get("refundId")
        }
        if saga.cancellation_refund_id:
            recorded[saga.cancellation_refund_id] = "the cancellation"
        intents = snap.intents(order_id)
        held = {r.id: r for intent in intents for r in intent.refunds if r.status in REFUND_COUNTED}
        for refund_id, refund in sorted(held.items()):
            if refund_id not in recorded and refund.ours:
                yield (
                    order_id,
                    (
                        f"{refund_id} ({refund.amount}, {refund.status}) at the provider, recorded by no request: "
                        "a key refunded twice, or a refund's answer lost and taken for a failure"
                    ),
                )
        for refund_id, who in sorted(recorded.items()):
            if refund_id not in held:
                yield order_id, f"{who} recorded {refund_id}, which the provider does not hold"
        if saga.judged() == CANCELLED_BY_CUSTOMER and not any(i.amount_received for i in intents):
            yield order_id, f"{CANCELLED_BY_CUSTOMER} but the provider received nothing for it"


@rule("effects-without-saga")
def effects_without_saga(snap: Snapshot) -> Iterator[tuple[str | None, str]]:
    """Every effect (reservation, payment, refund, order record, notification) belongs to a submitted
    order: one with a saga. (The provider is read per saga, so its orphans are not seen here.) Effects all older
    than the orchestrator's saga retention are not judged: their finished saga may have been purged."""
    sources = {
        "reservation": snap.reservations,
        "payment": snap.payments,
        "refund": snap.refunds,
        "order record": snap.records,
        "notification": snap.notifications,
        "cancellation notice": snap.cancellation_notices,
    }
    orphans: dict[str, list[str]] = defaultdict(list)
    for where, orders in sources.items():
        for order_id in orders:
            if order_id not in snap.sagas and (snap.recent is None or order_id in snap.recent):
                orphans[order_id].append(where)
    for order_id, where in sorted(orphans.items()):
        yield order_id, "no saga, yet " + ", ".join(where)
