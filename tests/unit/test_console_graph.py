"""The console's pure pieces: the workflow graph's layout and marks (orchestrator/console/graph.py), and the
session's guards (where a login may send the browser, what counts as the console's own origin)."""

import json
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from orchestrator.console import graph
from orchestrator.console.session import safe_next, same_origin
from orchestrator.definition import parse

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
        "RefundPayment": graph.Mark(visited=True, outcome="failed", runs=4, failed=True),
    }
    svg = graph.render(WORKFLOW.StartAt, WORKFLOW.States, marks)
    refund = re.search(r'<g class="([^"]*)" data-state="RefundPayment" data-status="(\w+)" data-runs="4">', svg)
    assert refund and "failed" in refund.group(1).split() and refund.group(2) == "failed"
    assert "×4" in svg and '<g class="node task visited" data-state="CheckInventory"' in svg
    assert re.search(r'<g class="node task" data-state="CommitReservation" data-status="not-run"', svg)


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
