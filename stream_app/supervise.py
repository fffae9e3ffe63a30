"""Keeping a worker alive through a known Faust commit stall.

faust-streaming#596 (open): a race in recovery can leave one message of a partition
"in flight" forever. Faust commits only contiguous acknowledged offsets, so that
partition stops committing while the agent keeps processing later messages; the lag
never drains, and faust's own livelock warning comes after 300 s and does nothing. We
saw it after kill -9 restarts.

The remedy is the one our idempotent profiles make safe: restart from the last committed
offset. A :class:`StallDetector` watches, per input partition, the committed offset and
the offset last handed to the stream; when the commit has not moved for ``stall_s``
although later messages were already dispatched, the worker process exits with
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
from dataclasses import dataclass, field
from typing import Any, Hashable

log = logging.getLogger("persona.supervise")

#: Exit code meaning "restart me" (EX_TEMPFAIL).
RESTART_EXIT_CODE = 75
_CHILD_ENV = "PERSONA_WORKER_CHILD"


@dataclass
class StallDetector:
    stall_s: float
    _since: dict[Hashable, tuple[int | None, float]] = field(default_factory=dict)

    def observe(self, tp: Hashable, committed: int | None, dispatched: int | None, now: float) -> bool:
        """Whether ``tp`` is stalled: commit unmoved for ``stall_s`` while a message at or
        past the committed offset was already handed to the stream."""
        last = self._since.get(tp)
        if last is None or last[0] != committed:
            self._since[tp] = (committed, now)
            return False
        waiting = dispatched is not None and committed is not None and dispatched >= committed
        return waiting and now - last[1] >= self.stall_s

    def stalled(self, consumer: Any, processed: dict[tuple[str, int], int], now: float) -> list[Hashable]:
        """Partitions whose agent processed past the committed offset while the commit
        has not moved for ``stall_s``. ``processed`` holds the last offset each agent
        *processed*: offsets merely buffered in a stream (a slow batching stage) are not
        evidence of a stall, and using them gave false restarts."""
        out: list[Hashable] = []
        committed = consumer._committed_offset
        for tp in consumer.assignment():
            key = (tp.topic, tp.partition)
            if key in processed and self.observe(tp, committed.get(tp), processed[key], now):
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
        if expected is not None and offset > expected:
            return expected
        return None

    def advance(self, partition: int, offset: int) -> None:
        prev = self._last.get(partition)
        self._last[partition] = offset if prev is None else max(prev, offset)

    def first_seen(self, partition: int) -> bool:
        return partition not in self._last


def is_child() -> bool:
    return os.environ.get(_CHILD_ENV) == "1"


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
    while True:
        child = subprocess.Popen([sys.executable, *argv], env=env)
        rc = child.wait()
        if rc != RESTART_EXIT_CODE or stopping:
            return rc
        restarts += 1
        log.warning("worker asked for a restart (commit stall, faust#596); restart #%d", restarts)
        time.sleep(0.5)


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
