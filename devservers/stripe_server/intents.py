"""PaymentIntent lifecycle: create, confirm, 3-D Secure, capture, cancel.

The state machine mirrors Stripe's so that client code written against the
simulator makes the same decisions it would in production: a decline leaves
the intent in ``requires_payment_method`` with ``last_payment_error`` and
``payment_method`` cleared, 3-D Secure cards stop in ``requires_action``, and
a confirmation that is not allowed from the current status is a 400
``payment_intent_unexpected_state``.
"""

from __future__ import annotations

import copy
from typing import Any

from .cards import AUTH_REQUIRED, Decline
from .errors import DOCS, ApiError, invalid, missing_param, unexpected_state
from .forms import to_bool, to_enum, to_int, to_str_map
from .store import Obj, Store, new_id, now

CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
    "processing",
)
CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
NEVER_REDIRECT = {"card", "card_present"}  # types that cannot send the customer elsewhere
MINIMUM = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50}
# Since API version 2023-08-16, omitting payment_method_types turns on
# automatic_payment_methods, which then requires a return_url to confirm.
AUTO_PM_DEFAULT_SINCE = "2023-08-16"
RETURN_URL_REQUIRED = (
    "A `return_url` must be specified because this Payment Intent is configured to automatically accept the "
    "payment methods enabled in the Dashboard, some of which may require a full page redirect to succeed. If you "
    "do not want to accept redirect-based payment methods, set `automatic_payment_methods[enabled]` to `true` and "
    "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and Payment Intents."
)
AUTH_FAILED = (
    "The provided PaymentMethod has failed authentication. You can provide payment_method_data or a new "
    "PaymentMethod to attempt to fulfill this PaymentIntent again."
)
# Params that steer confirmation but are not fields of the PaymentIntent object.
_CONFIRM_ONLY = {
    "confirm",
    "return_url",
    "off_session",
    "expand",
    "error_on_requires_action",
    "mandate_data",
    "payment_method_data",
    "use_stripe_sdk",
    "confirmation_token",
    "radar_options",
}


def _str_list(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    return [str(v) for v in (value if isinstance(value, list) else [value])]


class PaymentIntents:
    """Operations on PaymentIntents; objects live in the shared :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------ create
    def create(self, params: dict[str, Any], api_version: str) -> Obj:
        """POST /v1/payment_intents, optionally confirming in the same call."""
        amount = to_int(params, "amount", required=True)
        assert amount is not None
        currency = str(params.get("currency") or "").lower()
        if not currency:
            raise missing_param("currency")
        if len(currency) != 3 or not currency.isalpha():
            raise invalid(f"Invalid currency: {currency}.", param="currency")
        if amount < MINIMUM.get(currency, 1):
            minimum = MINIMUM.get(currency, 1)
            raise invalid(
                f"Amount must be at least ${minimum / 100:.2f} {currency}",
                param="amount",
                code="amount_too_small",
            )
        capture_method = to_enum(params, "capture_method", CAPTURE_METHODS)
        apm, types, allowed = self._payment_method_config(params, api_version)
        confirm = to_bool(params, "confirm")
        pm = self.store.resolve_payment_method(str(params["payment_method"])) if params.get("payment_method") else None
        pi: Obj = {
            "id": new_id("pi"),
            "object": "payment_intent",
            "allowed_payment_method_types": allowed,
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": apm,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture_method or "automatic_async",
            "client_secret": None,
            "confirmation_method": params.get("confirmation_method") or "automatic",
            "created": now(),
            "currency": currency,
            "customer": params.get("customer"),
            "description": params.get("description"),
            "excluded_payment_method_types": _str_list(params.get("excluded_payment_method_types")),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": to_str_map(params, "metadata"),
            "next_action": None,
            "on_behalf_of": params.get("on_behalf_of"),
            "payment_method": pm["id"] if pm else None,
            "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
            "payment_method_types": types,
            "processing": None,
            "receipt_email": params.get("receipt_email"),
            "review": None,
            "setup_future_usage": params.get("setup_future_usage"),
            "shipping": params.get("shipping"),
            "statement_descriptor": params.get("statement_descriptor"),
            "statement_descriptor_suffix": params.get("statement_descriptor_suffix"),
            "status": "requires_confirmation" if pm else "requires_payment_method",
            "transfer_data": params.get("transfer_data"),
            "transfer_group": params.get("transfer_group"),
        }
        pi["client_secret"] = f"{pi['id']}_secret_{new_id('x')[2:]}"
        for key, value in params.items():  # accept and keep anything else we do not model
            if key not in pi and key not in _CONFIRM_ONLY:
                pi[key] = value
        if confirm:
            self._check_confirmable(pi, pm, params)  # validate before anything is stored
        self.store.payment_intents[pi["id"]] = pi
        self.store.emit("payment_intent.created", pi)
        if confirm:
            assert pm is not None
            self._attempt(pi, pm, params, authenticated=False)
        return pi

    @staticmethod
    def _payment_method_config(
        params: dict[str, Any], api_version: str
    ) -> tuple[Obj | None, list[str], list[str] | None]:
        """(automatic_payment_methods, payment_method_types, allowed_payment_method_types).

        ``payment_method_types`` is the pre-2026 create param; newer API versions
        send ``allowed_payment_method_types`` instead.  Both are accepted.
        """
        apm_param = params.get("automatic_payment_methods")
        legacy = _str_list(params.get("payment_method_types"))
        allowed = _str_list(params.get("allowed_payment_method_types"))
        if apm_param is not None and legacy is not None:
            raise invalid(
                "You may only specify one of these parameters: automatic_payment_methods, payment_method_types."
            )
        if legacy is not None:
            return None, legacy, allowed
        types = allowed or ["card"]
        if isinstance(apm_param, dict):
            enabled = to_bool(apm_param, "enabled")
            redirects = to_enum(apm_param, "allow_redirects", ("always", "never")) or "always"
            apm = {"allow_redirects": redirects, "enabled": True} if enabled else {"enabled": False}
            return apm, types, allowed
        if api_version[:10] >= AUTO_PM_DEFAULT_SINCE:
            return {"allow_redirects": "always", "enabled": True}, types, allowed
        return None, types, allowed

    # ------------------------------------------------------------ confirm
    def confirm(self, pi_id: str, params: dict[str, Any]) -> Obj:
        """POST /v1/payment_intents/{id}/confirm."""
        pi = self.store.get("pi", pi_id, param="intent", status=404)
        ref = params.get("payment_method") or pi["payment_method"]
        pm = self.store.resolve_payment_method(str(ref)) if ref else None
        capture_method = to_enum(params, "capture_method", CAPTURE_METHODS)
        self._check_confirmable(pi, pm, params)
        assert pm is not None
        pi["payment_method"] = pm["id"]
        for key in ("receipt_email", "setup_future_usage", "shipping"):
            if key in params:
                pi[key] = params[key]
        if capture_method:
            pi["capture_method"] = capture_method
        if params.get("allowed_payment_method_types"):
            pi["allowed_payment_method_types"] = _str_list(params["allowed_payment_method_types"])
        self._attempt(pi, pm, params, authenticated=False)
        return pi

    def _check_confirmable(self, pi: Obj, pm: Obj | None, params: dict[str, Any]) -> None:
        status = pi["status"]
        if status == "succeeded":
            raise unexpected_state(
                "You cannot confirm this PaymentIntent because it has already succeeded after being previously "
                "confirmed."
            )
        if status not in CONFIRMABLE:
            raise unexpected_state(
                f"You cannot confirm this PaymentIntent because it has a status of {status}. Only a PaymentIntent "
                "with one of the following statuses may be confirmed: " + ", ".join(CONFIRMABLE) + "."
            )
        if pm is None:
            raise invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. You can either "
                "update the PaymentIntent with a payment method and then confirm it again, or confirm it again "
                "directly with a payment method.",
                code="payment_intent_unexpected_state",
            )
        apm = pi.get("automatic_payment_methods") or {}
        allowed = _str_list(params.get("allowed_payment_method_types")) or pi.get("allowed_payment_method_types")
        may_redirect = not allowed or any(t not in NEVER_REDIRECT for t in allowed)
        if (
            apm.get("enabled")
            and apm.get("allow_redirects") != "never"
            and may_redirect
            and not params.get("return_url")
        ):
            raise invalid(RETURN_URL_REQUIRED)

    def _attempt(self, pi: Obj, pm: Obj, params: dict[str, Any], *, authenticated: bool) -> None:
        """Run one payment attempt; raises the 402 card error on decline."""
        card = self.store.cards[pm["id"]]
        if card.requires_auth and not authenticated:
            if to_bool(params, "off_session") or to_bool(params, "error_on_requires_action"):
                raise self._decline(pi, pm, AUTH_REQUIRED)
            self._require_action(pi, params.get("return_url"))
            return
        if card.decline is not None:
            raise self._decline(pi, pm, card.decline)
        captured = pi["capture_method"] != "manual"
        charge = self.store.create_charge(pi, pm, status="succeeded", captured=captured, failure=None)
        pi.update(
            latest_charge=charge["id"],
            status="succeeded" if captured else "requires_capture",
            amount_received=pi["amount"] if captured else 0,
            amount_capturable=0 if captured else pi["amount"],
            last_payment_error=None,
            next_action=None,
        )
        self.store.emit("charge.succeeded", charge)
        self.store.emit(
            "payment_intent.succeeded" if captured else "payment_intent.amount_capturable_updated",
            pi,
        )

    def _require_action(self, pi: Obj, return_url: Any) -> None:
        source = new_id("src")
        url = f"https://hooks.stripe.com/redirect/authenticate/{source}?client_secret={pi['client_secret']}"
        if return_url:
            action: Obj = {
                "type": "redirect_to_url",
                "redirect_to_url": {"return_url": return_url, "url": url},
            }
        else:
            action = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {
                    "source": source,
                    "stripe_js": url,
                    "type": "three_d_secure_redirect",
                },
            }
        pi.update(status="requires_action", next_action=action)
        self.store.emit("payment_intent.requires_action", pi)

    def _decline(self, pi: Obj, pm: Obj, decline: Decline) -> ApiError:
        charge = self.store.create_charge(
            pi, pm, status="failed", captured=False, failure=(decline.code, decline.message)
        )
        error: Obj = {
            "charge": charge["id"],
            "code": decline.code,
            "decline_code": decline.decline_code,
            "doc_url": DOCS + decline.code.replace("_", "-"),
            "message": decline.message,
            "payment_method": copy.deepcopy(pm),
            "type": "card_error",
        }
        if decline.param:
            error["param"] = decline.param
        pi.update(
            latest_charge=charge["id"],
            last_payment_error=error,
            status="requires_payment_method",
            payment_method=None,
            next_action=None,
        )
        self.store.emit("charge.failed", charge)
        self.store.emit("payment_intent.payment_failed", pi)
        return ApiError(
            402,
            decline.message,
            type_="card_error",
            code=decline.code,
            param=decline.param,
            cacheable=True,
            headers={"Stripe-Should-Retry": "false"},
            decline_code=decline.decline_code,
            charge=charge["id"],
            payment_intent=self.store.view(pi),
            payment_method=copy.deepcopy(pm),
        )

    # ------------------------------------------------------------ 3-D Secure (test hook)
    def authenticate(self, pi_id: str, outcome: str) -> Obj:
        """Complete or fail the pending 3-D Secure challenge, like the customer would."""
        pi = self.store.get("pi", pi_id, param="intent", status=404)
        if pi["status"] != "requires_action":
            raise invalid(f"PaymentIntent {pi_id} has status {pi['status']}; only requires_action can authenticate.")
        if outcome not in ("succeed", "fail"):
            raise invalid("outcome must be 'succeed' or 'fail'.", param="outcome")
        pm = self.store.payment_methods[pi["payment_method"]]
        if outcome == "succeed":
            try:
                self._attempt(pi, pm, {}, authenticated=True)
            except ApiError:
                pass  # a post-authentication decline is reported via the PI and its events
            return pi
        pi.update(
            status="requires_payment_method",
            payment_method=None,
            next_action=None,
            last_payment_error={
                "code": "payment_intent_authentication_failure",
                "doc_url": DOCS + "payment-intent-authentication-failure",
                "message": AUTH_FAILED,
                "payment_method": copy.deepcopy(pm),
                "type": "invalid_request_error",
            },
        )
        self.store.emit("payment_intent.payment_failed", pi)
        return pi

    # ------------------------------------------------------------ capture / cancel
    def capture(self, pi_id: str, params: dict[str, Any]) -> Obj:
        """POST /v1/payment_intents/{id}/capture for ``capture_method=manual``."""
        pi = self.store.get("pi", pi_id, param="intent", status=404)
        if pi["status"] != "requires_capture":
            raise unexpected_state(
                f"This PaymentIntent could not be captured because it has a status of {pi['status']}. Only a "
                "PaymentIntent with one of the following statuses may be captured: requires_capture."
            )
        amount = to_int(params, "amount_to_capture", positive=True) or pi["amount_capturable"]
        if amount > pi["amount_capturable"]:
            raise invalid(
                "The amount to capture must be less than or equal to the amount capturable.",
                param="amount_to_capture",
                code="amount_too_large",
                cacheable=True,
            )
        charge = self.store.charges[pi["latest_charge"]]
        charge.update(captured=True, amount_captured=amount, balance_transaction=new_id("txn"))
        pi.update(status="succeeded", amount_received=amount, amount_capturable=0)
        self.store.emit("charge.captured", charge)
        self.store.emit("payment_intent.succeeded", pi)
        return pi

    def cancel(self, pi_id: str, params: dict[str, Any]) -> Obj:
        """POST /v1/payment_intents/{id}/cancel."""
        pi = self.store.get("pi", pi_id, param="intent", status=404)
        reason = to_enum(
            params,
            "cancellation_reason",
            ("duplicate", "fraudulent", "requested_by_customer", "abandoned"),
        )
        if pi["status"] not in CANCELABLE:
            raise unexpected_state(
                f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}. Only a "
                "PaymentIntent with one of the following statuses may be canceled: " + ", ".join(CANCELABLE) + "."
            )
        if pi["status"] == "requires_capture":  # releasing the authorization refunds the uncaptured charge
            charge = self.store.charges[pi["latest_charge"]]
            charge.update(refunded=True, amount_refunded=charge["amount"])
        pi.update(
            status="canceled",
            canceled_at=now(),
            cancellation_reason=reason,
            next_action=None,
            amount_capturable=0,
        )
        self.store.emit("payment_intent.canceled", pi)
        return pi
