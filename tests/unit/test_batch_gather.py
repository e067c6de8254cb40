"""The batching stage (plumbing/middleware/batch.py) and the one-frame acknowledgement (acks.py), with the unit of
work a recording function: one delivery alone goes at once; those arriving while units are in hand go together,
up to the bound; a failed batch runs again one delivery at a time, each error going back to its own delivery."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from plumbing.middleware import acks
from plumbing.middleware.batch import BatchAbandoned, Gather
from plumbing.middleware.delivery import Delivery, Unit


@dataclass
class Recorder:
    """A unit of work that records the units it was given, waits while ``gate`` is closed, and fails a unit
    holding a delivery in ``failing`` (named by its message)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    units: list[list[str]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    #: A unit holding one of these waits for ``block``, not for ``gate``.
    blocking: set[str] = field(default_factory=set)
    block: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, unit: Unit) -> None:
        names = [d.message for d in unit.deliveries]  # type: ignore[misc]
        self.units.append(names)  # type: ignore[arg-type]
        await (self.block if self.blocking.intersection(names) else self.gate).wait()  # type: ignore[arg-type]
        if failed := self.failing.intersection(names):  # type: ignore[arg-type]
            raise RuntimeError(f"failed: {sorted(failed)}")


def delivery(name: str) -> Delivery:
    return Delivery(name)  # type: ignore[arg-type]


async def test_one_delivery_goes_alone_at_once() -> None:
    recorder = Recorder()
    recorder.gate.set()
    gather = Gather(run_unit=recorder.run, batch_max=8, units=2, queue="q")
    await asyncio.wait_for(gather.submit(delivery("a")), 1)
    assert recorder.units == [["a"]]


async def test_deliveries_arriving_while_units_are_in_hand_go_together_up_to_the_bound() -> None:
    recorder = Recorder()
    gather = Gather(run_unit=recorder.run, batch_max=3, units=1, queue="q")
    tasks = [asyncio.create_task(gather.submit(delivery(name))) for name in "abcdefg"]
    await asyncio.sleep(0)
    assert recorder.units == [["a"]]  # the first found the place free; the others wait
    recorder.gate.set()
    await asyncio.gather(*tasks)
    assert recorder.units == [["a"], ["b", "c", "d"], ["e", "f", "g"]]


async def test_units_in_hand_are_bounded() -> None:
    recorder = Recorder()
    gather = Gather(run_unit=recorder.run, batch_max=2, units=2, queue="q")
    tasks = [asyncio.create_task(gather.submit(delivery(name))) for name in "abcde"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert recorder.units == [["a"], ["b"]]
    recorder.gate.set()
    await asyncio.gather(*tasks)
    assert sorted(n for unit in recorder.units for n in unit) == list("abcde")
    assert max(len(unit) for unit in recorder.units) == 2


async def test_a_units_place_goes_on_once_it_committed_while_it_still_settles() -> None:
    """The place bounds the transactions, not the publishing and acknowledging after them: a unit that committed
    (Unit.committed, called by Settle) lets the next unit run while it still waits for the broker."""
    commit, confirmed = asyncio.Event(), asyncio.Event()
    started: list[list[str]] = []

    async def run(unit: Unit) -> None:
        started.append([d.message for d in unit.deliveries])  # type: ignore[misc]
        await commit.wait()
        assert unit.committed is not None
        unit.committed()  # the commit is done ...
        unit.committed()  # (a second call changes nothing)
        await confirmed.wait()  # ... the confirms are not

    gather = Gather(run_unit=run, batch_max=4, units=1, queue="q")
    tasks = [asyncio.create_task(gather.submit(delivery(name))) for name in "abc"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert started == [["a"]]  # b and c wait for the one place
    commit.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == [["a"], ["b", "c"]]  # a committed: b and c did not wait for a's confirms
    assert not any(task.done() for task in tasks)
    confirmed.set()
    await asyncio.gather(*tasks)


async def test_a_failed_batch_runs_again_one_at_a_time_and_each_error_is_its_own() -> None:
    recorder = Recorder(failing={"c"})
    gather = Gather(run_unit=recorder.run, batch_max=8, units=1, queue="q")
    tasks = {name: asyncio.create_task(gather.submit(delivery(name))) for name in "abcd"}
    await asyncio.sleep(0)
    recorder.gate.set()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert recorder.units == [["a"], ["b", "c", "d"], ["b"], ["c"], ["d"]]
    assert isinstance(tasks["c"].exception(), RuntimeError)
    assert all(tasks[name].exception() is None for name in "abd")


async def test_a_cancelled_unit_leaves_its_other_deliveries_abandoned_not_hanging() -> None:
    recorder = Recorder()
    gather = Gather(run_unit=recorder.run, batch_max=8, units=1, queue="q")
    leader = asyncio.create_task(gather.submit(delivery("a")))
    await asyncio.sleep(0)
    others = [asyncio.create_task(gather.submit(delivery(name))) for name in "bc"]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    recorder.gate.set()  # b takes the place a left, with c
    await asyncio.wait_for(asyncio.gather(*others), 1)
    assert recorder.units == [["a"], ["b", "c"]]
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_waiting_deliveries_of_a_cancelled_batch_get_batch_abandoned() -> None:
    recorder = Recorder(blocking={"b"})
    gather = Gather(run_unit=recorder.run, batch_max=8, units=1, queue="q")
    first = asyncio.create_task(gather.submit(delivery("a")))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(gather.submit(delivery(name))) for name in "bc"]
    await asyncio.sleep(0)
    recorder.gate.set()
    await first
    for _ in range(3):
        await asyncio.sleep(0)  # b runs the batch b, c, which waits
    assert recorder.units[-1] == ["b", "c"]
    waiting[0].cancel()
    with pytest.raises(BatchAbandoned):
        await waiting[1]


@dataclass
class Message:
    """What acks reads of an aio-pika delivery, and what it sends."""

    delivery_tag: int
    channel: Any
    sent: list[tuple[int, bool]]

    async def ack(self, multiple: bool = False) -> None:
        self.sent.append((self.delivery_tag, multiple))


class Channel:
    pass


async def test_a_batch_is_acknowledged_with_one_frame_only_when_nothing_below_it_is_in_hand() -> None:
    channel, sent = Channel(), []
    messages = {tag: Message(tag, channel, sent) for tag in range(1, 8)}
    acks.finished(messages[1])  # 1 is done (acknowledged alone); 2 is in another unit's hands
    await acks.ack_all([messages[3], messages[4]])
    assert sent == [(3, False), (4, False)]
    for tag in (3, 4, 2):
        acks.finished(messages[tag])
    sent.clear()
    await acks.ack_all([messages[6], messages[5], messages[7]])
    assert sent == [(7, True)]


async def test_a_channel_whose_frontier_never_moves_is_no_longer_followed() -> None:
    channel, sent = Channel(), []
    never = 1  # tag 1 never comes through the pipeline
    for tag in range(never + 1, never + acks.MAX_DONE_AHEAD + 3):
        acks.finished(Message(tag, channel, sent))
    first, second = Message(10_000, channel, sent), Message(10_001, channel, sent)
    await acks.ack_all([first, second])
    assert sent == [(10_000, False), (10_001, False)]
