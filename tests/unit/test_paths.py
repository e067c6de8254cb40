"""The JSONPath subset: get, put (ResultPath), resolve (Parameters) and States.Format."""

import pytest

from orchestrator.paths import PathError, get, put, resolve

pytestmark = pytest.mark.unit

ORDER = {
    "orderId": "ORDER#1",
    "items": [{"productId": "456", "quantity": 2}, {"productId": "789", "quantity": 1}],
    "inventory": {"amount": 129.57, "currency": "usd"},
}


# -- get ---------------------------------------------------------------------------------------
def test_get_root_is_the_whole_document() -> None:
    assert get(ORDER, "$") == ORDER


def test_get_nested_field_and_list_index() -> None:
    assert get(ORDER, "$.inventory.amount") == 129.57
    assert get(ORDER, "$.items[1].productId") == "789"
    assert get(ORDER, "$.items") == ORDER["items"]


@pytest.mark.parametrize("path", ["$.missing", "$.inventory.missing", "$.items[5]", "$.orderId.deeper"])
def test_get_of_a_path_that_does_not_resolve_raises(path: str) -> None:
    with pytest.raises(PathError, match="does not resolve"):
        get(ORDER, path)


def test_a_path_must_start_at_the_root() -> None:
    with pytest.raises(PathError, match=r"must start with '\$\.'"):
        get(ORDER, "orderId")


# -- put ---------------------------------------------------------------------------------------
def test_put_sets_a_field_and_leaves_the_input_untouched() -> None:
    out = put(ORDER, "$.payment", {"paymentIntentId": "pi_1"})
    assert out["payment"] == {"paymentIntentId": "pi_1"}
    assert out["orderId"] == "ORDER#1"
    assert "payment" not in ORDER


def test_put_creates_missing_parents() -> None:
    assert put({}, "$.a.b.c", 1) == {"a": {"b": {"c": 1}}}


def test_put_overwrites_an_existing_field() -> None:
    assert put({"error": {"Error": "old"}}, "$.error", {"Error": "new"}) == {"error": {"Error": "new"}}


def test_put_at_root_replaces_the_document() -> None:
    assert put(ORDER, "$", {"only": 1}) == {"only": 1}


def test_put_none_path_discards_the_value() -> None:
    assert put(ORDER, None, {"ignored": True}) is ORDER


def test_put_into_a_list_element() -> None:
    out = put(ORDER, "$.items[0].reserved", True)
    assert out["items"][0] == {"productId": "456", "quantity": 2, "reserved": True}
    assert "reserved" not in ORDER["items"][0]


# -- resolve -----------------------------------------------------------------------------------
def test_resolve_takes_dollar_keys_from_paths_and_keeps_literals() -> None:
    template = {"orderId.$": "$.orderId", "amount.$": "$.inventory.amount", "action": "release"}
    assert resolve(template, ORDER) == {"orderId": "ORDER#1", "amount": 129.57, "action": "release"}


def test_resolve_recurses_into_objects_and_lists() -> None:
    template = {"outer": {"id.$": "$.orderId"}, "list": [{"first.$": "$.items[0].productId"}, "plain"]}
    assert resolve(template, ORDER) == {"outer": {"id": "ORDER#1"}, "list": [{"first": "456"}, "plain"]}


def test_resolve_of_a_literal_that_looks_like_a_path_stays_literal() -> None:
    assert resolve({"note": "$.orderId"}, ORDER) == {"note": "$.orderId"}


def test_resolve_raises_when_a_path_does_not_resolve() -> None:
    with pytest.raises(PathError):
        resolve({"x.$": "$.nope"}, ORDER)


# -- States.Format -----------------------------------------------------------------------------
def test_states_format_release_key() -> None:
    template = {"idempotencyId.$": "States.Format('{}-release', $.orderId)"}
    assert resolve(template, ORDER) == {"idempotencyId": "ORDER#1-release"}


def test_states_format_with_several_arguments() -> None:
    template = {"k.$": "States.Format('{}:{}x{}', $.orderId, $.items[0].productId, $.items[0].quantity)"}
    assert resolve(template, ORDER) == {"k": "ORDER#1:456x2"}


def test_states_format_with_an_escaped_quote() -> None:
    assert resolve({"k.$": r"States.Format('it\'s {}', $.orderId)"}, ORDER) == {"k": "it's ORDER#1"}


def test_states_format_placeholder_count_must_match_the_arguments() -> None:
    with pytest.raises(PathError, match="placeholders"):
        resolve({"k.$": "States.Format('{}-{}', $.orderId)"}, ORDER)


def test_states_format_argument_that_does_not_resolve_raises() -> None:
    with pytest.raises(PathError):
        resolve({"k.$": "States.Format('{}-release', $.missing)"}, ORDER)


def test_a_path_does_not_index_into_a_string() -> None:
    with pytest.raises(PathError, match="does not resolve"):
        get(ORDER, "$.orderId[0]")


def test_a_malformed_index_is_a_path_error() -> None:
    with pytest.raises(PathError, match="indexes must be integers"):
        get(ORDER, "$.items[first]")


def test_states_format_renders_non_strings_as_json() -> None:
    data = {"flag": True, "none": None, "amount": 129.57, "count": 2}
    template = {"k.$": "States.Format('{}|{}|{}|{}', $.flag, $.none, $.amount, $.count)"}
    assert resolve(template, data) == {"k": "true|null|129.57|2"}
