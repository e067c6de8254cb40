"""Choice and Wait: the states that pick a way or hold the lane, without a command."""

from datetime import datetime, timedelta
from typing import Any

from orchestrator.asl import choice, io
from orchestrator.asl.choice import parse_timestamp
from orchestrator.definition import NO_CHOICE_MATCHED, ChoiceState, WaitState
from orchestrator.engine_base import RunBase
from orchestrator.state import ErrorOut, Lane, TimerFired, TimerSpec


class ChoiceAndWait(RunBase):
    """The Choice and Wait states' part of a run."""

    def wait(self, lane: Lane, state: WaitState) -> None:
        """Set the lane's durable timer for the Wait's time; a time already past goes on at once."""
        scope = self.scope(lane)
        try:
            data = io.path_of(lane.data, state.InputPath, scope.context)
            due = self._due(state, data, scope.context)
        except io.DataError as exc:
            self.data_failed(lane, exc, [])
            return
        if due <= self.ctx.now:
            self.note("WaitStateEntered", lane, detail={"until": due.isoformat(), "waited": False})
            self.wait_over(lane, state)
            return
        lane.waitToken = f"wait:{lane.current}:{self.ctx.new_id()}"
        self.timers[lane.key] = TimerSpec(token=lane.waitToken, dueAt=due, kind="wait")
        self.note("WaitStateEntered", lane, detail={"until": due.isoformat()})

    def _due(self, state: WaitState, data: Any, context: Any) -> datetime:
        if state.Seconds is not None:
            return self.ctx.now + timedelta(seconds=state.Seconds)
        if state.Timestamp is not None:
            stamp = parse_timestamp(state.Timestamp)
            assert stamp is not None, "checked when the definition loaded"
            return stamp
        if state.SecondsPath is not None:
            seconds = io.path_of(data, state.SecondsPath, context)
            whole = isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds == int(seconds)
            if not whole or seconds < 0:
                cause = f"SecondsPath {state.SecondsPath!r} gave {seconds!r}, not a whole number >= 0"
                raise io.DataError(io.RUNTIME, cause)
            return self.ctx.now + timedelta(seconds=int(seconds))
        text = io.path_of(data, state.TimestampPath, context)
        stamp = parse_timestamp(text) if isinstance(text, str) else None
        if stamp is None:
            cause = f"TimestampPath {state.TimestampPath!r} gave {text!r}, not an RFC 3339 timestamp"
            raise io.DataError(io.RUNTIME, cause)
        return stamp

    def on_wait_timer(self, lane: Lane, event: TimerFired) -> None:
        """The lane's Wait is over when its own timer fires (an older token does nothing)."""
        if event.token != lane.waitToken:
            return
        self.timers[lane.key] = None
        self.note("WaitStateExited", lane)
        state = self.wf.state(lane.prefix + (lane.current or ""))
        assert isinstance(state, WaitState)
        self.wait_over(lane, state)

    def wait_over(self, lane: Lane, state: WaitState) -> None:
        lane.waitToken = None
        try:
            lane.data = io.path_of(io.path_of(lane.data, state.InputPath), state.OutputPath)
        except io.DataError as exc:
            self.data_failed(lane, exc, [])
            return
        self.advance(lane, state.Next, state.End)

    def choose(self, lane: Lane, state: ChoiceState) -> None:
        """The first rule that holds picks the Next; the output is the input through InputPath and OutputPath."""
        scope = self.scope(lane)
        try:
            data = io.path_of(lane.data, state.InputPath, scope.context)
            chosen = next((r["Next"] for r in state.Choices if choice.matches(r, data, scope.context)), state.Default)
            output = io.path_of(data, state.OutputPath, scope.context)
        except choice.ChoiceError as exc:
            self.data_failed(lane, io.DataError(io.RUNTIME, str(exc)), [])
            return
        except io.DataError as exc:
            self.data_failed(lane, exc, [])
            return
        if chosen is None:
            self.note("ChoiceStateFailed", lane, error=NO_CHOICE_MATCHED)
            self.lane_failed(lane, ErrorOut(Error=NO_CHOICE_MATCHED, Cause=f"no rule of {lane.current} matched"))
            return
        self.note("ChoiceStateEntered", lane, detail={"next": chosen})
        lane.data = output
        lane.current = chosen
        self.enter(lane)
