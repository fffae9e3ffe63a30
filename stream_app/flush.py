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

A record handed over is not yet a record delivered. When the broker refuses one (a record larger
than the topic's ``max.message.bytes``, a missing WRITE ACL, a batch that expired), aiokafka fails
its future, and Faust only logs it (``Topic._on_published`` calls the sensors' ``on_send_error``);
a record the client refuses at once (larger than ``max_request_size``) crashed the buffer's task and
left a worker that neither processed nor exited. Either way the next commit went past the events
whose output was lost. A :class:`DeliveryGuard` hears of both and restarts the worker from its
committed offsets, so the events are processed and their output produced again; it also checks,
after every producer flush a commit awaits, that nothing failed, so no commit follows a failure
whatever order the callbacks run in. A refusal that persists keeps the partition from moving on,
loudly (Kafka Streams' default production exception handler fails the same way), rather than
losing every output behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from stream_app.supervise import RESTART_EXIT_CODE

log = logging.getLogger("persona.flush")

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


def restart_from_committed(topic: str, exc: BaseException) -> None:
    """A worker's answer to output it could not deliver: exit at once, before any further commit,
    asking the supervisor for a restart (the events since the last commit are processed again)."""
    restart_now(
        f"output to {topic} was not delivered ({type(exc).__name__}: {exc}): "
        "restarting from the committed offsets; nothing is committed past it"
    )


def restart_now(reason: str) -> NoReturn:
    """Log ``reason`` and exit at once with the code that asks the supervisor for a restart
    (``stream_app.supervise``): no commit, no shutdown that could commit."""
    exit_now(reason, RESTART_EXIT_CODE)


#: Called by :func:`exit_now` after the reason is logged and before the exit (the worker's: a
#: dynamic group member leaves its group). Each must be quick and commit nothing.
BEFORE_EXIT: list[Callable[[], None]] = []


def exit_now(reason: str, code: int) -> NoReturn:
    """Log ``reason`` and end the process at once with ``code``: no commit, no shutdown (but
    :data:`BEFORE_EXIT`)."""
    log.error("%s", reason)
    for hook in BEFORE_EXIT:
        try:
            hook()
        except Exception as exc:  # the exit must happen whatever a hook does
            log.warning("before exit: %s failed: %r", getattr(hook, "__name__", hook), exc)
    logging.shutdown()
    os._exit(code)


class DeliveryGuard:
    """Hears of every record the Kafka client failed to deliver (see the module docstring).

    ``on_lost(topic, error)`` is called at the first failure and again by :meth:`check` while it
    stands; the worker's (:func:`restart_from_committed`) exits the process, so nothing after it runs."""

    def __init__(self, on_lost: Callable[[str, BaseException], None] = restart_from_committed) -> None:
        self._on_lost = on_lost
        #: the first failure: (topic, error)
        self.lost: tuple[str, BaseException] | None = None

    def failed(self, topic: str, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = (topic, exc)
        self._on_lost(topic, exc)

    def check(self) -> None:
        """Called after a flush a commit awaits: a failure seen so far stops the commit."""
        if self.lost is not None:
            self._on_lost(*self.lost)


def _topic_of(fut: Any) -> str:
    try:
        return str(fut.message.channel.get_topic_name())
    except Exception:  # a name for the log line only
        return "?"


def harden(app: Any, guard: DeliveryGuard | None = None) -> DeliveryGuard:
    """Make ``app.producer.buffer.flush``, awaited before every offset commit, wait for every
    record, and let no commit follow a record that failed (see the module docstring). Call it
    before the app starts: the buffer's task binds the send it uses when it starts. The returned
    guard also hears of failures the client reports later: the app's monitor passes its
    ``on_send_error`` on to :meth:`DeliveryGuard.failed`."""
    guard = guard or DeliveryGuard()
    buffer = app.producer.buffer
    hand_over: Callable[[Any], Awaitable[None]] = buffer._send_pending
    in_hand = [0]

    async def send_pending(fut: Any) -> None:
        in_hand[0] += 1
        try:
            await hand_over(fut)
        except Exception as exc:  # refused by the client before it was queued: never delivered
            guard.failed(_topic_of(fut), exc)
            raise
        finally:
            in_hand[0] -= 1

    buffer._send_pending = send_pending
    buffer.flush = functools.partial(flush_until_empty, buffer, lambda: in_hand[0])

    producer = app.producer
    flush: Callable[[], Awaitable[None]] = producer.flush

    async def flush_checked() -> None:
        await flush()
        guard.check()

    producer.flush = flush_checked
    return guard
