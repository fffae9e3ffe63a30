"""The stall watchdog tells busy from stuck; the gap guard returns decisions; the failpoint is one-shot."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.supervise import GapGuard, Progress, StallDetector, broker_went_away, hold_ack_failpoint


class TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition

    def __hash__(self) -> int:
        return hash((self.topic, self.partition))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TP) and (self.topic, self.partition) == (other.topic, other.partition)

    def __repr__(self) -> str:
        return f"TP({self.topic}, {self.partition})"


REVIEWS = TP("reviews", 0)


def test_regression_false_restart_behind_a_slow_review_batch() -> None:
    """Issue 8: a batch of 64 reviews taken from the stream at offsets 256..319 waits on an
    encoder busy re-encoding the catalog. The commit sits at 256 far longer than the stall
    timeout; nothing past it is finished, so this is a busy worker, not a stuck one."""
    detector = StallDetector(stall_s=4.0)
    progress = Progress()
    progress.done("reviews", 0, 255)  # the previous batch, committed as 256
    committed = {REVIEWS: 256}
    for now in range(0, 120, 5):  # two minutes of encoding one batch
        assert detector.stalled([REVIEWS], committed, progress, float(now)) == []
    # The batch finishes: its offsets are finished, and the commit follows within a tick.
    for offset in range(256, 320):
        progress.done("reviews", 0, offset)
    assert detector.stalled([REVIEWS], committed, progress, 121.0) == []
    committed[REVIEWS] = 320
    assert detector.stalled([REVIEWS], committed, progress, 122.0) == []


def test_a_commit_stuck_behind_finished_records_is_a_stall() -> None:
    """faust#596: one record stays in flight, later ones are processed, the commit never moves."""
    detector = StallDetector(stall_s=4.0)
    progress = Progress()
    committed = {REVIEWS: 100}
    progress.done("reviews", 0, 130)
    assert detector.stalled([REVIEWS], committed, progress, 0.0) == []
    assert detector.stalled([REVIEWS], committed, progress, 3.9) == []
    assert detector.stalled([REVIEWS], committed, progress, 4.0) == [REVIEWS]


def test_regression_broker_outage_is_not_a_commit_stall() -> None:
    """Broker-bounce test: the broker was away 40 s; no commit could move, the detector called
    it faust#596 and restarted the worker into a broker that was still down (it crashed). While
    the coordinator is lost the clocks stop; they start again when the broker is back."""
    detector = StallDetector(stall_s=4.0)
    progress = Progress()
    committed = {REVIEWS: 100}
    progress.done("reviews", 0, 130)
    assert detector.stalled([REVIEWS], committed, progress, 0.0) == []
    for now in (3.0, 10.0, 40.0):  # the broker goes away at 3 s and is back at 40 s
        assert detector.stalled([REVIEWS], committed, progress, now, broker_up=False) == []
    assert detector.stalled([REVIEWS], committed, progress, 41.0) == []
    assert detector.stalled([REVIEWS], committed, progress, 44.9) == []
    # Still stuck 4 s after the broker came back: that is a stall.
    assert detector.stalled([REVIEWS], committed, progress, 45.0) == [REVIEWS]


def test_a_crash_for_a_lost_broker_is_restarted_and_others_are_not() -> None:
    from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, UnknownTopicOrPartitionError

    try:
        try:
            raise NodeNotReadyError("node 1 not ready")
        except NodeNotReadyError as inner:
            raise RuntimeError("consumer crashed") from inner
    except RuntimeError as wrapped:
        assert broker_went_away(wrapped)
    assert broker_went_away(KafkaConnectionError("Unable to bootstrap from [127.0.0.1:9092]"))
    assert not broker_went_away(UnknownTopicOrPartitionError())
    assert not broker_went_away(ValueError("a bug"))
    assert not broker_went_away(None)


def test_the_stall_clock_starts_when_finished_work_first_waits() -> None:
    """A long busy phase followed by a stall: the timeout counts from the first finished
    record past the commit, not from the last commit (which was long ago)."""
    detector = StallDetector(stall_s=10.0)
    progress = Progress()
    committed = {REVIEWS: 50}
    progress.done("reviews", 0, 49)
    for now in range(0, 100, 5):
        assert detector.stalled([REVIEWS], committed, progress, float(now)) == []
    progress.done("reviews", 0, 60)
    assert detector.stalled([REVIEWS], committed, progress, 100.0) == []
    assert detector.stalled([REVIEWS], committed, progress, 109.0) == []
    assert detector.stalled([REVIEWS], committed, progress, 110.0) == [REVIEWS]


def test_unassigned_or_unknown_partitions_are_ignored() -> None:
    detector = StallDetector(stall_s=1.0)
    progress = Progress()
    progress.done("other", 3, 10)
    assert detector.stalled([REVIEWS], {REVIEWS: 0}, progress, 0.0) == []
    assert detector.stalled([REVIEWS], {REVIEWS: 0}, progress, 50.0) == []
    progress.forget()
    assert progress.finished == {}


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 3.0)), min_size=1, max_size=60))
def test_commits_that_keep_moving_never_stall(steps: list[tuple[int, float]]) -> None:
    """Whatever the work pattern, a commit that moves at least every stall_s never fires."""
    detector = StallDetector(stall_s=3.5)
    progress = Progress()
    committed, now = 0, 0.0
    for advance, dt in steps:
        now += dt
        progress.done("reviews", 0, committed + advance)
        committed += 1  # the commit moves on every observation
        assert detector.stalled([REVIEWS], {REVIEWS: committed}, progress, now) == []


def test_gap_guard_finds_the_first_missing_offset() -> None:
    guard = GapGuard()
    assert guard.check(0, 10, committed=10) is None
    guard.advance(0, 10)
    assert guard.check(0, 11, committed=10) is None
    guard.advance(0, 11)
    assert guard.check(0, 14, committed=10) == 12
    assert guard.first_seen(1)
    assert guard.check(1, 7, committed=5) == 5  # first record after assignment skips 5, 6


def test_gap_guard_false_restart_when_a_partition_comes_back_after_another_worker() -> None:
    """Regression (bench scale, 2026-12-02): a partition revoked at offset 4892, processed by
    another worker up to 7309 and given back was taken for a lost record ("offset 7310 reached
    the agent but 4893 never did") and the worker restarted, a 28 s pause on every such
    rebalance under load. Faust reads the committed offset afresh on assignment: past what we
    saw, it is where this partition now continues. A real hole there is still found."""
    guard = GapGuard()
    guard.advance(1, 4892)
    assert guard.check(1, 7310, committed=7310) is None  # back after the other worker's 4893..7309
    guard.advance(1, 7310)
    assert guard.check(1, 7311, committed=7310) is None
    assert guard.check(1, 7315, committed=7310) == 7311  # faust#596's hole after the move: caught
    assert guard.check(1, 7312, committed=7300) == 7311  # a committed offset behind us changes nothing
    # back, but Faust skipped records past the other worker's commit: still a gap
    assert guard.check(1, 9000, committed=8000) == 8000


def test_hold_ack_failpoint_holds_its_range_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "hold"
    monkeypatch.setenv("PERSONA_FAILPOINT_HOLD_ACK", str(marker))
    assert not hold_ack_failpoint("t", 0, 5)  # no file: disarmed
    marker.write_text("t.x:0:5:6\n")
    assert not hold_ack_failpoint("t.x", 0, 4)
    assert not hold_ack_failpoint("t.x", 1, 5)
    assert hold_ack_failpoint("t.x", 0, 5)
    assert marker.exists()
    assert hold_ack_failpoint("t.x", 0, 6)
    assert not marker.exists()
    assert not hold_ack_failpoint("t.x", 0, 5)  # the restarted worker processes them normally
    monkeypatch.delenv("PERSONA_FAILPOINT_HOLD_ACK")
    assert not hold_ack_failpoint("t.x", 0, 5)


def test_restart_requests_keep_the_first_decision_and_halt_never_returns() -> None:
    from stream_app.supervise import Restart, RestartRequests

    async def scenario() -> tuple[Restart, bool]:
        requests = RestartRequests()
        halted = asyncio.create_task(requests.halt(Restart("first: offset 12 reached the agent but 11 never did")))
        await asyncio.sleep(0)
        requests.request(Restart("second"))
        decision = await requests.wait()
        await asyncio.sleep(0.05)
        still_halted = not halted.done()
        halted.cancel()
        return decision, still_halted

    decision, still_halted = asyncio.run(scenario())
    assert decision.reason.startswith("first") and still_halted


def test_retried_coordinator_lookup_is_a_warning_not_an_error() -> None:
    import logging

    from aiokafka import errors

    from stream_app.monitor import RetriableAsWarning

    f = RetriableAsWarning()
    retried = logging.LogRecord("aiokafka", logging.ERROR, "x", 1, "Group Coordinator Request failed: %s",
                                (errors.GroupCoordinatorNotAvailableError(),), None)
    assert f.filter(retried) and retried.levelno == logging.WARNING and retried.levelname == "WARNING"
    fatal = logging.LogRecord("aiokafka", logging.ERROR, "x", 1, "Group Coordinator Request failed: %s",
                              (errors.GroupAuthorizationFailedError(),), None)
    assert f.filter(fatal) and fatal.levelno == logging.ERROR


#: Run in a fresh interpreter: ``persona worker`` as the supervisor (no PERSONA_WORKER_CHILD),
#: its child start replaced by a probe of what the supervisor process has imported by then.
_SUPERVISOR_PROBE = """
import json, sys
import stream_app.supervise as supervise
def probe(argv):
    print(json.dumps({"argv": argv, "modules": sorted(m for m in sys.modules if "." not in m)}))
    return 0
supervise.run_supervised = probe
from stream_app.cli import app
app(["worker"])
"""


def test_regression_the_supervisor_imports_neither_faust_nor_the_models() -> None:
    # It imported Faust, the worker, numpy and usearch before deciding it was the parent:
    # 107 MB of RSS beside every worker, for a process that only waits on its child.
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_WORKER_CHILD"}
    done = subprocess.run([sys.executable, "-c", _SUPERVISOR_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["argv"] == ["-m", "stream_app.cli", "worker"]
    heavy = {"faust", "numpy", "usearch", "onnxruntime", "rocksdict", "aiokafka", "confluent_kafka", "torch"}
    assert heavy & set(seen["modules"]) == set()


def test_restarts_back_off_while_the_worker_keeps_asking_soon_after_it_starts() -> None:
    from stream_app.supervise import FIRST_DELAY_S, MAX_DELAY_S, QUICK_S, next_delay

    delays: list[float] = []
    delay: float | None = None
    for _ in range(10):  # a cause that persists: every child asks again within seconds
        delay = next_delay(delay, lived_s=6.0)
        delays.append(delay)
    assert delays[0] == FIRST_DELAY_S
    assert all(b == min(MAX_DELAY_S, 2 * a) for a, b in zip(delays[:-1], delays[1:], strict=True))
    assert delays[-1] == MAX_DELAY_S
    # A child that ran a while asked for an ordinary restart: the wait starts over.
    assert next_delay(MAX_DELAY_S, lived_s=QUICK_S) == FIRST_DELAY_S


def _member_unknown() -> logging.LogRecord:
    # aiokafka's own message (group_coordinator.py), logged at WARNING with no arguments.
    return logging.LogRecord(
        "aiokafka.consumer.group_coordinator", logging.WARNING, "x", 1,
        "Heartbeat failed: local member_id was not recognized; resetting and re-joining group", (), None,
    )


def test_a_static_member_whose_id_is_taken_three_times_in_the_window_is_stopped() -> None:
    from stream_app.monitor import SharedInstanceId

    now = [0.0]
    calls: list[str] = []
    f = SharedInstanceId("pod-0", times=3, window_s=120.0, on_shared=calls.append, clock=lambda: now[0])
    for t in (0.0, 3.0):
        now[0] = t
        assert f.filter(_member_unknown())
    assert calls == [], "twice is still a session that may have expired after a stall"
    other = logging.LogRecord("aiokafka", logging.WARNING, "x", 1, "Heartbeat failed for group %s because it is rebalancing", ("g",), None)
    assert f.filter(other) and calls == [], "other heartbeat failures do not count"
    now[0] = 6.0
    assert f.filter(_member_unknown())
    assert len(calls) == 1
    assert "PERSONA_GROUP_INSTANCE_ID='pod-0' is in use by another live worker" in calls[0]
    assert "3 times in 6 s" in calls[0]


def test_unknown_member_ids_spread_wider_than_the_window_do_not_stop_the_worker() -> None:
    from stream_app.monitor import SharedInstanceId

    now = [0.0]
    calls: list[str] = []
    f = SharedInstanceId("pod-0", times=3, window_s=120.0, on_shared=calls.append, clock=lambda: now[0])
    for t in (0.0, 100.0, 200.0, 300.0, 400.0):  # a session lost now and then, after a stall
        now[0] = t
        f.filter(_member_unknown())
    assert calls == []
    for t in (401.0, 402.0):  # with the one at 400: three within the window
        now[0] = t
        f.filter(_member_unknown())
    assert len(calls) == 1


class _Coordinator:
    """aiokafka's GroupCoordinator as leave_group_now reads it (the chaos test uses the real one)."""

    def __init__(self, instance_id: str | None, generation: int) -> None:
        self._group_instance_id = instance_id
        self.generation = generation
        self.left_on: list[str] = []

    async def _maybe_leave_group(self) -> None:
        import threading

        self.left_on.append(threading.current_thread().name)


def _app_with_consumer_thread(coordinator: _Coordinator | None) -> tuple[Any, asyncio.AbstractEventLoop, threading.Thread]:
    from types import SimpleNamespace

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="consumer-thread", daemon=True)
    thread.start()
    consumer_thread = SimpleNamespace(thread_loop=loop, _consumer=SimpleNamespace(_coordinator=coordinator))
    return SimpleNamespace(consumer=SimpleNamespace(_thread=consumer_thread)), loop, thread


def test_a_dynamic_member_leaves_on_the_consumers_own_loop_before_a_restart() -> None:
    from stream_app.supervise import leave_group_now

    for instance_id, generation, said, left in [
        (None, 4, "left the consumer group", ["consumer-thread"]),
        ("worker-0", 4, "a static member: the group keeps its partitions for its return", []),
        (None, -1, "not a member of a group generation yet", []),
    ]:
        coordinator = _Coordinator(instance_id, generation)
        app, loop, thread = _app_with_consumer_thread(coordinator)
        try:
            assert leave_group_now(app) == said
            assert coordinator.left_on == left
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
    from types import SimpleNamespace

    assert leave_group_now(SimpleNamespace(consumer=object())) == "no consumer group membership to leave"


def test_leaving_from_the_consumers_own_loop_does_not_wait_on_itself() -> None:
    from stream_app.supervise import leave_group_now

    coordinator = _Coordinator(None, 3)
    app, loop, thread = _app_with_consumer_thread(coordinator)

    async def from_inside() -> str:
        return leave_group_now(app, timeout_s=0.5)

    try:
        said = asyncio.run_coroutine_threadsafe(from_inside(), loop).result(5)
        assert said == "on the consumer's own loop: cannot wait for the LeaveGroup there"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
