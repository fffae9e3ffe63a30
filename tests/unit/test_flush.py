"""The flush before an offset commit waits until Faust's producer buffer is empty (stream_app.flush)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from stream_app.flush import harden

#: Longer than the 0.1 s that Faust's ProducerBuffer.flush waits for one message to leave.
SLOW_SEND_S = 0.25


def _app_with_slow_sends(sent: list[Any]) -> faust.App:
    """A real Faust app (never connected) whose producer buffer sends one record per SLOW_SEND_S."""
    app = faust.App("persona-test-flush", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)

    async def slow_send(fut: Any) -> None:
        await asyncio.sleep(SLOW_SEND_S)
        sent.append(fut)

    # Before the buffer starts: its sending task binds _send_pending when it starts.
    buffer: Any = app.producer.buffer
    buffer._send_pending = slow_send
    return app


def test_regression_commit_flush_returned_with_records_still_in_the_producer_buffer() -> None:
    """faust-streaming 0.15.3's ProducerBuffer.flush gives up after 0.1 s without a record leaving
    (and ignores the record being handed over), so the commit that awaited it went ahead past
    records never produced. This pins that behaviour of the library: if a release fixes it, this
    test says so."""

    async def scenario() -> int:
        sent: list[Any] = []
        buffer: Any = _app_with_slow_sends(sent).producer.buffer
        await buffer.start()
        try:
            for i in range(3):
                buffer.put(f"record-{i}")
            await buffer.flush()
            return len(sent)
        finally:
            await asyncio.sleep(4 * SLOW_SEND_S)  # the rest go out; stopping with records left raises
            await buffer.stop()

    assert asyncio.run(scenario()) < 3


def test_hardened_flush_returns_only_when_every_buffered_record_was_sent_in_order() -> None:
    async def scenario() -> tuple[int, list[Any]]:
        sent: list[Any] = []
        app = _app_with_slow_sends(sent)
        harden(app)
        buffer: Any = app.producer.buffer
        await buffer.start()
        try:
            records = [f"record-{i}" for i in range(3)]
            for r in records:
                buffer.put(r)
            await app.producer.buffer.flush()  # what Faust's commit awaits, through the producer
            return buffer.size, sent
        finally:
            await buffer.stop()

    left, sent = asyncio.run(scenario())
    assert left == 0
    assert sent == ["record-0", "record-1", "record-2"]


def test_hardened_flush_of_an_empty_buffer_returns_at_once() -> None:
    async def scenario() -> int:
        app = _app_with_slow_sends([])
        harden(app)
        await app.producer.buffer.start()
        try:
            await asyncio.wait_for(app.producer.buffer.flush(), timeout=SLOW_SEND_S)
            return app.producer.buffer.size
        finally:
            await app.producer.buffer.stop()

    assert asyncio.run(scenario()) == 0


def test_stopping_with_a_record_in_hand_waits_for_it_instead_of_raising() -> None:
    """The buffer flushes itself when it stops; its task finishes the record it holds, so that
    record is waited for, not reported as lost."""

    async def scenario() -> list[Any]:
        sent: list[Any] = []
        app = _app_with_slow_sends(sent)
        harden(app)
        buffer: Any = app.producer.buffer
        await buffer.start()
        buffer.put("record-0")
        while buffer.size:  # the task has taken it and is handing it over
            await asyncio.sleep(0.01)
        await buffer.stop()
        return sent

    assert asyncio.run(scenario()) == ["record-0"]
