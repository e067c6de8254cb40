"""The inline Map state: one lane per item, started under MaxConcurrency."""

from orchestrator.asl import io
from orchestrator.asl.intrinsics import Scope
from orchestrator.definition import MapState
from orchestrator.engine_base import RunBase
from orchestrator.state import RUNNING, Lane, child_key


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
        lanes = [
            Lane(
                key=child_key(lane.key, i),
                prefix=f"{lane.prefix}{lane.current}/{i}/",
                current=state.processor.StartAt,
                data=inputs[i],
                item={"Index": i, "Value": item},
                queued=True,
            )
            for i, item in enumerate(items)
        ]
        self.saga.set_children(lane, lanes)
        self.fill_map(lane, state)

    def fill_map(self, owner: Lane, state: MapState) -> None:
        """Start queued iterations of ``owner``'s Map while fewer than MaxConcurrency run. An iteration may end at
        once, and the Map with it (the owner then moves on, perhaps into a group of its own): re-read each time."""
        branches = self.saga.children(owner)
        while self.saga.status == RUNNING and branches and self.saga.children(owner) is branches:
            running = sum(1 for b in branches if not b.queued and b.outcome is None)
            queued = next((b for b in branches if b.queued), None)
            if queued is None or (state.MaxConcurrency and running >= state.MaxConcurrency):
                return
            queued.queued = False
            self.note("MapIterationStarted", queued, detail={"index": queued.item["Index"] if queued.item else None})
            self.enter(queued)
