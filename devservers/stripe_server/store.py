"""In-memory object store: ids, events, expansion and the charge primitives.

Everything lives in plain dicts shaped exactly like Stripe's JSON, so a
response is just a deep copy of the stored object.  State is lost on restart
on purpose: this is a dev/test double, and tests reset it via ``/_test/reset``.
"""

from __future__ import annotations

import copy
import os
import random
import string
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .cards import TEST_CARDS, SimCard, payment_method_object
from .errors import no_such

_ALNUM = string.ascii_letters + string.digits
# Ids only need to be unique, not unguessable (a test double's; the webhook secret stays `secrets`): one
# Mersenne Twister seeded once from the OS, 24 characters of 62 (143 bits), instead of a urandom call per
# character. Reseeded in a forked child, so parent and child never hand out the same ids.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))

# Set by the HTTP layer so events can carry ``request.id``/``idempotency_key``
# like Stripe's do, without threading them through every store call.
REQUEST_CONTEXT: ContextVar[dict[str, str | None] | None] = ContextVar("stripe_sim_request", default=None)

Obj = dict[str, Any]

_KINDS = {  # id prefix -> (collection attribute, noun used in "No such ..." errors)
    "pi": ("payment_intents", "payment_intent"),
    "ch": ("charges", "charge"),
    "re": ("refunds", "refund"),
    "pm": ("payment_methods", "PaymentMethod"),
    "evt": ("events", "event"),
}


def new_id(prefix: str, length: int = 24) -> str:
    """Random Stripe-looking id such as ``pi_3Pq...``."""
    return f"{prefix}_" + "".join(_ids.choices(_ALNUM, k=length))


def snapshot_of(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars), which is all the store holds: about ten times
    cheaper than ``copy.deepcopy``, which a snapshot per event made one of the server's largest costs."""
    if isinstance(value, dict):
        return {k: snapshot_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [snapshot_of(v) for v in value]
    return value


def now() -> int:
    """Unix seconds, Stripe's ``created`` format."""
    return int(time.time())


def money(amount: int, currency: str) -> str:
    """Format minor units the way Stripe's messages do ("$10.00")."""
    return f"${amount / 100:.2f}" if currency == "usd" else f"{amount / 100:.2f} {currency.upper()}"


class Store:
    """All simulated Stripe objects plus the event log."""

    def __init__(self, api_version: str, on_event: Callable[[Obj], None] | None = None) -> None:
        self.api_version = api_version
        self.on_event = on_event
        self.reset()

    def reset(self) -> None:
        """Forget every object (webhook endpoints live elsewhere and survive)."""
        self.payment_intents: dict[str, Obj] = {}
        self.charges: dict[str, Obj] = {}
        self.refunds: dict[str, Obj] = {}
        self.payment_methods: dict[str, Obj] = {}
        self.events: dict[str, Obj] = {}
        self.cards: dict[str, SimCard] = {}  # payment method id -> behaviour

    # ------------------------------------------------------------ lookups
    def find(self, obj_id: str) -> Obj | None:
        """Look an object up by id, using its prefix to pick the collection."""
        kind = _KINDS.get(obj_id.split("_", 1)[0])
        if kind is None:
            return None
        collection: dict[str, Obj] = getattr(self, kind[0])
        return collection.get(obj_id)

    def get(self, prefix: str, obj_id: str, *, param: str, status: int = 400) -> Obj:
        """Fetch or raise Stripe's ``resource_missing`` error."""
        obj = self.find(obj_id) if obj_id.startswith(prefix + "_") else None
        if obj is None:
            raise no_such(_KINDS[prefix][1], obj_id, param=param, status=status)
        return obj

    def view(self, obj: Obj, expand: list[str] | None = None) -> Obj:
        """A response body, with top-level ``expand[]`` ids replaced by objects.

        A shallow copy: nested values are the stored ones, so a view is encoded before the store changes
        again (every caller encodes it in the same synchronous step) and never modified. A deep copy per
        response cost more than the encoding."""
        out = dict(obj)
        for field in expand or []:
            ref = out.get(field)
            if isinstance(ref, str) and (target := self.find(ref)) is not None:
                out[field] = target
        return out

    # ------------------------------------------------------------ events
    def emit(self, type_: str, obj: Obj) -> Obj:
        """Record an Event snapshot of ``obj`` and hand it to the webhook sender."""
        ctx = REQUEST_CONTEXT.get() or {}
        event: Obj = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": self.api_version,
            "created": now(),
            "data": {"object": snapshot_of(obj)},
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": ctx.get("id"), "idempotency_key": ctx.get("idempotency_key")},
            "type": type_,
        }
        self.events[event["id"]] = event
        if self.on_event is not None:
            self.on_event(event)
        return event

    # ------------------------------------------------------------ payment methods
    def resolve_payment_method(self, ref: str) -> Obj:
        """Accept a stored ``pm_...`` or a documented test alias like ``pm_card_visa``.

        Like Stripe, each use of an alias mints a fresh PaymentMethod id, so
        the PaymentIntent reports ``pm_1Abc...`` rather than the alias.
        """
        if ref in self.payment_methods:
            return self.payment_methods[ref]
        card = TEST_CARDS.get(ref)
        if card is None:
            raise no_such("PaymentMethod", ref, param="payment_method")
        pm = payment_method_object(new_id("pm"), card)
        self.payment_methods[pm["id"]] = pm
        self.cards[pm["id"]] = card
        return pm

    # ------------------------------------------------------------ charges
    def create_charge(self, pi: Obj, pm: Obj, *, status: str, captured: bool, failure: tuple[str, str] | None) -> Obj:
        """Create the Charge a confirmation attempt produces (succeeded or failed)."""
        card = pm["card"]
        declined = failure is not None
        charge: Obj = {
            "id": new_id("ch"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": pi["amount"] if captured else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": new_id("txn") if captured else None,
            "billing_details": snapshot_of(pm["billing_details"]),
            "calculated_statement_descriptor": "ORDERFLOW",
            "captured": captured,
            "created": now(),
            "currency": pi["currency"],
            "customer": pi.get("customer"),
            "description": pi.get("description"),
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": failure[0] if failure else None,
            "failure_message": failure[1] if failure else None,
            "fraud_details": {},
            "livemode": False,
            "metadata": snapshot_of(pi.get("metadata") or {}),
            "outcome": {
                "network_status": "declined_by_network" if declined else "approved_by_network",
                "reason": failure[0] if failure else None,
                "risk_level": "normal",
                "seller_message": (
                    "The bank did not return any further details with this decline."
                    if declined
                    else "Payment complete."
                ),
                "type": "issuer_declined" if declined else "authorized",
            },
            "paid": not declined,
            "payment_intent": pi["id"],
            "payment_method": pm["id"],
            "payment_method_details": {
                "card": {
                    "brand": card["brand"],
                    "country": card["country"],
                    "exp_month": card["exp_month"],
                    "exp_year": card["exp_year"],
                    "funding": card["funding"],
                    "last4": card["last4"],
                    "network": card["brand"],
                    "three_d_secure": None,
                },
                "type": "card",
            },
            "receipt_email": pi.get("receipt_email"),
            "receipt_url": None,
            "refunded": False,
            "review": None,
            "status": status,
        }
        self.charges[charge["id"]] = charge
        return charge

    # ------------------------------------------------------------ inspection
    def snapshot(self) -> Obj:
        """Everything tests need to assert "charged exactly once" and friends."""
        charges = list(self.charges.values())
        return {
            "counts": {
                "payment_intents": len(self.payment_intents),
                "charges": len(charges),
                "succeeded_charges": sum(1 for c in charges if c["status"] == "succeeded"),
                "refunds": len(self.refunds),
                "events": len(self.events),
            },
            "payment_intents": copy.deepcopy(list(self.payment_intents.values())),
            "charges": copy.deepcopy(charges),
            "refunds": copy.deepcopy(list(self.refunds.values())),
            "events": [
                {
                    "id": e["id"],
                    "type": e["type"],
                    "created": e["created"],
                    "object_id": e["data"]["object"]["id"],
                }
                for e in self.events.values()
            ],
        }
