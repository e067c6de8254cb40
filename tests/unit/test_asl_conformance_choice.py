"""Conformance: Choice rules, every operator and And, Or, Not, with the ASL specification's example
(ChoiceStateX) run through decide(), and a table of single rules with the result each must give."""

from typing import Any

import pytest
from sagadsl import given

from orchestrator.asl import choice
from orchestrator.definition import DefinitionError, parse

pytestmark = pytest.mark.unit

CHOICE_STATE_X = {
    "Type": "Choice",
    "Choices": [
        {"Not": {"Variable": "$.type", "StringEquals": "Private"}, "Next": "Public"},
        {
            "And": [
                {"Variable": "$.value", "IsPresent": True},
                {"Variable": "$.value", "IsNumeric": True},
                {"Variable": "$.value", "NumericGreaterThanEquals": 20},
                {"Variable": "$.value", "NumericLessThan": 30},
            ],
            "Next": "ValueInTwenties",
        },
        {"Variable": "$.rating", "NumericGreaterThanPath": "$.auditThreshold", "Next": "StartAudit"},
    ],
    "Default": "RecordEvent",
}


def spec_machine() -> dict[str, Any]:
    ends = {
        name: {"Type": "Pass", "Result": {"went": name}, "ResultPath": "$.went", "End": True}
        for name in ("Public", "ValueInTwenties", "StartAudit", "RecordEvent")
    }
    return {"StartAt": "ChoiceStateX", "States": {"ChoiceStateX": CHOICE_STATE_X, **ends}}


@pytest.mark.parametrize(
    ("state_input", "went"),
    [
        ({"type": "Public"}, "Public"),
        ({"type": "Private", "value": 22}, "ValueInTwenties"),
        ({"type": "Private", "value": 35, "rating": 70, "auditThreshold": 60}, "StartAudit"),
        ({"type": "Private", "value": "22", "rating": 53, "auditThreshold": 60}, "RecordEvent"),
        ({"type": "Private", "rating": 53, "auditThreshold": 60}, "RecordEvent"),
    ],
)
def test_the_specifications_choice_state_x(state_input: dict[str, Any], went: str) -> None:
    saga = given(spec_machine()).start(state_input).expect_status("SUCCEEDED")
    assert saga.data["went"] == {"went": went}
    assert "ChoiceStateEntered" in saga.events()


TS = "2001-01-01T12:00:00Z"
RULES = [
    ({"Variable": "$.s", "StringEquals": "abc"}, {"s": "abc"}, True),
    ({"Variable": "$.s", "StringEquals": "abc"}, {"s": 1}, False),
    ({"Variable": "$.s", "StringLessThan": "b"}, {"s": "a"}, True),
    ({"Variable": "$.s", "StringGreaterThan": "b"}, {"s": "a"}, False),
    ({"Variable": "$.s", "StringLessThanEquals": "a"}, {"s": "a"}, True),
    ({"Variable": "$.s", "StringGreaterThanEquals": "b"}, {"s": "c"}, True),
    ({"Variable": "$.s", "StringEqualsPath": "$.t"}, {"s": "x", "t": "x"}, True),
    ({"Variable": "$.s", "StringLessThanPath": "$.t"}, {"s": "a", "t": "b"}, True),
    ({"Variable": "$.s", "StringGreaterThanPath": "$.t"}, {"s": "a", "t": "b"}, False),
    ({"Variable": "$.s", "StringLessThanEqualsPath": "$.t"}, {"s": "b", "t": "b"}, True),
    ({"Variable": "$.s", "StringGreaterThanEqualsPath": "$.t"}, {"s": "a", "t": "b"}, False),
    ({"Variable": "$.s", "StringMatches": "log-*.txt"}, {"s": "log-2024-01.txt"}, True),
    ({"Variable": "$.s", "StringMatches": "log-*.txt"}, {"s": "log-2024.csv"}, False),
    ({"Variable": "$.s", "StringMatches": "a\\*b"}, {"s": "a*b"}, True),
    ({"Variable": "$.s", "StringMatches": "a\\*b"}, {"s": "axxb"}, False),
    ({"Variable": "$.n", "NumericEquals": 20}, {"n": 20.0}, True),
    ({"Variable": "$.n", "NumericEquals": 20}, {"n": "20"}, False),
    ({"Variable": "$.n", "NumericEquals": 1}, {"n": True}, False),
    ({"Variable": "$.n", "NumericLessThan": 20}, {"n": 19.99}, True),
    ({"Variable": "$.n", "NumericGreaterThan": 20}, {"n": 20}, False),
    ({"Variable": "$.n", "NumericLessThanEquals": 20}, {"n": 20}, True),
    ({"Variable": "$.n", "NumericGreaterThanEquals": 20}, {"n": 21}, True),
    ({"Variable": "$.n", "NumericEqualsPath": "$.m"}, {"n": 3, "m": 3}, True),
    ({"Variable": "$.n", "NumericLessThanPath": "$.m"}, {"n": 3, "m": 4}, True),
    ({"Variable": "$.n", "NumericGreaterThanPath": "$.m"}, {"n": 3, "m": 4}, False),
    ({"Variable": "$.n", "NumericLessThanEqualsPath": "$.m"}, {"n": 4, "m": 4}, True),
    ({"Variable": "$.n", "NumericGreaterThanEqualsPath": "$.m"}, {"n": 5, "m": 4}, True),
    ({"Variable": "$.b", "BooleanEquals": True}, {"b": True}, True),
    ({"Variable": "$.b", "BooleanEquals": True}, {"b": "true"}, False),
    ({"Variable": "$.b", "BooleanEqualsPath": "$.c"}, {"b": False, "c": False}, True),
    ({"Variable": "$.t", "TimestampEquals": TS}, {"t": "2001-01-01T13:00:00+01:00"}, True),
    ({"Variable": "$.t", "TimestampEquals": TS}, {"t": "yesterday"}, False),
    ({"Variable": "$.t", "TimestampLessThan": TS}, {"t": "2000-12-31T23:59:59Z"}, True),
    ({"Variable": "$.t", "TimestampGreaterThan": TS}, {"t": "2000-12-31T23:59:59Z"}, False),
    ({"Variable": "$.t", "TimestampLessThanEquals": TS}, {"t": TS}, True),
    ({"Variable": "$.t", "TimestampGreaterThanEquals": TS}, {"t": "2001-01-01T12:00:00.5Z"}, True),
    ({"Variable": "$.t", "TimestampEqualsPath": "$.u"}, {"t": TS, "u": TS}, True),
    ({"Variable": "$.t", "TimestampLessThanPath": "$.u"}, {"t": TS, "u": "2002-01-01T00:00:00Z"}, True),
    ({"Variable": "$.t", "TimestampGreaterThanPath": "$.u"}, {"t": TS, "u": "2002-01-01T00:00:00Z"}, False),
    ({"Variable": "$.t", "TimestampLessThanEqualsPath": "$.u"}, {"t": TS, "u": TS}, True),
    ({"Variable": "$.t", "TimestampGreaterThanEqualsPath": "$.u"}, {"t": TS, "u": TS}, True),
    ({"Variable": "$.x", "IsNull": True}, {"x": None}, True),
    ({"Variable": "$.x", "IsNull": False}, {"x": 0}, True),
    ({"Variable": "$.x", "IsPresent": True}, {}, False),
    ({"Variable": "$.x", "IsPresent": False}, {}, True),
    ({"Variable": "$.x", "IsNumeric": True}, {"x": 1.5}, True),
    ({"Variable": "$.x", "IsString": True}, {"x": "1.5"}, True),
    ({"Variable": "$.x", "IsBoolean": True}, {"x": False}, True),
    ({"Variable": "$.x", "IsTimestamp": True}, {"x": TS}, True),
    ({"Variable": "$.x", "IsTimestamp": True}, {"x": "2001-01-01"}, False),
    (
        {"And": [{"Variable": "$.a", "NumericEquals": 1}, {"Variable": "$.b", "NumericEquals": 2}]},
        {"a": 1, "b": 2},
        True,
    ),
    (
        {"And": [{"Variable": "$.a", "NumericEquals": 1}, {"Variable": "$.b", "NumericEquals": 3}]},
        {"a": 1, "b": 2},
        False,
    ),
    (
        {"Or": [{"Variable": "$.a", "NumericEquals": 9}, {"Variable": "$.b", "NumericEquals": 2}]},
        {"a": 1, "b": 2},
        True,
    ),
    ({"Not": {"Or": [{"Variable": "$.a", "NumericEquals": 9}]}}, {"a": 1}, True),
    ({"Variable": "$$.State.Name", "StringEquals": "Pick"}, {}, True),
]


@pytest.mark.parametrize(("rule", "data", "expected"), RULES, ids=[str(r)[:70] for r, _, _ in RULES])
def test_each_operator_compares_as_the_specification_says(rule: dict, data: Any, expected: bool) -> None:
    choice.check(rule, top=False)
    assert choice.matches(rule, data, {"State": {"Name": "Pick"}}) is expected


def test_every_operator_of_the_specification_is_in_the_table() -> None:
    used = {key for rule, _, _ in RULES for key in _operators(rule)}
    assert choice.OPERATORS <= used


def _operators(rule: dict) -> set[str]:
    found = {key for key in rule if key in choice.OPERATORS}
    for inner in rule.get("And", []) + rule.get("Or", []) + ([rule["Not"]] if "Not" in rule else []):
        found |= _operators(inner)
    return found


def machine(state: dict[str, Any]) -> dict[str, Any]:
    return {"StartAt": "Pick", "States": {"Pick": state, "Yes": {"Type": "Succeed"}}}


def test_no_rule_and_no_default_fails_with_states_no_choice_matched() -> None:
    rule = {"Variable": "$.n", "NumericEquals": 1, "Next": "Yes"}
    saga = given(machine({"Type": "Choice", "Choices": [rule]})).start({"n": 2}).expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == "States.NoChoiceMatched"


def test_a_variable_that_does_not_resolve_is_states_runtime() -> None:
    rule = {"Variable": "$.missing", "NumericEquals": 1, "Next": "Yes"}
    saga = given(machine({"Type": "Choice", "Choices": [rule], "Default": "Yes"})).start({})
    saga.expect_status("FAILED")
    assert saga.saga.error is not None and saga.saga.error.Error == "States.Runtime"


def test_choice_input_and_output_paths() -> None:
    rule = {"Variable": "$.total", "NumericGreaterThan": 100, "Next": "Yes"}
    state = {"Type": "Choice", "Choices": [rule], "InputPath": "$.order", "OutputPath": "$.total"}
    saga = given(machine(state)).start({"order": {"total": 120}}).expect_status("SUCCEEDED")
    assert saga.data == 120


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"Variable": "$.n", "NumericEquals": 1}, "needs Next"),
        ({"Variable": "$.n", "NumericEquals": "1", "Next": "Yes"}, "takes a number"),
        ({"Variable": "$.n", "NumericEquals": 1, "StringEquals": "x", "Next": "Yes"}, "exactly one operator"),
        ({"Variable": "$.n", "NumericEqualz": 1, "Next": "Yes"}, "unknown field"),
        ({"And": [], "Next": "Yes"}, "non-empty list"),
        ({"Not": {"Variable": "$.n", "IsNull": True, "Next": "Yes"}, "Next": "Yes"}, "nested rule has no Next"),
        ({"Variable": "$.t", "TimestampEquals": "2001-01-01", "Next": "Yes"}, "not an RFC 3339 timestamp"),
        ({"Variable": "$.n", "IsNull": True, "Next": "Nowhere"}, "Next 'Nowhere' is not a state"),
    ],
)
def test_a_malformed_rule_is_rejected_when_the_definition_loads(rule: dict, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse(machine({"Type": "Choice", "Choices": [rule]}))
