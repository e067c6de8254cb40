"""The fraud screen's rules (services/payment/fraud.py): a pure decision from the settings and the order."""

from decimal import Decimal

import pytest

from contracts.payment import ScreenOrder
from services.payment.fraud import FraudRules, reasons
from services.payment.main import PaymentSettings

pytestmark = pytest.mark.unit


def order(amount: str = "100.00", units: int = 1, email: str = "ada@example.com") -> ScreenOrder:
    line = {"productId": "456", "name": "Widget", "quantity": units, "unitPrice": amount, "lineTotal": amount}
    return ScreenOrder.model_validate(
        {
            "orderId": "ORDER#1",
            "amount": amount,
            "currency": "usd",
            "customer": {"email": email},
            "lines": [line],
            "idempotencyKey": "ORDER#1-screen",
        }
    )


RULES = FraudRules(amount_ceiling=Decimal("5000"), max_units=10, blocked_email_domains=("fraud.example.com",))


def test_an_order_within_every_rule_passes() -> None:
    assert reasons(RULES, order()) == []


def test_limits_are_inclusive() -> None:
    assert reasons(RULES, order(amount="5000.00", units=10)) == []


def test_each_rule_refuses_with_its_name() -> None:
    assert [r.split(":")[0] for r in reasons(RULES, order(amount="5000.01"))] == ["amount_ceiling"]
    assert [r.split(":")[0] for r in reasons(RULES, order(units=11))] == ["max_units"]
    assert [r.split(":")[0] for r in reasons(RULES, order(email="eve@shop.fraud.example.com"))] == [
        "blocked_email_domain"
    ]


def test_a_domain_only_ending_like_a_blocked_one_is_not_blocked() -> None:
    assert reasons(RULES, order(email="eve@notfraud.example.com")) == []


def test_every_failing_rule_is_named_in_order() -> None:
    found = reasons(RULES, order(amount="9000.00", units=20, email="EVE@FRAUD.EXAMPLE.COM"))
    assert [r.split(":")[0] for r in found] == ["amount_ceiling", "max_units", "blocked_email_domain"]


def test_the_rules_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_AMOUNT_CEILING", "250")
    monkeypatch.setenv("FRAUD_MAX_UNITS", "3")
    monkeypatch.setenv("FRAUD_BLOCKED_EMAIL_DOMAINS", '["Fraud.Example.com", " "]')
    rules = PaymentSettings().fraud_rules()
    assert rules == FraudRules(amount_ceiling=Decimal("250"), max_units=3, blocked_email_domains=("fraud.example.com",))


def test_the_defaults_refuse_only_very_large_orders() -> None:
    assert FraudRules() == FraudRules(amount_ceiling=Decimal("10000"), max_units=50, blocked_email_domains=())
