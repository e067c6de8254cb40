"""The inline Map state: one lane per item, started under MaxConcurrency."""

from orchestrator.asl import io
from orchestrator.asl.intrinsics import Scope
from orchestrator.definition import MapState
from orchestrator.engine_base import RunBase
from orchestrator.state import RUNNING, Lane


class MapSteps(RunBase):
    """The Map state's part of a run."""

    def start_map(self, lane: Lane, state: MapState) -> None:
        """One lane per item (its input: the ItemSelector, or the item), started up to MaxConcurrency at a time."""
        scope = self.scope(lane)
        try:
            data = io.path_of(lane.data, state.InputPath, scope.context)
            items = io.path_of(data, state.ItemsPath, scope.context)
            if not isinstance(items, list):
                cause = f"ItemsPath {state.ItemsPath!r} gave {type(items).__name__}, not an array"
                raise io.DataError(io.RUNTIME, cause)
            inputs = []
            for i, item in enumerate(items):
                entry = {"Index": i, "Value": item}
                if state.selector is None:
                    inputs.append(item)
                else:
                    context = {**scope.context, "Map": {"Item": entry}}
                    inputs.append(io.template(state.selector, Scope(data, context, scope.new_uuid, scope.rng)))
        except io.DataError as exc:
            self.data_failed(lane, exc, state.Catch)
            return
        self.note("MapStateEntered", lane, detail={"items": len(items), "maxConcurrency": state.MaxConcurrency})
        if not items:
            self.note("MapStateSucceeded", lane)
            self.finish_state(lane, state, [], state.Catch)
            return
        self.saga.branches = [
            Lane(
                key=f"branch:{i}",
                prefix=f"{lane.current}/{i}/",
                current=state.processor.StartAt,
                data=inputs[i],
                item={"Index": i, "Value": item},
                queued=True,
            )
            for i, item in enumerate(items)
        ]
        self.fill_map(state)

    def fill_map(self, state: MapState) -> None:
        """Start queued iterations while fewer than MaxConcurrency run (an iteration may end at once: re-read)."""
        while self.saga.status == RUNNING and self.saga.branches:
            branches = self.saga.branches
            running = sum(1 for b in branches if not b.queued and b.outcome is None)
            queued = next((b for b in branches if b.queued), None)
            if queued is None or (state.MaxConcurrency and running >= state.MaxConcurrency):
                return
            queued.queued = False
            self.note("MapIterationStarted", queued, detail={"index": queued.item["Index"] if queued.item else None})
            self.enter(queued)
