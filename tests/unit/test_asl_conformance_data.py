"""Conformance: the ASL specification's own examples of paths, input and output processing and intrinsic
functions, each with the output the specification gives, run against the pure engine (orchestrator.asl and
decide()). Tables, one row per example; where the specification shows no output, Step Functions' is used."""

import json
import random
from typing import Any

import pytest
from sagadsl import given

from orchestrator.asl import intrinsics, io, jsonpath
from orchestrator.asl.intrinsics import IntrinsicError, Scope
from orchestrator.definition import DefinitionError, parse

pytestmark = pytest.mark.unit

# -- paths ----------------------------------------------------------------------------------------
SPEC_INPUT = {"foo": 123, "bar": ["a", "b", "c"], "car": {"cdr": True}}
STORE = {
    "store": {
        "book": [
            {"category": "reference", "author": "Nigel Rees", "title": "Sayings of the Century", "price": 8.95},
            {"category": "fiction", "author": "Evelyn Waugh", "title": "Sword of Honour", "price": 12.99},
            {"category": "fiction", "author": "Herman Melville", "title": "Moby Dick", "price": 8.99},
        ],
        "bicycle": {"color": "red", "price": 19.95},
    }
}

PATHS = [
    (SPEC_INPUT, "$.foo", 123),
    (SPEC_INPUT, "$.bar", ["a", "b", "c"]),
    (SPEC_INPUT, "$.car.cdr", True),
    (SPEC_INPUT, "$", SPEC_INPUT),
    (SPEC_INPUT, "$.bar[1]", "b"),
    (SPEC_INPUT, "$.bar[-1]", "c"),
    (SPEC_INPUT, "$['car']['cdr']", True),
    (STORE, "$.store.book[0].title", "Sayings of the Century"),
    (STORE, "$.store.book[*].author", ["Nigel Rees", "Evelyn Waugh", "Herman Melville"]),
    (STORE, "$..price", [8.95, 12.99, 8.99, 19.95]),
    (STORE, "$.store.book[0:2].price", [8.95, 12.99]),
    (STORE, "$.store.book[-1:].title", ["Moby Dick"]),
    (STORE, "$.store.book[0,2].category", ["reference", "fiction"]),
    (STORE, "$.store.bicycle.*", ["red", 19.95]),
    ({"vals": [0, 10, 20, 30, 40, 50]}, "$.vals[-3:]", [30, 40, 50]),
]


@pytest.mark.parametrize(("data", "path", "expected"), PATHS, ids=[p for _, p, _ in PATHS])
def test_paths_select_what_the_specification_says(data: Any, path: str, expected: Any) -> None:
    assert jsonpath.select(data, path) == expected


@pytest.mark.parametrize("path", ["$.missing", "$.bar[3]", "$.foo.deeper", "$.bar.length"])
def test_a_definite_path_that_does_not_resolve_is_an_error(path: str) -> None:
    with pytest.raises(jsonpath.PathError, match="does not resolve"):
        jsonpath.select(SPEC_INPUT, path)


def test_the_context_object_is_read_with_two_dollars() -> None:
    context = {"Map": {"Item": {"Index": 2, "Value": {"sku": "A"}}}}
    assert jsonpath.select({}, "$$.Map.Item.Value.sku", context) == "A"


# -- input and output processing (the specification's examples, through decide()) --------------
def task(**fields: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Task", "Resource": "svc.Work", "End": True, **fields}
    return {"StartAt": "Work", "States": {"Work": state}}


PROCESSING = [
    (
        "InputPath and ResultPath (the spec's 'Numbers to add')",
        {"InputPath": "$.numbers", "ResultPath": "$.sum"},
        {"title": "Numbers to add", "numbers": {"val1": 3, "val2": 4}},
        {"val1": 3, "val2": 4},
        {"value": 7},
        {"title": "Numbers to add", "numbers": {"val1": 3, "val2": 4}, "sum": {"value": 7}},
    ),
    (
        "ResultPath null keeps the raw input",
        {"ResultPath": None},
        {"a": 1},
        {"a": 1},
        {"b": 2},
        {"a": 1},
    ),
    (
        "ResultPath $ (the default) replaces the input with the result",
        {},
        {"a": 1},
        {"a": 1},
        {"b": 2},
        {"b": 2},
    ),
    (
        "Parameters with paths, a slice, the context object and States.Format (the spec's example)",
        {
            "Parameters": {
                "flagged": True,
                "parts": {"first.$": "$.vals[0]", "last3.$": "$.vals[-3:]"},
                "name.$": "$$.State.Name",
                "formattedOutput.$": "States.Format('Your name is {}, we are in the year {}', $.name, 2020)",
            }
        },
        {"flagged": 7, "vals": [0, 10, 20, 30, 40, 50], "name": "Ada"},
        {
            "flagged": True,
            "parts": {"first": 0, "last3": [30, 40, 50]},
            "name": "Work",
            "formattedOutput": "Your name is Ada, we are in the year 2020",
        },
        {"ok": True},
        {"ok": True},
    ),
    (
        "ResultSelector (the spec's createCluster example)",
        {
            "ResultSelector": {
                "ClusterId.$": "$.output.ClusterId",
                "ResourceType.$": "$.resourceType",
                "StaticValue": "foo",
            },
            "ResultPath": "$.EMROutput",
        },
        {"cluster": "x"},
        {"cluster": "x"},
        {
            "resourceType": "elasticmapreduce",
            "resource": "createCluster.sync",
            "output": {"SdkHttpMetadata": {"HttpStatusCode": 200}, "ClusterId": "AKIAIOSFODNN7EXAMPLE"},
        },
        {
            "cluster": "x",
            "EMROutput": {
                "ClusterId": "AKIAIOSFODNN7EXAMPLE",
                "ResourceType": "elasticmapreduce",
                "StaticValue": "foo",
            },
        },
    ),
    (
        "OutputPath selects part of the combined output",
        {"ResultPath": "$.result", "OutputPath": "$.result"},
        {"a": 1},
        {"a": 1},
        {"total": 5},
        {"total": 5},
    ),
    (
        "OutputPath null passes on {}",
        {"OutputPath": None},
        {"a": 1},
        {"a": 1},
        {"b": 2},
        {},
    ),
    (
        "InputPath null gives the task {}",
        {"InputPath": None, "ResultPath": "$.r"},
        {"a": 1},
        {},
        {"b": 2},
        {"a": 1, "r": {"b": 2}},
    ),
]


@pytest.mark.parametrize(
    ("fields", "state_input", "task_input", "result", "output"),
    [row[1:] for row in PROCESSING],
    ids=[row[0] for row in PROCESSING],
)
def test_input_and_output_processing_follows_the_specification(
    fields: dict[str, Any], state_input: Any, task_input: Any, result: Any, output: Any
) -> None:
    saga = given(task(**fields)).start(state_input)
    assert saga.expect_command("svc.Work").payload == task_input
    saga.reply_ok(result).expect_status("SUCCEEDED")
    assert saga.data == output


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"InputPath": "$.missing"}, "States.Runtime"),
        ({"Parameters": {"x.$": "States.ArrayLength($.a)"}}, "States.IntrinsicFailure"),
        ({"ResultPath": "$.a.deeper"}, "States.ResultPathMatchFailure"),
        ({"OutputPath": "$.nowhere"}, "States.Runtime"),
    ],
)
def test_data_errors_have_asl_names_and_can_be_caught(fields: dict[str, Any], error: str) -> None:
    document = task(**fields, Catch=[{"ErrorEquals": [error], "ResultPath": "$.caught", "Next": "Caught"}])
    document["States"]["Caught"] = {"Type": "Succeed"}
    saga = given(document).start({"a": 1})
    if saga.pending:
        saga.expect_command("svc.Work")
        saga.reply_ok({"b": 2})
    saga.expect_status("SUCCEEDED")
    assert saga.data["caught"]["Error"] == error


def test_pass_state_parameters_and_result_are_its_result() -> None:
    document = {
        "StartAt": "Shape",
        "States": {
            "Shape": {
                "Type": "Pass",
                "Parameters": {"total.$": "$.order.total", "lines.$": "States.ArrayLength($.order.items)"},
                "ResultPath": "$.shape",
                "Next": "Fixed",
            },
            "Fixed": {
                "Type": "Pass",
                "Result": {"x": 1},
                "ResultPath": "$.fixed",
                "OutputPath": "$.shape",
                "End": True,
            },
        },
    }
    saga = given(document).start({"order": {"total": 10, "items": [1, 2, 3]}}).expect_status("SUCCEEDED")
    assert saga.data == {"total": 10, "lines": 3}


# -- intrinsic functions (the specification's examples) -----------------------------------------
INTRINSICS = [
    (
        "States.Format('Welcome to {} {}\\'s playlist.', $.firstName, $.lastName)",
        {"firstName": "John", "lastName": "Doe"},
        "Welcome to John Doe's playlist.",
    ),
    ("States.Format('{} is \\{literal\\}', $.a)", {"a": 1}, "1 is {literal}"),
    ("States.StringToJson($.someString)", {"someString": '{"number": 20}'}, {"number": 20}),
    ("States.JsonToString($.someJson)", {"someJson": {"name": "Foo", "year": 2020}}, '{"name":"Foo","year":2020}'),
    (
        "States.Array('Foo', 2020, $.someJson, null)",
        {"someJson": {"random": "abcdefghij"}},
        ["Foo", 2020, {"random": "abcdefghij"}, None],
    ),
    (
        "States.ArrayPartition($.inputArray, 4)",
        {"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9]},
        [[1, 2, 3, 4], [5, 6, 7, 8], [9]],
    ),
    (
        "States.ArrayContains($.inputArray, $.lookingFor)",
        {"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9], "lookingFor": 5},
        True,
    ),
    ("States.ArrayRange(1, 9, 2)", {}, [1, 3, 5, 7, 9]),
    ("States.ArrayGetItem($.inputArray, $.index)", {"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9], "index": 5}, 6),
    ("States.ArrayLength($.inputArray)", {"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9]}, 9),
    ("States.ArrayUnique($.inputArray)", {"inputArray": [1, 2, 3, 3, 3, 3, 3, 3, 4]}, [1, 2, 3, 4]),
    ("States.Base64Encode($.input)", {"input": "Data to encode"}, "RGF0YSB0byBlbmNvZGU="),
    ("States.Base64Decode($.base64)", {"base64": "RGVjb2RlZCBkYXRh"}, "Decoded data"),
    (
        "States.Hash($.Data, $.Algorithm)",
        {"Data": "input data", "Algorithm": "SHA-1"},
        "aaff4a450a104cd177d28d18d74485e8cae074b7",
    ),
    (
        "States.JsonMerge($.json1, $.json2, false)",
        {"json1": {"a": {"a1": 1, "a2": 2}, "b": 2}, "json2": {"a": {"a3": 1, "a4": 2}, "c": 3}},
        {"a": {"a3": 1, "a4": 2}, "b": 2, "c": 3},
    ),
    ("States.MathAdd($.value1, $.step)", {"value1": 111, "step": -1}, 110),
    (
        "States.StringSplit($.inputString, $.splitter)",
        {"inputString": "1,2,3,4,5", "splitter": ","},
        ["1", "2", "3", "4", "5"],
    ),
    (
        "States.StringSplit($.inputString, $.splitter)",
        {"inputString": "This.is+a,test=string", "splitter": ".+,="},
        ["This", "is", "a", "test", "string"],
    ),
    ("States.ArrayLength(States.Array(1, 2, States.MathAdd(1, 2)))", {}, 3),
    ("States.Format('{}-release', $.orderId)", {"orderId": "ORDER#1"}, "ORDER#1-release"),
]


@pytest.mark.parametrize(("expression", "data", "expected"), INTRINSICS, ids=[e for e, _, _ in INTRINSICS])
def test_intrinsic_functions_return_what_the_specification_says(expression: str, data: Any, expected: Any) -> None:
    assert intrinsics.evaluate(expression, Scope(data)) == expected


def test_states_uuid_comes_from_the_engine() -> None:
    scope = Scope({}, new_uuid=lambda: "0e6ba43b-6d4b-4a79-9e1f-1a4f0c1e5a7d")
    assert intrinsics.evaluate("States.UUID()", scope) == "0e6ba43b-6d4b-4a79-9e1f-1a4f0c1e5a7d"


def test_states_math_random_is_drawn_from_the_engine_and_in_range() -> None:
    values = {intrinsics.evaluate("States.MathRandom(1, 3)", Scope({}, rng=random.Random(0))) for _ in range(20)}
    assert values <= {1, 2, 3}


@pytest.mark.parametrize(
    "expression",
    [
        "States.Format('{} {}', $.a)",
        "States.MathAdd($.a, 1.5)",
        "States.ArrayLength($.a)",
        "States.StringToJson('{not json')",
        "States.JsonMerge($.o, $.o, true)",
        "States.Hash($.a, 'CRC32')",
        "States.ArrayGetItem(States.Array(1), 3)",
    ],
)
def test_an_intrinsic_that_fails_raises_intrinsic_error(expression: str) -> None:
    with pytest.raises(IntrinsicError):
        intrinsics.evaluate(expression, Scope({"a": 1, "o": {}}))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("States.Nope(1)", "not a supported intrinsic function"),
        ("States.Format('x'", "missing ')'"),
        ("States.Format('x') trailing", "unexpected text"),
        ("States.Array(what)", "is not a string, number, boolean, null, path or call"),
    ],
)
def test_a_malformed_intrinsic_is_rejected_when_the_definition_loads(expression: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(task(Parameters={"x.$": expression}))


def test_io_errors_name_their_asl_error() -> None:
    with pytest.raises(io.DataError) as info:
        io.place({"a": 1}, "$.a.b", 2)
    assert info.value.error == "States.ResultPathMatchFailure"
    assert json.dumps(io.place({"a": 1}, None, 2)) == '{"a": 1}'
