"""The starved-partition watchdog: an idle worker that owns a partition with records it never
reads restarts; a busy, waiting, recovering or quiet one does not."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.starvation import FLOOR_S, PAUSE_ENV, Marks, StarvationDetector, check, waiting
from stream_app.supervise import Progress, Restart


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Message:
    tp: TP
    acked: bool = False


@dataclass
class Queue:
    items: int = 0

    def qsize(self) -> int:
        return self.items


@dataclass
class Channel:
    queue: Queue = field(default_factory=Queue)


@dataclass
class Buffer:
    size: int = 0


@dataclass
class Producer:
    buffer: Buffer = field(default_factory=Buffer)


@dataclass
class Consumer:
    """What the check reads of Faust's consumer: its bookkeeping and two broker calls."""

    assigned: set[TP]
    _committed_offset: dict[TP, int | None]
    ends: dict[TP, int]
    starts: dict[TP, int] = field(default_factory=dict)
    _read_offset: dict[TP, int | None] = field(default_factory=dict)
    _unacked_messages: set[int] = field(default_factory=set)
    unacked: list[Message] = field(default_factory=list)
    paused: set[TP] = field(default_factory=set)
    asked_ends: list[tuple[TP, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._unacked_messages = self.unacked  # type: ignore[assignment]

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        self.asked_ends.append(tps)
        return {tp: self.ends[tp] for tp in tps}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.starts[tp] for tp in tps}

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        self.paused.update(tps)


@dataclass
class App:
    consumer: Consumer
    topics: list[Channel] = field(default_factory=lambda: [Channel(), Channel()])
    producer: Producer = field(default_factory=Producer)
    rebalancing: bool = False
    in_recovery: bool = False


CLICKS0, CLICKS1, ITEMS0 = TP("clicks", 0), TP("clicks", 1), TP("items", 0)
INPUTS = {"clicks"}


def _app(committed: dict[TP, int | None], ends: dict[TP, int], **kw: object) -> App:
    return App(Consumer(set(committed) | {ITEMS0}, dict(committed) | {ITEMS0: 3}, dict(ends) | {ITEMS0: 9}, **kw))  # type: ignore[arg-type]


def _tick(app: App, detector: StarvationDetector, progress: Progress, now: float, broker_up: bool = True) -> Restart | None:
    return asyncio.run(check(app, detector, INPUTS, progress, lambda: now, broker_up))


def _ticks(app: App, detector: StarvationDetector, progress: Progress, times: Iterable[float]) -> list[Restart | None]:
    return [_tick(app, detector, progress, float(t)) for t in times]


def test_regression_a_partition_left_behind_after_a_rebalance_restarts_the_idle_worker() -> None:
    """The chaos CI run of acefcad: after a rebalance one partition stayed 471 records behind for
    300 s on a live, idle worker, and nothing restarted it."""
    app = _app({CLICKS0: 1200, CLICKS1: 530}, {CLICKS0: 1200, CLICKS1: 1001})
    progress = Progress()
    progress.done("clicks", 0, 1199)
    detector = StarvationDetector(stall_s=30.0)
    # First tick: the marks are new. Second: unchanged, records seen waiting: the clock starts.
    assert _ticks(app, detector, progress, range(0, 35, 5)) == [None] * 7
    decision = _tick(app, detector, progress, 35.0)  # 30 s after the records were first seen
    assert decision is not None and decision.label() == "starved_partition"
    assert "'clicks:1': 471" in decision.reason  # 1001 - 530 records behind, the partition named
    assert "clicks:0" not in decision.reason  # caught up: quiet, not starved
    # Only input partitions' end offsets were asked for, never the catalog's.
    assert all(ITEMS0 not in asked for asked in app.consumer.asked_ends) and app.consumer.asked_ends


def test_regression_records_arriving_on_a_long_quiet_partition_are_not_late() -> None:
    """The first version timed a partition from its marks' last move: records published to a
    partition quiet since the worker started were 'unread for 1 s' the moment they arrived,
    and a healthy worker restarted before its fetch came back (the catalog-encode watchdog
    test, stall_timeout_s=1, in the CI run of dba92ef). The clock starts at the first sight
    of records waiting."""
    app = _app({CLICKS0: 0}, {CLICKS0: 0})
    detector = StarvationDetector(stall_s=1.0)
    assert _ticks(app, detector, Progress(), range(0, 3600, 5)) == [None] * 720  # an hour, quiet
    app.consumer.ends[CLICKS0] = 640  # records arrive; the fetch has not come back yet
    assert _ticks(app, detector, Progress(), [3600.0, 3605.0, 3609.9]) == [None] * 3
    # Stalls shorter than FLOOR_S are not trusted to this check: 10 s, not the 1 s asked for.
    assert detector.wait_s == FLOOR_S == 10.0
    assert _tick(app, detector, Progress(), 3610.0) is not None
    # Had the fetch come back (the read offset moved), no restart.
    app = _app({CLICKS0: 0}, {CLICKS0: 0})
    detector = StarvationDetector(stall_s=1.0)
    assert _ticks(app, detector, Progress(), [0.0, 5.0]) == [None] * 2
    app.consumer.ends[CLICKS0] = 640
    assert _ticks(app, detector, Progress(), [6.0, 12.0]) == [None] * 2
    app.consumer._read_offset[CLICKS0] = 63
    assert _ticks(app, detector, Progress(), [16.0, 17.0, 26.9]) == [None] * 3  # a new clock at 17
    assert _tick(app, detector, Progress(), 27.0) is not None  # ...which ran out: stuck after one fetch


def test_a_busy_worker_is_never_taken_for_a_starved_one() -> None:
    """A message in an agent's hands (a long encode), an event queued for an agent (one waiting
    for the catalog before its first record) or output waiting to be produced: not idle."""
    for busy in ("unacked", "queued", "producing"):
        app = _app({CLICKS0: 10, CLICKS1: 10}, {CLICKS0: 500, CLICKS1: 500})
        detector = StarvationDetector(stall_s=4.0)
        if busy == "unacked":
            app.consumer.unacked.append(Message(CLICKS0))
        elif busy == "queued":
            app.topics[1].queue.items = 3
        else:
            app.producer.buffer.size = 7
        assert _ticks(app, detector, Progress(), range(0, 600, 5)) == [None] * 120, busy
        assert app.consumer.asked_ends == []  # not even a broker round trip while busy
        # The work ends and nothing moved: now the records are seen waiting, idle, and judged.
        app.consumer.unacked.clear()
        app.topics[1].queue.items = 0
        app.producer.buffer.size = 0
        assert _ticks(app, detector, Progress(), [600.0, 605.0]) == [None] * 2, busy
        decision = _tick(app, detector, Progress(), 610.0)
        assert decision is not None and decision.cause == "starved_partition", busy


def test_work_that_starts_during_the_broker_call_cancels_the_judgement() -> None:
    app = _app({CLICKS0: 10}, {CLICKS0: 20})
    detector = StarvationDetector(stall_s=1.0)
    assert _ticks(app, detector, Progress(), [0.0, 1.0]) == [None] * 2
    real = app.consumer.highwaters

    async def slow_then_fetched(*tps: TP) -> dict[TP, int]:
        app.consumer._read_offset[CLICKS0] = 10  # the fetch came back meanwhile
        return await real(*tps)

    app.consumer.highwaters = slow_then_fetched  # type: ignore[method-assign]
    assert _tick(app, detector, Progress(), 11.0) is None


def test_an_acked_message_still_in_faust_s_weak_set_is_not_work() -> None:
    app = _app({CLICKS0: 10}, {CLICKS0: 20}, unacked=[Message(CLICKS0, acked=True)])
    detector = StarvationDetector(stall_s=1.0)
    assert _ticks(app, detector, Progress(), [0.0, 1.0]) == [None] * 2
    assert _tick(app, detector, Progress(), 11.0) is not None


def test_any_movement_of_commit_read_or_finished_offset_restarts_the_clock() -> None:
    app = _app({CLICKS0: 10}, {CLICKS0: 900})
    detector = StarvationDetector(stall_s=10.0)
    progress = Progress()
    assert _ticks(app, detector, progress, [0.0, 1.0]) == [None] * 2  # waiting since 1
    app.consumer._read_offset[CLICKS0] = 15  # fetched: the clock stops
    assert _ticks(app, detector, progress, [10.0, 11.0]) == [None] * 2  # waiting since 11
    progress.done("clicks", 0, 12)  # finished further
    assert _ticks(app, detector, progress, [20.0, 21.0]) == [None] * 2  # since 21
    app.consumer._committed_offset[CLICKS0] = 13  # committed further
    assert _ticks(app, detector, progress, [30.0, 31.0, 40.9]) == [None] * 3  # since 31
    decision = _tick(app, detector, progress, 41.0)
    assert decision is not None and "'clicks:0': 887" in decision.reason


def test_rebalance_recovery_and_a_lost_coordinator_stop_every_clock() -> None:
    app = _app({CLICKS0: 0}, {CLICKS0: 50})
    detector = StarvationDetector(stall_s=10.0)
    progress = Progress()
    assert _ticks(app, detector, progress, [0.0, 1.0]) == [None] * 2
    for pause in ("rebalancing", "in_recovery", "broker"):
        if pause == "broker":
            assert _tick(app, detector, progress, 100.0, broker_up=False) is None
        else:
            setattr(app, pause, True)
            assert _tick(app, detector, progress, 100.0) is None  # recovering for 100 s: not judged
            setattr(app, pause, False)
        # Back: the marks are new again, the clock starts at the next tick, not at 0.
        assert _ticks(app, detector, progress, [101.0, 102.0, 111.9]) == [None] * 3, pause
        assert _tick(app, detector, progress, 112.0) is not None, pause
        detector.reset()


def test_a_partition_the_group_never_committed_is_read_from_its_log_start() -> None:
    # Never committed, records 40..99 on the broker (retention deleted 0..39): 60 waiting.
    app = _app({CLICKS0: None}, {CLICKS0: 100}, starts={CLICKS0: 40})
    detector = StarvationDetector(stall_s=1.0)
    assert _ticks(app, detector, Progress(), [0.0, 1.0]) == [None] * 2
    decision = _tick(app, detector, Progress(), 11.0)
    assert decision is not None and "'clicks:0': 60" in decision.reason
    # Everything deleted by retention: nothing to read, nothing starved.
    app = _app({CLICKS0: None}, {CLICKS0: 100}, starts={CLICKS0: 100})
    detector = StarvationDetector(stall_s=1.0)
    assert _ticks(app, detector, Progress(), [0.0, 1.0, 11.0, 60.0]) == [None] * 4


def test_waiting_needs_records_past_the_commit() -> None:
    a, b, c, d = (TP("t", i) for i in range(4))
    committed: dict[Hashable, int | None] = {a: 5, b: 5, c: None, d: None}
    ends: dict[Hashable, int] = {a: 5, b: 6, c: 3, d: 3}
    assert waiting([a, b, c, d], committed, ends, {c: 0, d: 3}) == [b, c]
    assert waiting([a, b], committed, {}, {}) == []  # no end offset known: no judgement


@given(st.lists(st.tuples(st.sampled_from(["commit", "read", "finish", "wait"]), st.floats(0.0, 9.99)), max_size=60))
def test_marks_that_move_within_the_wait_never_report(steps: list[tuple[str, float]]) -> None:
    detector = StarvationDetector(stall_s=10.0)
    commit, read, finish, now = 0, 0, 0, 0.0
    for what, dt in steps:
        now += dt
        commit += what == "commit"
        read += what == "read"
        finish += what == "finish"
        marks: dict[Hashable, Marks] = {CLICKS0: (commit, read, finish)}
        unchanged = detector.unchanged(marks)
        assert detector.judge(unchanged, [CLICKS0], now) == []
        if what == "wait":  # nothing moved: the next step must move something to stay quiet
            commit += 1


def test_partitions_no_longer_assigned_are_forgotten() -> None:
    detector = StarvationDetector(stall_s=5.0)
    both: dict[Hashable, Marks] = {CLICKS0: (1, 1, 1), CLICKS1: (1, 1, 1)}
    assert detector.unchanged(both) == []
    assert detector.judge(detector.unchanged(both), both, 0.0) == []  # both waiting since 0
    assert detector.judge(detector.unchanged({k: v for k, v in both.items() if k == CLICKS1}), both, 3.0) == []  # clicks:0 moved away
    # ...and came back: new marks, a new clock, not the old one.
    assert detector.judge(detector.unchanged(both), both, 10.0) == [CLICKS1]
    assert detector.judge(detector.unchanged(both), both, 12.0) == [CLICKS1]
    assert detector.judge(detector.unchanged(both), both, 22.0) == [CLICKS0, CLICKS1]


def test_pause_failpoint_pauses_its_partition_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pause"
    marker.write_text("clicks:1\n")
    monkeypatch.setenv(PAUSE_ENV, str(marker))
    app = _app({CLICKS0: 0, CLICKS1: 0}, {CLICKS0: 0, CLICKS1: 0})
    _tick(app, StarvationDetector(stall_s=5.0), Progress(), 0.0)
    assert app.consumer.paused == {CLICKS1}
    assert not marker.exists()
    # A partition the worker does not own leaves the file for the worker that does.
    marker.write_text("clicks:7\n")
    _tick(app, StarvationDetector(stall_s=5.0), Progress(), 0.0)
    assert marker.exists() and app.consumer.paused == {CLICKS1}


def test_a_starvation_restart_is_counted_under_its_own_cause() -> None:
    from stream_app import metrics
    from stream_app.supervise import RestartRequests

    def count(cause: str) -> float:
        value = metrics.REGISTRY.get_sample_value("persona_commit_stall_restarts_total", {"cause": cause})
        return value or 0.0

    before = {c: count(c) for c in ("starved_partition", "stuck_commit", "lost_message")}
    app = _app({CLICKS0: 10}, {CLICKS0: 20})
    detector = StarvationDetector(stall_s=1.0)
    decision = [_tick(app, detector, Progress(), t) for t in (0.0, 1.0, 11.0)][-1]
    assert decision is not None
    RestartRequests().request(decision)
    RestartRequests().request(Restart("commit stuck behind finished records on [...] for 30s (faust#596)"))
    after = {c: count(c) for c in before}
    assert {c: after[c] - before[c] for c in before} == {"starved_partition": 1.0, "stuck_commit": 1.0, "lost_message": 0.0}
