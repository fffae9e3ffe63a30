"""Keeping a worker alive through a known Faust commit stall.

faust-streaming#596 (open): a race in recovery can leave one message of a partition
"in flight" forever. Faust commits only contiguous acknowledged offsets, so that
partition stops committing while the agent keeps processing later messages; the lag
never drains, and faust's own livelock warning comes after 300 s and does nothing. We
saw it after kill -9 restarts.

The remedy is the one our idempotent profiles make safe: restart from the last committed
offset. A :class:`StallDetector` watches, per input partition, the committed offset and
the offset last *finished* by an agent; when the commit has not moved for ``stall_s``
although work past it was already finished, the worker process exits with
:data:`RESTART_EXIT_CODE`, and the ``persona worker`` supervisor starts it again at once.
Replayed records are recognised by the profile watermarks, so nothing is applied twice
and the stuck message is finally processed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Hashable

from stream_app import metrics

log = logging.getLogger("persona.supervise")

#: Exit code meaning "restart me" (EX_TEMPFAIL).
RESTART_EXIT_CODE = 75
_CHILD_ENV = "PERSONA_WORKER_CHILD"
#: Restarts the supervisor made so far, handed to each child (persona_supervisor_restarts_total).
RESTARTS_ENV = "PERSONA_SUPERVISOR_RESTARTS"
_FAILPOINT_ENV = "PERSONA_FAILPOINT_HOLD_ACK"
#: Wait before a restart; doubled after each child that asked again within QUICK_S of its start,
#: up to MAX_DELAY_S: a cause that persists (the broker refusing the worker's output) restarts
#: the worker a few times a minute, not every few seconds, each restart replaying its state.
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
QUICK_S = 60.0


@dataclass(frozen=True, slots=True)
class Restart:
    """A decision to restart the worker from its committed offsets (taken by the worker).

    ``cause`` labels ``persona_commit_stall_restarts_total``; empty, it is read from the
    reason (the two causes that came first)."""

    reason: str
    cause: str = ""

    def label(self) -> str:
        if self.cause:
            return self.cause
        return "lost_message" if "never did" in self.reason else "stuck_commit"


@dataclass
class Progress:
    """What the agents *finished*, per input partition: the watchdog's evidence.

    An offset is recorded once its record's work is done (applied, or encoded and handed
    on), never when it merely reached an agent or a batching buffer. The difference is the
    false restart this class fixes: the review stage's batch of 64 was marked when it was
    *taken*, so one slow batch (a catalog being re-encoded on the same cores) looked like a
    commit stuck behind processed records.
    """

    finished: dict[tuple[str, int], int] = field(default_factory=dict)

    def done(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        prev = self.finished.get(key)
        self.finished[key] = offset if prev is None else max(prev, offset)

    def forget(self) -> None:
        """Partitions moved: what this worker finished before says nothing about the new owner."""
        self.finished.clear()


@dataclass
class StallDetector:
    """Tells a stuck commit from a busy worker.

    Stuck (faust#596): work *finished* past the committed offset, yet the commit has not
    moved for ``stall_s``. Busy: the agent is still working on the record at the commit
    point (a long encode, a big batch): nothing past the commit is finished, so however
    long it takes, that is no evidence of a stall.
    """

    stall_s: float
    _since: dict[Hashable, tuple[int | None, float | None]] = field(default_factory=dict)

    def observe(self, tp: Hashable, committed: int | None, finished: int | None, now: float) -> bool:
        """Whether ``tp`` is stalled: commit unmoved for ``stall_s`` while a record at or
        past the committed offset (the next one to commit) was already finished."""
        waiting = finished is not None and committed is not None and finished >= committed
        last = self._since.get(tp)
        if not waiting or last is None or last[0] != committed or last[1] is None:
            # Busy, idle or a moved commit: the clock starts when finished work first
            # waits on this commit, never earlier.
            self._since[tp] = (committed, now if waiting else None)
            return False
        return now - last[1] >= self.stall_s

    def stalled(
        self, assignment: Iterable[Any], committed: Mapping[Any, int | None], progress: Progress, now: float, *, broker_up: bool = True
    ) -> list[Hashable]:
        """Assigned partitions whose commit is stuck behind finished work for ``stall_s``.

        ``broker_up`` False (the group coordinator is lost: the broker is down or restarting)
        stops every clock: no commit can move then, and a restart would only fail to bootstrap.
        The clocks start again when the broker is back."""
        if not broker_up:
            self._since.clear()
            return []
        out: list[Hashable] = []
        for tp in assignment:
            key = (tp.topic, tp.partition)
            if key in progress.finished and self.observe(tp, committed.get(tp), progress.finished[key], now):
                out.append(tp)
        return out


@dataclass
class GapGuard:
    """Per-partition order check in front of an agent (concurrency 1).

    Our input topics are never compacted and carry no transaction markers, so a partition's
    offsets reach the agent consecutively. A jump means Faust dropped a message (the same
    recovery race, faust#596) and would later commit past it as a "gap". Applying the
    later message would move the profile's watermark past the hole and make the lost
    message look like a replay, so the worker must restart *before* applying it.
    """

    _last: dict[int, int] = field(default_factory=dict)

    def check(self, partition: int, offset: int, committed: int | None) -> int | None:
        """The first missing offset if ``offset`` skips messages, else ``None``."""
        prev = self._last.get(partition)
        expected = prev + 1 if prev is not None else committed
        if prev is not None and committed is not None and committed > prev + 1:
            # The group committed past what this agent saw: another worker owned the partition
            # meanwhile (a rebalance gave it away and back; Faust reads the committed offset
            # afresh on assignment). Our own commits never pass ``prev + 1``, and in faust#596's
            # race the later record arrives before anything past the hole is committed.
            expected = committed
        if expected is not None and offset > expected:
            return expected
        return None

    def advance(self, partition: int, offset: int) -> None:
        prev = self._last.get(partition)
        self._last[partition] = offset if prev is None else max(prev, offset)

    def first_seen(self, partition: int) -> bool:
        return partition not in self._last


class RestartRequests:
    """Restart decisions from agents and the watchdog, taken by one task of the worker."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.decision: Restart | None = None

    def request(self, decision: Restart) -> None:
        if self.decision is None:
            self.decision = decision
            metrics.STALL_RESTARTS.labels(decision.label()).inc()
            self._event.set()

    async def wait(self) -> Restart:
        await self._event.wait()
        assert self.decision is not None
        return self.decision

    async def halt(self, decision: Restart) -> None:
        """Ask for a restart and never return: the agent must not apply a later record."""
        self.request(decision)
        await asyncio.Event().wait()


def hold_ack_failpoint(topic: str, partition: int, offset: int) -> bool:
    """Test failpoint: whether this record must stay un-acknowledged forever (faust#596's
    symptom, made on purpose). ``PERSONA_FAILPOINT_HOLD_ACK`` names a file holding
    ``topic:partition:first:last``; records ``first..last`` are held, and the file is removed
    when ``last`` is, so the restarted worker processes them normally. Hold two or more:
    faust-streaming 0.15.3 commits past a *single* un-acked record at the head of a
    partition (``Consumer._new_offset`` only sees a gap of two or more), so one held record
    loses nothing here but stalls nothing either. Unset in production: one lookup per record."""
    path = os.environ.get(_FAILPOINT_ENV)
    if not path:
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            want_topic, want_partition, first, last = fh.read().strip().rsplit(":", 3)
    except (FileNotFoundError, ValueError):
        return False
    if (want_topic, want_partition) != (topic, str(partition)) or not int(first) <= offset <= int(last):
        return False
    if offset == int(last):
        os.unlink(path)
    return True


def is_child() -> bool:
    return os.environ.get(_CHILD_ENV) == "1"


def next_delay(previous: float | None, lived_s: float) -> float:
    """The wait before the next restart, after a child that ran ``lived_s`` seconds; ``previous``
    is the wait before that child (None: it was the first)."""
    if previous is None or lived_s >= QUICK_S:
        return FIRST_DELAY_S
    return min(MAX_DELAY_S, 2 * previous)


def run_supervised(argv: list[str]) -> int:
    """Run ``argv`` (this worker, as a child) and restart it when it asks to be restarted."""
    env = dict(os.environ, **{_CHILD_ENV: "1"})
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True  # a stop request must not race with a restart
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    restarts = 0
    delay: float | None = None
    while True:
        env[RESTARTS_ENV] = str(restarts)
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, *argv], env=env)
        rc = child.wait()
        if rc != RESTART_EXIT_CODE or stopping:
            return rc
        restarts += 1
        delay = next_delay(delay, time.monotonic() - started)
        log.warning(
            "worker asked for a restart (a commit stall or lost message, faust#596, a record that raised, "
            "or output the broker did not take; see its log); restart #%d in %.1f s",
            restarts, delay,
        )
        time.sleep(delay)
        if stopping:  # a stop asked for while waiting
            return rc


def dump_tasks(app: Any) -> None:
    """Log the consumer's bookkeeping and every asyncio task's await chain."""
    lines: list[str] = []
    try:
        consumer: Any = app.consumer
        lines.append(f"assignment: {sorted(consumer.assignment())}")
        lines.append(f"paused: {sorted(consumer._paused_partitions)}")
        lines.append(f"read offsets: {dict(consumer._read_offset)}")
        lines.append(f"committed: {dict(consumer._committed_offset)}")
        lines.append(f"unacked: {len(consumer._unacked_messages)}")
        inner = consumer._thread._ensure_consumer() if hasattr(consumer, "_thread") else None
        if inner is not None:
            lines.append(f"aiokafka paused: {sorted(inner.paused())}")
    except Exception as exc:  # diagnostics must never take the worker down
        lines.append(f"consumer state unavailable: {exc!r}")
    for task in asyncio.all_tasks():
        lines.append(f"task {task.get_name()}:")
        # Follow the await chain: Task.get_stack() shows only the outermost frame.
        obj: Any = task.get_coro()
        while obj is not None:
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None) or getattr(obj, "gi_frame", None)
            if frame is not None:
                lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            obj = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None) or getattr(obj, "gi_yieldfrom", None)
    log.warning("asyncio tasks:\n%s", "\n".join(lines))


#: How long a worker that exits for a restart waits for its LeaveGroup's answer (it exits either way).
LEAVE_TIMEOUT_S = 3.0


def group_coordinator(consumer: Any) -> Any:
    """The aiokafka group coordinator inside a Faust consumer (None where there is none):
    private attributes of faust-streaming 0.15 and aiokafka 0.14, read defensively, in one place."""
    thread = getattr(consumer, "_thread", None)
    return getattr(getattr(thread, "_consumer", None), "_coordinator", None)


def leave_group_now(app: Any, timeout_s: float = LEAVE_TIMEOUT_S) -> str:
    """Before an immediate exit for a restart: a dynamic member leaves its group.

    The exit skips Faust's shutdown (it could commit past the record the restart is for), and
    with it aiokafka's LeaveGroup. The group then kept the dead member until its session timed
    out, and the restarted worker's join, which waits for every member, waited with it: every
    worker of the group stopped for up to ``PERSONA_SESSION_TIMEOUT_S`` (27 s of a 30 s session
    in one ``persona bench scale`` run). A LeaveGroup commits nothing, so it is sent here, on the
    consumer's own connection and loop. A static member does not leave (aiokafka sends nothing for
    one): it is handed its partitions back when it returns. Returns what happened, for the log."""
    import asyncio as _asyncio

    thread = getattr(app.consumer, "_thread", None)
    coordinator = group_coordinator(app.consumer)
    loop = getattr(thread, "thread_loop", None)
    if coordinator is None or loop is None or not loop.is_running():
        return "no consumer group membership to leave"
    if coordinator._group_instance_id is not None:
        return "a static member: the group keeps its partitions for its return"
    if coordinator.generation <= 0:
        return "not a member of a group generation yet"
    try:
        here = _asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is loop:
        return "on the consumer's own loop: cannot wait for the LeaveGroup there"
    _asyncio.run_coroutine_threadsafe(coordinator._maybe_leave_group(), loop).result(timeout_s)
    return "left the consumer group"


def broker_went_away(reason: BaseException | None) -> bool:
    """Whether Faust crashed because it lost the broker (aiokafka's connection errors, or a
    request that timed out on a dead connection): a restart fixes that, once Kafka is back."""
    if reason is None:
        return False
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError

    seen: BaseException | None = reason
    while seen is not None:
        if isinstance(seen, (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError, KafkaTimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
