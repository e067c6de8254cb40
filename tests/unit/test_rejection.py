"""order.rejected for an OrderRequested that cannot start (orchestrator/rejection.py): correlated by the orderId
when it can be a correlation id, by a digest of it when it cannot, and carrying it as given, cut."""

import hashlib
import json

import pytest

from orchestrator.rejection import ORDER_ID_CHARS, ids_of

pytestmark = pytest.mark.unit


def body(order_id: object) -> bytes:
    return json.dumps({"orderId": order_id, "items": []}).encode()


def test_a_valid_order_id_correlates_its_rejection() -> None:
    assert ids_of(body("ORDER#123")) == ("ORDER#123", "ORDER#123")


@pytest.mark.parametrize("order_id", ["é" * 150, "ORDER 123", "x" * 129, "ORDER#\u00e9"], ids=lambda v: repr(v[:12]))
def test_an_order_id_that_cannot_be_a_correlation_id_is_correlated_by_its_digest(order_id: str) -> None:
    carried, correlation = ids_of(body(order_id))
    assert correlation == "invalid:" + hashlib.sha256(order_id.encode()).hexdigest()
    assert len(correlation.encode()) <= 255
    assert carried == order_id[:ORDER_ID_CHARS]


def test_a_huge_order_id_is_carried_cut() -> None:
    carried, correlation = ids_of(body("x" * 70_000))
    assert carried == "x" * ORDER_ID_CHARS and correlation.startswith("invalid:")


def test_what_the_rejection_could_not_store_is_replaced() -> None:
    carried, correlation = ids_of(b'{"orderId": "A\\u0000B\\ud800C"}')
    assert carried == "A\ufffdB\ufffdC"
    assert correlation == "invalid:" + hashlib.sha256("A\x00B\ud800C".encode("utf-8", "surrogatepass")).hexdigest()


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", body(12345), body(None), body(""), b"{}"])
def test_without_a_string_order_id_there_is_nothing_to_correlate_by(raw: bytes) -> None:
    assert ids_of(raw) == (None, "")
