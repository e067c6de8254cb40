"""plumbing.frames: the writer's frame source merges what is queued, in order, and releases every drain."""

import asyncio

from aiormq import connection
from aiormq.abc import ChannelFrame

from plumbing import frames


def entry(payload: bytes, *, drain: bool = False, close: bool = False) -> ChannelFrame:
    future = asyncio.get_running_loop().create_future() if drain else None
    return ChannelFrame(payload=payload, should_close=close, drain_future=future)


async def test_queued_entries_are_written_as_one_in_order_and_each_drain_is_released() -> None:
    assert frames.install()
    queue: asyncio.Queue = asyncio.Queue()
    source = connection.FrameGenerator(queue)
    parts = [entry(b"a"), entry(b"bb", drain=True), entry(b"ccc", drain=True)]
    for part in parts:
        queue.put_nowait(part)
    merged = await source.__anext__()
    assert merged.payload == b"abbccc" and not merged.should_close
    assert queue.empty()
    assert merged.should_drain
    merged.drain()
    assert all(p.drain_future.done() for p in parts if p.drain_future is not None)
    assert not merged.should_drain


async def test_a_lone_entry_goes_as_it_is_and_nothing_follows_a_close() -> None:
    assert frames.install()
    queue: asyncio.Queue = asyncio.Queue()
    source = connection.FrameGenerator(queue)
    lone = entry(b"x")
    queue.put_nowait(lone)
    assert await source.__anext__() is lone

    queue.put_nowait(entry(b"1"))
    queue.put_nowait(entry(b"2", close=True))
    queue.put_nowait(entry(b"3"))
    merged = await source.__anext__()
    assert merged.payload == b"12" and merged.should_close
    assert queue.qsize() == 1


async def test_the_merge_is_bounded() -> None:
    assert frames.install()
    queue: asyncio.Queue = asyncio.Queue()
    source = connection.FrameGenerator(queue)
    for _ in range(frames.MAX_ENTRIES + 10):
        queue.put_nowait(entry(b"."))
    merged = await source.__anext__()
    assert len(merged.payload) == frames.MAX_ENTRIES
    assert queue.qsize() == 10
