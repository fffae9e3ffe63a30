"""A commit must not pass output that has not reached the Kafka client yet.

The worker hands recommendations and scoring deltas to ``Topic.send_soon``, and Faust's tables
send their changelog records the same way (the profiles a rebalanced partition is restored
from); ``send_soon`` puts them in Faust's ``ProducerBuffer``; one task takes them from there and hands them to aiokafka, one
at a time. Before committing offsets, Faust awaits ``app.producer.flush()``: first
``ProducerBuffer.flush()``, then aiokafka's flush of what aiokafka holds. In faust-streaming
0.15.3 the first of these can return early in two ways:

- it waits for one record at a time to leave the buffer and *returns* as soon as 0.1 s go by
  without one doing so, records still queued;
- it looks only at the queue, so the record the task has taken and is still handing to
  aiokafka counts for nothing; that record is in neither place either flush waits on.

A hand-over waits whenever the partition's batch is full and the previous one is still on its
way (aiokafka keeps one request in flight per broker; ``acks=all``): while the broker is slow or
the machine busy. The commit then went ahead past events whose output had not been produced,
and a crash at that moment lost it for good: a user's recommendations stayed stale, a scoring
delta never reached any worker (the deltas topic is also what a restarted worker rebuilds its
shared state from), and a profile update never reached the changelog that another worker
would restore the partition from.

:func:`harden` counts the record being handed over and makes the buffer's flush wait until the
queue is empty and nothing is being handed over. A flush that cannot finish (the broker gone)
keeps the commit waiting, which is at-least-once's side: the stall detector
(``stream_app.supervise``) restarts a worker whose commit stays stuck while the broker is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

#: How long one wait for a record to leave lasts before the flush looks again (Faust's 0.1 s).
POLL_S = 0.1


async def flush_until_empty(buffer: Any, sending: Callable[[], int]) -> None:
    """Wait until ``buffer`` (a Faust ``ProducerBuffer``) holds nothing and ``sending()``, the
    records its task is handing to the client, is 0. Raises, as Faust's own flush does, when the
    buffer is stopping with records still queued: its task takes no more, so waiting would never
    end. A record already in hand is waited for, stopping or not: the task finishes it (it stops
    between records), and a hand-over that fails or is cancelled stops counting."""
    while buffer.size or sending():
        if buffer.size and buffer.state != "running":
            raise RuntimeError("Cannot flush: Producer not Running")
        buffer.message_sent.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(buffer.message_sent.wait(), timeout=POLL_S)


def harden(app: Any) -> None:
    """Make ``app.producer.buffer.flush``, awaited before every offset commit, wait for every
    record (see the module docstring). Call it before the app starts: the buffer's task binds
    the send it uses when it starts."""
    buffer = app.producer.buffer
    hand_over: Callable[[Any], Awaitable[None]] = buffer._send_pending
    in_hand = [0]

    async def send_pending(fut: Any) -> None:
        in_hand[0] += 1
        try:
            await hand_over(fut)
        finally:
            in_hand[0] -= 1

    buffer._send_pending = send_pending
    buffer.flush = functools.partial(flush_until_empty, buffer, lambda: in_hand[0])
