"""A small Stripe-compatible HTTP server for local development and tests.

Point the official SDK at it and it answers like api.stripe.com for the
subset Orderflow uses, so the SDK raises the same exception classes with the
same ``code``/``decline_code``/``http_status``::

    client = stripe.StripeClient(
        "sk_test_anything",
        base_addresses={"api": "http://127.0.0.1:12111"},
        max_network_retries=0,
    )

Run it with ``python -m devservers.stripe_server --port 12111``, or from tests
with :func:`run_stripe_server` (async) / :class:`StripeServerThread` (sync).

Why not PyPI's ``localstripe``: it has no Idempotency-Key handling, collapses
declines into one generic error (no ``insufficient_funds``/``expired_card``
decline codes), lets a refunded charge be refunded again instead of answering
``charge_already_refunded``, and does not know the ``pm_card_chargeDeclined*``
test PaymentMethods.  Those are exactly the behaviours a payment saga's
retry/compensation logic depends on.

Supported: PaymentIntents (create/confirm/retrieve/capture/cancel/list, and
search by Stripe's query language, e.g. ``metadata['orderId']:'ORDER#1'``), Refunds
(create/retrieve/list by ``payment_intent`` or ``charge``), retrieval of
Charges/PaymentMethods/Events, Stripe's
documented test PaymentMethods (see :mod:`.cards`) including 3-D Secure,
idempotency keys with Stripe's replay/conflict rules, signed webhooks with
retries, and ``/_test/*`` controls: ``state``, ``reset``, ``faults``,
``webhook_endpoints`` and ``payment_intents/{id}/authenticate``.

State is kept in memory only and lost on restart: it is a dev/test double,
not a ledger.  Only ``sk_test_`` keys are accepted.
"""

from .app import make_app
from .runner import RunningServer, StripeServerThread, run_stripe_server, serve_forever
from .webhooks import sign

__all__ = [
    "RunningServer",
    "StripeServerThread",
    "make_app",
    "run_stripe_server",
    "serve_forever",
    "sign",
]
