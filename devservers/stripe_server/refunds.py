"""Refunds, with Stripe's limits on what may still be refunded.

Compensation steps in a saga typically refund on retry, so the distinct
``charge_already_refunded`` / ``amount_too_large`` codes matter: client code
branches on them to tell "already compensated" from a real failure.
"""

from __future__ import annotations

from typing import Any

from .errors import invalid
from .forms import to_enum, to_int, to_str_map
from .store import Obj, Store, money, new_id, now

REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def create_refund(store: Store, params: dict[str, Any]) -> Obj:
    """POST /v1/refunds against ``charge`` or ``payment_intent``."""
    amount = to_int(params, "amount", positive=True)
    reason = to_enum(params, "reason", REASONS)
    metadata = to_str_map(params, "metadata")
    if params.get("charge"):
        charge = store.get("ch", str(params["charge"]), param="charge")
    elif params.get("payment_intent"):
        pi = store.get("pi", str(params["payment_intent"]), param="payment_intent")
        latest = store.charges.get(pi["latest_charge"] or "")
        if latest is None or latest["status"] != "succeeded" or not latest["captured"]:
            raise invalid(
                f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.",
                cacheable=True,
            )
        charge = latest
    else:
        raise invalid("One of the following params should be provided for this request: payment_intent or charge.")

    if charge["status"] != "succeeded" or not charge["captured"]:
        raise invalid(
            f"Charge {charge['id']} has not been captured successfully and cannot be refunded.",
            cacheable=True,
        )
    remaining = charge["amount_captured"] - charge["amount_refunded"]
    if remaining <= 0:
        raise invalid(
            f"Charge {charge['id']} has already been refunded.",
            code="charge_already_refunded",
            cacheable=True,
        )
    amount = remaining if amount is None else amount
    if amount > remaining:
        what = "charge amount" if charge["amount_refunded"] == 0 else "unrefunded amount on charge"
        raise invalid(
            f"Refund amount ({money(amount, charge['currency'])}) is greater than {what} "
            f"({money(remaining, charge['currency'])})",
            param="amount",
            code="amount_too_large",
            cacheable=True,
        )

    refund: Obj = {
        "id": new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "charge": charge["id"],
        "created": now(),
        "currency": charge["currency"],
        "destination_details": {"card": {"type": "refund"}, "type": "card"},
        "metadata": metadata,
        "payment_intent": charge["payment_intent"],
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
    store.refunds[refund["id"]] = refund
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    store.emit("refund.created", refund)
    store.emit("charge.refunded", charge)
    return refund
