"""Acknowledge a batch with one ``basic.ack`` (``multiple=True``) when that acknowledges nothing else.

``multiple=True`` acknowledges every unacknowledged delivery of the channel up to its tag, whichever consumer
holds it: a delivery still in another batch's hands, or one of the other queue sharing the channel, would be
acknowledged before it was committed. So each channel's deliveries are followed from their receiving to the
end of their way through the pipeline (settled, one way or another): delivery tags are consecutive per
channel, so ``frontier`` is the lowest tag not yet done, and a batch whose tags, with those done, cover every
tag from the frontier to its highest is acknowledged with one frame. Otherwise each delivery is acknowledged
alone, as without batching. A channel the broker reopened numbers its deliveries afresh: it is another channel
object, followed apart.
"""

import weakref
from collections.abc import Sequence

from aio_pika.abc import AbstractIncomingMessage

#: Deliveries done above a frontier that does not move (a delivery that never came through the pipeline) after
#: which a channel is no longer followed: its batches are then acknowledged one delivery at a time.
MAX_DONE_AHEAD = 4096


class _Channel:
    """One channel's deliveries that ended their way through the pipeline, above the frontier."""

    __slots__ = ("done", "frontier", "stalled")

    def __init__(self) -> None:
        self.frontier = 1  # the first delivery tag of a channel
        self.done: set[int] = set()
        self.stalled = False


_channels: "weakref.WeakKeyDictionary[object, _Channel]" = weakref.WeakKeyDictionary()


def _followed(message: AbstractIncomingMessage) -> _Channel:
    channel = _channels.get(message.channel)
    if channel is None:
        channel = _channels[message.channel] = _Channel()
    return channel


def finished(message: AbstractIncomingMessage) -> None:
    """The delivery ended its way through the pipeline: acknowledged, requeued or dead-lettered."""
    if message.delivery_tag is None:
        return
    channel = _followed(message)
    if channel.stalled:
        return
    channel.done.add(message.delivery_tag)
    while channel.frontier in channel.done:
        channel.done.discard(channel.frontier)
        channel.frontier += 1
    if len(channel.done) > MAX_DONE_AHEAD:
        channel.stalled = True
        channel.done.clear()


async def ack_all(messages: Sequence[AbstractIncomingMessage]) -> None:
    """Acknowledge ``messages`` (all committed, and what they caused confirmed): one frame when nothing else is
    unacknowledged below the highest of them on their channel, else one each."""
    tags = {m.delivery_tag for m in messages}
    top = max(messages, key=lambda m: m.delivery_tag or 0)
    same_channel = all(m.channel is top.channel for m in messages)
    if len(messages) > 1 and same_channel and None not in tags:
        channel = _followed(top)
        assert top.delivery_tag is not None
        below = range(channel.frontier, top.delivery_tag + 1)
        if not channel.stalled and all(tag in tags or tag in channel.done for tag in below):
            await top.ack(multiple=True)
            return
    for message in messages:
        await message.ack()
