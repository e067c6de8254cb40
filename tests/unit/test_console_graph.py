"""The console's pure pieces: the workflow graph's layout and marks (orchestrator/console/graph.py), and the
session's guards (where a login may send the browser, what counts as the console's own origin)."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from orchestrator.api_models import HistoryEvent
from orchestrator.console import graph
from orchestrator.console.saga_page import marks_of
from orchestrator.console.session import safe_next, same_origin
from orchestrator.definition import engine_document, parse

pytestmark = pytest.mark.unit

WORKFLOW = parse(json.loads((Path(__file__).parents[2] / "orchestrator/workflow.json").read_text()))


def test_every_state_is_a_node_and_the_main_path_runs_down_the_first_column() -> None:
    scope = graph.layout(WORKFLOW.StartAt, WORKFLOW.States)
    assert scope.nodes.keys() == WORKFLOW.States.keys()
    main = ["CheckInventory", "ReserveInventory", "ProcessPayment", "CreateOrderRecord", "CommitReservation"]
    assert [scope.nodes[n].col for n in main] == [0] * len(main)
    ys = [scope.nodes[n].y for n in main]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)
    assert all(scope.nodes[n].col > 0 for n in WORKFLOW.States if n not in main + ["NotifyCustomer", "OrderSuccess"])


def test_parallel_branches_sit_side_by_side_inside_their_state() -> None:
    scope = graph.layout(WORKFLOW.StartAt, WORKFLOW.States)
    parallel = scope.nodes["RefundPaymentAndRelease"]
    assert len(parallel.branches) == 3
    tops = [next(iter(b.nodes.values())) for b in parallel.branches]
    assert len({t.y for t in tops}) == 1, "one row"
    assert parallel.w >= sum(b.w for b in parallel.branches), "the branches fit in their state"


def test_marks_become_classes_and_counts() -> None:
    marks = {
        "CheckInventory": graph.Mark(visited=True, outcome="succeeded", runs=1),
        "RefundPaymentAndRelease/0/RefundPayment": graph.Mark(visited=True, outcome="failed", runs=4, failed=True),
    }
    svg = graph.render(WORKFLOW.StartAt, WORKFLOW.States, marks)
    refund = re.search(
        r'<g class="([^"]*)" data-state="RefundPayment" data-path="RefundPaymentAndRelease/0/RefundPayment" '
        r'data-status="(\w+)" data-runs="4">',
        svg,
    )
    assert refund and "failed" in refund.group(1).split() and refund.group(2) == "failed"
    assert "×4" in svg and '<g class="node task visited" data-state="CheckInventory"' in svg
    assert re.search(r'<g class="node task" data-state="CommitReservation" data-path="\w+" data-status="not-run"', svg)


def test_names_are_escaped() -> None:
    states = {"<b>": parse({"StartAt": "<b>", "States": {"<b>": {"Type": "Succeed"}}}).States["<b>"]}
    svg = graph.render("<b>", states, {})
    assert "<b>" not in svg.replace('<g class="node succeed"', "") and "&lt;b&gt;" in svg


def test_a_login_goes_back_only_into_the_console() -> None:
    assert safe_next("/console/sagas/ORDER%23123") == "/console/sagas/ORDER%23123"
    for elsewhere in ("https://evil.example/", "//evil.example/console/", "/api/v1/sagas", None, "/console\\x"):
        assert safe_next(elsewhere) == "/console/"


def test_same_origin_needs_an_origin_naming_the_host() -> None:
    def request(origin: str | None):
        headers = {"Host": "console.example:8080"} | ({"Origin": origin} if origin else {})
        return make_mocked_request("POST", "/console/logout", headers=headers)

    assert same_origin(request("http://console.example:8080"))
    assert same_origin(request("https://console.example:8080"))  # TLS ended in front
    for bad in (None, "null", "http://evil.example", "http://console.example:8081"):
        assert not same_origin(request(bad)), bad


def history(*rows: tuple[str, str | None, str]) -> list[HistoryEvent]:
    at = datetime(2026, 12, 6, tzinfo=UTC)
    return [
        HistoryEvent(
            id=i, at=at, event=e, state=s, lane=lane, attempt=None, commandId=None, error=None, cause=None, detail=None
        )
        for i, (e, s, lane) in enumerate(rows)
    ]


def test_a_step_name_in_two_groups_is_marked_only_where_the_saga_ran_it() -> None:
    """The stored engine form names RefundPayment in both compensation Parallels (the sidecar's Step maps
    RefundUnknownPayment back): a saga that ran RefundPaymentAndRelease leaves PaymentOutcomeUnknown's unmarked."""
    marks = marks_of(
        history(
            ("TaskScheduled", "CreateOrderRecord", "main"),
            ("TaskFailed", "CreateOrderRecord", "main"),
            ("ParallelStateEntered", "RefundPaymentAndRelease", "main"),
            ("TaskScheduled", "RefundPayment", "branch:0"),
            ("TaskFailed", "RefundPayment", "branch:0"),
            ("TaskScheduled", "RefundPayment", "branch:0"),
            ("TaskSucceeded", "RefundPayment", "branch:0"),
            ("TaskScheduled", "ReleaseInventory", "branch:1"),
            ("TaskSucceeded", "ReleaseInventory", "branch:1"),
        )
    )
    refund = marks["RefundPaymentAndRelease/0/RefundPayment"]
    assert refund.visited and refund.runs == 2 and refund.outcome == "succeeded" and not refund.failed
    assert marks["RefundPaymentAndRelease/1/ReleaseInventory"].outcome == "succeeded"
    assert marks["CreateOrderRecord"].failed
    assert not any(path.startswith("PaymentOutcomeUnknown/") for path in marks)
    engine_form = parse(engine_document())  # what the console draws: the stored version, Step names applied
    svg = graph.render(engine_form.StartAt, engine_form.States, marks)
    assert 'class="node task visited" data-state="ReleaseInventory" data-path="RefundPaymentAndRelease/1/' in svg
    assert 'class="node task" data-state="RefundPayment" data-path="PaymentOutcomeUnknown/0/RefundPayment"' in svg


def test_lanes_of_nested_groups_and_map_iterations_find_their_states() -> None:
    marks = marks_of(
        history(
            ("ParallelStateEntered", "Outer", "main"),
            ("MapStateEntered", "Lines", "branch:1"),
            ("TaskScheduled", "Reserve", "branch:1.0"),
            ("TaskScheduled", "Reserve", "branch:1.1"),
            ("TaskTimedOut", "Reserve", "branch:1.1"),
        )
    )
    reserve = marks["Outer/1/Lines/0/Reserve"]
    assert reserve.runs == 2 and reserve.failed and reserve.outcome == "timed_out"
    assert marks["Outer/1/Lines"].visited and marks["Outer"].visited
