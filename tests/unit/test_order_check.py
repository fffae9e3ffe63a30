"""The gap guard's adapter (stream_app.order_check): when a partition's first record after an
assignment is past where it should start, the broker decides between a takeover (the previous
owner committed past it: go on), retention (the records are gone: go on) and a drop (restart),
and a restart says what each source answered. Faust's consumer is a stand-in with the two things
the adapter reads (its committed-offset cache and the log's start); the group's committed offset
is ``kafka_clients.group_committed``, replaced here by a recorded answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types import TP

from stream_app.order_check import OrderCheck
from stream_app.settings import Settings

TOPIC = "t.purchases"


@dataclass
class Consumer:
    committed: dict[Any, int] = field(default_factory=dict)
    earliest: int = 0
    earliest_calls: int = 0

    @property
    def _committed_offset(self) -> dict[Any, int]:
        return self.committed

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        self.earliest_calls += 1
        return {tp: self.earliest for tp in tps}


@dataclass
class App:
    consumer: Consumer


@dataclass
class Msg:
    offset: int
    partition: int = 3
    topic: str = TOPIC


class Broker:
    """``group_committed``'s answers, and the calls made."""

    def __init__(self, answer: int | None | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, int]] = []

    def __call__(self, settings: Settings, group: str, topic: str, partition: int, timeout_s: float = 10.0) -> int | None:
        self.calls.append((group, topic, partition))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _check(consumer: Consumer, offsets: list[int], broker: Broker, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    monkeypatch.setattr("stream_app.order_check.group_committed", broker)
    order = OrderCheck(App(consumer), Settings())  # type: ignore[arg-type]  # a stand-in for faust.App

    async def run() -> list[str | None]:
        out: list[str | None] = []
        for offset in offsets:
            decision = await order.check(Msg(offset))
            out.append(None if decision is None else decision.reason)
            if decision is not None:
                break
        return out

    return asyncio.run(run())


def test_a_takeover_past_what_faust_knows_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous owner committed 500 after Faust read its cache: no restart, one broker call."""
    broker = Broker(500)
    assert _check(Consumer(), [500, 501, 502], broker, monkeypatch) == [None, None, None]
    assert broker.calls == [(Settings().app_id, TOPIC, 3)]


@pytest.mark.parametrize(("answer", "said"), [(300, "300"), (None, "none"), (OSError("broker gone"), "unreadable (OSError: broker gone)")])
def test_a_restart_after_a_takeover_says_what_each_source_answered(
    monkeypatch: pytest.MonkeyPatch, answer: int | None | Exception, said: str
) -> None:
    (reason,) = _check(Consumer(earliest=0), [500], Broker(answer), monkeypatch)
    assert reason is not None
    assert reason.startswith(f"{TP(TOPIC, 3)}: offset 500 reached the agent but 0 never did (faust#596)")
    assert reason.endswith(f"(Faust's committed offset: None; the log's start: 0; the group's committed offset from the broker: {said})")


def test_faust_committed_offset_is_named_too(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer(committed={TP(TOPIC, 3): 200}, earliest=0)
    (reason,) = _check(consumer, [500], Broker(250), monkeypatch)
    assert reason is not None and "but 200 never did" in reason
    assert "Faust's committed offset: 200; the log's start: 0; the group's committed offset from the broker: 250" in reason


def test_records_deleted_by_retention_are_not_a_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker(None)
    assert _check(Consumer(earliest=500), [500, 501], broker, monkeypatch) == [None, None]
    assert broker.calls == []  # the log's start settles it


def test_a_jump_after_the_first_record_restarts_without_asking_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer(committed={TP(TOPIC, 3): 10})
    broker = Broker(10_000)
    reasons = _check(consumer, [10, 11, 13], broker, monkeypatch)
    assert reasons[:2] == [None, None]
    assert reasons[2] == f"{TP(TOPIC, 3)}: offset 13 reached the agent but 12 never did (faust#596)"
    assert broker.calls == [] and consumer.earliest_calls == 0


def test_offset_zero_first_needs_no_broker_call(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer()
    broker = Broker(None)
    assert _check(consumer, [0, 1, 2], broker, monkeypatch) == [None, None, None]
    assert broker.calls == [] and consumer.earliest_calls == 0
