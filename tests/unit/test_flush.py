"""The flush before an offset commit waits until Faust's producer buffer is empty (stream_app.flush)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from stream_app.flush import DeliveryGuard, harden

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


class Lost(Exception):
    """What the test's guard raises where the worker's exits."""


def _guard(seen: list[tuple[str, str]]) -> DeliveryGuard:
    def on_lost(topic: str, exc: BaseException) -> None:
        seen.append((topic, str(exc)))
        raise Lost(topic)

    return DeliveryGuard(on_lost)


def test_a_record_the_client_refuses_at_hand_over_goes_to_the_guard_with_its_topic() -> None:
    """aiokafka raises at once for a record over ``max_request_size``; in faust-streaming 0.15.3
    that crashed the buffer's task and left a worker that neither processed nor exited."""

    async def scenario() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        app = faust.App("persona-test-refused", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)

        async def refuse(fut: Any) -> None:
            raise RuntimeError("MessageSizeTooLargeError: 1007011 bytes")

        buffer: Any = app.producer.buffer
        buffer._send_pending = refuse
        harden(app, _guard(seen))
        fut = app.topic("persona-test-profiles-changelog").as_future_message(key=b"u1", value=b"x")
        with pytest.raises(Lost):
            await buffer._send_pending(fut)
        return seen

    assert asyncio.run(scenario()) == [("persona-test-profiles-changelog", "MessageSizeTooLargeError: 1007011 bytes")]


def test_no_commit_flush_returns_after_a_record_failed_to_be_delivered() -> None:
    """The broker's refusal arrives in a callback (Faust only logs it); the producer flush that
    a commit awaits must not return while it stands, whatever order the callbacks ran in."""

    async def scenario() -> tuple[bool, list[tuple[str, str]]]:
        seen: list[tuple[str, str]] = []
        app = _app_with_slow_sends([])
        guard = _guard(seen)
        harden(app, guard)
        buffer: Any = app.producer.buffer
        await buffer.start()
        try:
            await app.producer.flush()  # nothing failed: returns
            clean = not seen
            with pytest.raises(Lost):  # what the monitor's on_send_error does
                guard.failed("persona-test.recommendations", RuntimeError("MessageSizeTooLargeError"))
            with pytest.raises(Lost):
                await app.producer.flush()
            return clean, seen
        finally:
            await buffer.stop()

    clean, seen = asyncio.run(scenario())
    assert clean
    assert seen == [("persona-test.recommendations", "MessageSizeTooLargeError")] * 2


def test_the_monitor_passes_a_failed_send_to_the_guard_with_the_record_topic() -> None:
    from stream_app.monitor import PersonaMonitor

    seen: list[tuple[str, str]] = []
    monitor = PersonaMonitor()
    monitor.delivery = DeliveryGuard(lambda topic, exc: seen.append((topic, str(exc))))
    state = monitor.on_send_initiated(None, "persona.recommendations", None, 2, 10)
    monitor.on_send_completed(None, state, None)
    assert seen == []
    monitor.on_send_error(None, RuntimeError("TopicAuthorizationFailedError"), state)
    assert seen == [("persona.recommendations", "TopicAuthorizationFailedError")]


def test_exit_now_runs_the_hooks_then_exits_even_when_a_hook_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_app import flush

    calls: list[str] = []

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        calls.append(f"exit {code}")
        raise Exited

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("no coordinator")

    monkeypatch.setattr(flush.os, "_exit", fake_exit)
    monkeypatch.setattr(flush, "BEFORE_EXIT", [broken, lambda: calls.append("leave")])
    with pytest.raises(Exited):
        flush.exit_now("a test", 75)
    assert calls == ["broken", "leave", "exit 75"]
