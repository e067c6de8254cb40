"""Which sagas a manual refund may touch, how much it may give back, and what its reply means. Pure: the API
(orchestrator/api_refund.py) and the runner's reply path (orchestrator/manual_actions.py) decide by these.

The saga's own records give the fast answer; the truth is Stripe's: the payment service refuses a refund above
what the charge still holds (RefundExceedsCharge) however the orchestrator's view came to differ from it.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: Statuses a manual refund may act on: sagas that ended. A RUNNING saga may still refund through its own
#: compensation, and a FAILED_CRITICAL one has a compensation to finish: a redrive refunds it, and a manual
#: refund before that would leave its RefundPayment asking for more than remains.
REFUNDABLE_STATUSES = frozenset({"CONFIRMED", "CANCELLED", "FAILED", "FAILED_COMPENSATED"})
#: Error names of refused refunds, in the history's ManualRefundFailed entries and the API's problems.
REFUND_EXCEEDS_CHARGE = "RefundExceedsCharge"
NO_CHARGE = "NoChargeToRefund"
#: The keys of a PaymentRefunded reply as a step's result holds it.
_REFUND_RESULT_KEYS = frozenset({"refunded", "refundId", "amount", "alreadyRefunded"})
CENT = Decimal("0.01")


class NotRefundable(Exception):
    """The saga's state allows no manual refund (409); ``error`` names why when it is about the money."""

    def __init__(self, reason: str, *, status: str, error: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error


class RefundTooLarge(Exception):
    """The amount asked is more than the charge still holds (422)."""

    def __init__(self, *, asked: Decimal, remaining: Decimal, currency: str) -> None:
        super().__init__(
            f"{asked} {currency.upper()} is more than remains to refund ({remaining} {currency.upper()}); "
            "nothing was sent"
        )
        self.asked, self.remaining = asked, remaining


@dataclass(frozen=True)
class Charge:
    """What the saga's payment step charged."""

    amount: Decimal
    currency: str
    paymentIntentId: str | None


@dataclass(frozen=True)
class RefundPlan:
    charge: Charge
    #: What remained before this refund: the charge less the workflow's refunds and the manual ones.
    remaining: Decimal
    #: What to put in RefundPayment.amount: None for a full refund, so Stripe gives back exactly what is left.
    send: Decimal | None
    #: What this refund holds against the charge until its reply comes.
    holds: Decimal


def charge_of(state: dict[str, Any]) -> Charge | None:
    """The payment the saga's ProcessPayment step recorded ($.payment), if it succeeded."""
    data = state.get("main", {}).get("data")
    payment = data.get("payment") if isinstance(data, dict) else None
    if not isinstance(payment, dict) or payment.get("status") != "succeeded" or payment.get("amount") is None:
        return None
    inventory = data.get("inventory") if isinstance(data.get("inventory"), dict) else {}
    return Charge(
        amount=Decimal(str(payment["amount"])).quantize(CENT),
        currency=str(inventory.get("currency") or data.get("currency") or ""),
        paymentIntentId=payment.get("paymentIntentId"),
    )


def _refund_results(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if _REFUND_RESULT_KEYS == set(value):
            yield value
            return
        for item in value.values():
            yield from _refund_results(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refund_results(item)


def refunded_by_workflow(state: dict[str, Any], charge: Charge) -> Decimal:
    """What the workflow's own RefundPayment steps gave back, wherever their ResultPath put the reply (a
    compensation's branch output, a cancellation's step): an 'already refunded' answer counts as all of it."""
    total = Decimal(0)
    for result in _refund_results(state.get("main", {}).get("data")):
        if not result.get("refunded"):
            continue
        if result.get("alreadyRefunded") or result.get("amount") is None:
            return charge.amount
        total += Decimal(str(result["amount"]))
    return min(total, charge.amount)


def plan(
    status: str, state: dict[str, Any], *, asked: Decimal | None, held: Decimal, cancellation: str | None = None
) -> RefundPlan:
    """The refund to send for ``asked`` (None: all that remains), given ``held``, what earlier manual refunds
    of this saga hold (pending or done), and ``cancellation``, the status of the order's cancellation saga if it
    has one; NotRefundable or RefundTooLarge when there is none to send."""
    if cancellation is not None:
        raise NotRefundable(
            f"the order has a cancellation ({cancellation}): the cancellation refunds what was charged",
            status=status,
        )
    if status == "RUNNING":
        raise NotRefundable("the saga is still running: refund it once it has ended", status=status)
    if status == "FAILED_CRITICAL":
        raise NotRefundable(
            f"the saga is {status}: its compensation has to finish first (redrive it; its RefundPayment refunds "
            "what was charged)",
            status=status,
        )
    if status not in REFUNDABLE_STATUSES:
        raise NotRefundable(
            f"the saga is {status}: manual refunds are for order sagas that ended "
            f"({', '.join(sorted(REFUNDABLE_STATUSES))})",
            status=status,
        )
    charge = charge_of(state)
    if charge is None:
        raise NotRefundable(
            "nothing was charged for this order: its payment never succeeded", status=status, error=NO_CHARGE
        )
    remaining = charge.amount - refunded_by_workflow(state, charge) - held
    if remaining <= 0:
        raise NotRefundable(
            f"nothing is left to refund: the {charge.amount} {charge.currency.upper()} charged is refunded "
            "(or a refund of it is on its way)",
            status=status,
            error=REFUND_EXCEEDS_CHARGE,
        )
    if asked is None:
        return RefundPlan(charge=charge, remaining=remaining, send=None, holds=remaining)
    if asked > remaining:
        raise RefundTooLarge(asked=asked, remaining=remaining, currency=charge.currency)
    return RefundPlan(charge=charge, remaining=remaining, send=asked, holds=asked)


@dataclass(frozen=True)
class Settled:
    """How a manual refund ended, from its reply."""

    succeeded: bool
    amount: Decimal | None = None
    refundId: str | None = None
    error: str | None = None
    cause: str | None = None


def settled(ok: bool, result: dict[str, Any] | None, error: str | None, cause: str | None) -> Settled:
    """A reply's meaning for a manual refund. A PaymentRefunded that moved no money is a failure here: for a
    compensation 'already refunded' is success (idempotent), but customer service asked for money back."""
    if not ok:
        return Settled(succeeded=False, error=error or "States.TaskFailed", cause=cause)
    result = result or {}
    if result.get("alreadyRefunded"):
        return Settled(
            succeeded=False,
            error=REFUND_EXCEEDS_CHARGE,
            cause="the charge was already refunded in full; no money moved",
        )
    if not result.get("refunded"):
        return Settled(succeeded=False, error=NO_CHARGE, cause="the payment service found no charge to refund")
    amount = result.get("amount")
    return Settled(
        succeeded=True,
        amount=None if amount is None else Decimal(str(amount)).quantize(CENT),
        refundId=result.get("refundId"),
    )
