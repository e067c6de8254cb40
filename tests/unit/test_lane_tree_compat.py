"""Sagas in flight when the orchestrator is upgraded to the tree of lanes: a state document the previous
engine stored (tests/unit/data/sagas-before-lane-tree.json, written by driving it) loads and finishes, its
timers (lane keys 'branch:<i>' and 'parallel') fire as before, and a saga without nesting is stored in the
same shape, so an older replica reads it too."""

import json
from pathlib import Path
from typing import Any

import pytest
from sagadsl import SagaDsl, given

from orchestrator.state import Redriven, ReplyReceived, SagaState, TimerSpec

pytestmark = pytest.mark.unit

STORED = json.loads((Path(__file__).parent / "data" / "sagas-before-lane-tree.json").read_text())["sagas"]


def resumed(name: str) -> SagaDsl:
    """A driver holding the stored saga ``name`` as the runner would load it: its state row and its timers."""
    stored = STORED[name]
    saga = given(stored["definition"])
    saga.state = SagaState.model_validate(stored["state"])
    saga.timers = {lane: TimerSpec.model_validate(timer) for lane, timer in stored["timers"].items()}
    saga.now = max((t.dueAt for t in saga.timers.values()), default=saga.now)
    return saga


def waiting(saga: SagaDsl) -> dict[str, str]:
    """Lane key -> the command id its run waits for."""
    return {
        lane.key: lane.run.commandId for lane in saga.saga.lanes() if lane.run and lane.run.phase == "waiting_reply"
    }


def reply(saga: SagaDsl, lane: str, result: dict[str, Any]) -> None:
    command = next(c for c in saga.pending if c.messageId == waiting(saga)[lane])
    saga.reply_ok(result, to=command)


def test_a_parallel_in_flight_finishes_after_its_retry_timer() -> None:
    saga = resumed("parallel")
    assert sorted(saga.timers) == ["branch:1", "parallel"]
    saga.fire_retry("branch:1")
    release = saga.expect_command("inventory.ReleaseInventory")
    assert release.attempt == 2
    saga.reply_ok({"released": True}, to=release).expect_status("SUCCEEDED")
    assert saga.data["compensation"] == [{"refunded": True}, {"released": True}]
    assert saga.timers == {}


def test_a_parallel_in_flight_still_times_out_on_its_stored_timer() -> None:
    saga = resumed("parallel").fire_parallel_timeout()
    saga.expect_status("FAILED")
    assert saga.data["error"]["Error"] == "States.Timeout"


def test_a_map_in_flight_finishes_its_running_and_queued_iterations() -> None:
    saga = resumed("map")
    assert list(waiting(saga)) == ["branch:1"]
    # The stored saga's command went out before the upgrade: its reply names the id the lane waits for.
    saga.send(ReplyReceived(commandId=waiting(saga)["branch:1"], ok=True, result={"ok": "b"}))
    third = saga.expect_command("svc.Ship")
    assert third.payload == {"sku": "c", "index": 2}
    saga.reply_ok({"ok": "c"}, to=third).expect_status("SUCCEEDED")
    assert saga.data["shipped"] == [{"ok": "a"}, {"ok": "b"}, {"ok": "c"}]


def test_a_saga_failed_in_a_parallel_is_redriven_from_its_stored_redrive_point() -> None:
    saga = resumed("parallel-failed")
    saga.send(Redriven())
    release = saga.expect_command("inventory.ReleaseInventory")
    saga.expect_no_command()  # the refund that succeeded is not run again
    saga.reply_ok({"released": True}, to=release).expect_status("SUCCEEDED")


def without_lane_groups(document: Any) -> Any:
    """``document`` less each lane's empty ``branches``: the one field the tree of lanes adds to a lane."""
    if isinstance(document, dict):
        return {k: without_lane_groups(v) for k, v in document.items() if not (k == "branches" and "key" in document)}
    if isinstance(document, list):
        return [without_lane_groups(v) for v in document]
    return document


@pytest.mark.parametrize("name", sorted(STORED))
def test_a_saga_without_nesting_is_stored_as_before(name: str) -> None:
    """As the runner writes it (model_dump): the old shape plus empty lane groups, which an older replica's Lane
    ignores (extra fields are ignored), so either version reads what the other wrote."""
    stored = STORED[name]["state"]
    written = SagaState.model_validate(stored).model_dump(mode="json")
    assert without_lane_groups(written) == stored
    assert all(lane["branches"] == [] for lane in [written["main"], *written["branches"]])
