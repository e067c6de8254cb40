"""Logs are JSON lines carrying the bound order context, with contact details masked."""

import json
import logging

import pytest

from plumbing.logs import JsonFormatter, bind, log_context, mask

pytestmark = pytest.mark.unit


def test_a_log_line_is_json_with_the_bound_order_context() -> None:
    log_context.set({})
    bind(orderId="ORDER#123", step="ReserveInventory", attempt=2, correlationId="ORDER#123")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "reserved %s", ("2 units",), None)
    record.fields = {"reservationId": "res_1"}
    line = json.loads(JsonFormatter("inventory").format(record))
    assert line["msg"] == "reserved 2 units" and line["service"] == "inventory" and line["level"] == "INFO"
    assert (line["orderId"], line["step"], line["attempt"], line["correlationId"]) == (
        "ORDER#123",
        "ReserveInventory",
        2,
        "ORDER#123",
    )
    assert line["reservationId"] == "res_1"


def test_emails_and_phone_numbers_are_masked_but_order_ids_are_not() -> None:
    text = "to ada.lovelace@example.com and +1 555 000 1234 for ORDER#20261126010322-1"
    masked = mask(text)
    assert "ada.lovelace" not in masked and "a***@example.com" in masked
    assert "555 000" not in masked and masked.count("34") == 1
    assert "ORDER#20261126010322-1" in masked
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "mail to %s", ("grace@example.org",), None)
    log_context.set({})
    assert "grace@" not in JsonFormatter("notify").format(record)


def test_the_stripe_sdks_request_lines_only_at_debug() -> None:
    from plumbing.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("payment", "INFO")
        assert not logging.getLogger("stripe").isEnabledFor(logging.INFO)
        assert logging.getLogger("stripe").isEnabledFor(logging.WARNING)
        setup_logging("payment", "DEBUG")
        assert logging.getLogger("stripe").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = handlers, level
        logging.getLogger("stripe").setLevel(logging.NOTSET)
