"""Restarting a worker that owns a partition it never reads.

The commit-stall watchdog (``stream_app.supervise``) needs finished work past a stuck
commit; the gap guard needs a record that reaches an agent. Neither sees a partition
that is assigned, has records waiting, and is simply never fetched. A CI run of the chaos
suite met one: after a rebalance a partition stayed 471 records behind for 300 s, both
workers alive, no warning, no restart. Faust pauses every assigned partition at a
rebalance and resumes them when its recovery ends, unless it finds the generation changed
meanwhile ("Recovery rebalancing again"), when it leaves them to the next recovery; other
clients have had bugs in their pause bookkeeping across rebalances (franz-go#507, #1272).
We did not prove which form it was, so the remedy is the one that works whatever the
cause: restart from the committed offsets, which our idempotent profiles make safe.

Starved: an assigned input partition whose committed offset, last read offset and last
finished offset have not moved since the broker was first seen holding records past its
committed offset, ``stall_s`` ago (at least :data:`FLOOR_S`), the worker idle at both
sights: no message in an agent's hands, none queued for one, nothing waiting to be
produced. A busy or saturated worker is never taken for a starved one (its queues are not
empty), nor is an agent that waits for the catalog or the models before its first record
(the fetched records queue up in front of it). A rebalance, a table recovery or a lost
coordinator stops every clock. Under saturation a starved partition is found only once the
load drops: what this check cannot see, said here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Hashable

from stream_app.supervise import Progress, Restart

log = logging.getLogger("persona.starvation")

#: Test failpoint: a file holding ``topic:partition``; the worker pauses that partition at
#: Faust's level once (a pause left behind, made on purpose) and removes the file, so the
#: restarted worker reads it normally. Unset in production.
PAUSE_ENV = "PERSONA_FAILPOINT_PAUSE_PARTITION"

#: What has to move for a partition to show life: (committed, last read, last finished).
Marks = tuple[int | None, int | None, int | None]


#: The least time a partition's records may wait unread before a restart, whatever
#: ``stall_s``: on two loaded cores a fetch can wait seconds for the event loop (a CI run saw
#: this watchdog's own tick take 2.4 s while the catalog was encoded), and a restart replays
#: far more than ten seconds of work.
FLOOR_S = 10.0


@dataclass
class StarvationDetector:
    """The pure part of the check: which partitions stood still, and since when records have
    been seen waiting on each without any of its marks moving."""

    stall_s: float
    _marks: dict[Hashable, Marks] = field(default_factory=dict)
    _waiting_since: dict[Hashable, float] = field(default_factory=dict)

    @property
    def wait_s(self) -> float:
        return max(self.stall_s, FLOOR_S)

    def unchanged(self, marks: Mapping[Hashable, Marks]) -> list[Hashable]:
        """The partitions of ``marks`` (the assigned input partitions) whose marks are those
        of the previous tick. A partition that moved loses its waiting clock; partitions no
        longer assigned are forgotten."""
        out: list[Hashable] = []
        for tp, mark in marks.items():
            if self._marks.get(tp) == mark:
                out.append(tp)
            else:
                self._marks[tp] = mark
                self._waiting_since.pop(tp, None)
        for gone in set(self._marks) - set(marks):
            del self._marks[gone]
            self._waiting_since.pop(gone, None)
        return out

    def judge(self, unchanged: Iterable[Hashable], waiting: Iterable[Hashable], now: float) -> list[Hashable]:
        """Starved: seen with records past its commit, idle, for ``wait_s`` since the first such
        sight, its marks unmoved all along. The clock starts when records are first seen
        waiting, never earlier: records arriving on a partition quiet for an hour are not an
        hour late."""
        behind = set(waiting)
        out: list[Hashable] = []
        for tp in unchanged:
            if tp not in behind:
                self._waiting_since.pop(tp, None)
                continue
            since = self._waiting_since.setdefault(tp, now)
            if now - since >= self.wait_s:
                out.append(tp)
        return out

    def reset(self) -> None:
        """A rebalance, a recovery or a lost coordinator: no partition can be judged now."""
        self._marks.clear()
        self._waiting_since.clear()


def waiting(
    still: Iterable[Hashable], committed: Mapping[Hashable, int | None], ends: Mapping[Hashable, int], starts: Mapping[Hashable, int]
) -> list[Hashable]:
    """Of the ``still`` partitions, those with records past their committed offset: ``ends``
    are the broker's end offsets; a partition the group never committed is read from its
    log start (``auto_offset_reset=earliest``), so ``starts`` stand in for its commit."""
    out: list[Hashable] = []
    for tp in still:
        end = ends.get(tp)
        base = committed.get(tp)
        if base is None:
            base = starts.get(tp)
        if end is not None and base is not None and end > base:
            out.append(tp)
    return out


def idle(app: Any) -> bool:
    """Whether the worker holds no work: no un-acknowledged message (in an agent's hands or a
    ``take`` batch), no event queued for an agent, nothing waiting to be produced."""
    consumer = app.consumer
    if any(not m.acked for m in list(getattr(consumer, "_unacked_messages", ()))):
        return False
    for channel in list(app.topics):
        queue = getattr(channel, "queue", None)
        if queue is not None and queue.qsize():
            return False
    try:
        return int(app.producer.buffer.size) == 0
    except Exception:  # no producer buffer to ask: its state says nothing either way
        return True


def input_marks(consumer: Any, topics: set[str], progress: Progress) -> dict[Hashable, Marks]:
    """(committed, last read, last finished) of every assigned partition of ``topics``."""
    committed = getattr(consumer, "_committed_offset", {})
    read = getattr(consumer, "_read_offset", {})
    return {
        tp: (committed.get(tp), read.get(tp), progress.finished.get((tp.topic, tp.partition)))
        for tp in consumer.assignment()
        if tp.topic in topics
    }


async def check(
    app: Any, detector: StarvationDetector, topics: set[str], progress: Progress, clock: Callable[[], float], broker_up: bool
) -> Restart | None:
    """One watchdog tick: a restart decision when an idle worker owns a starved partition."""
    if not broker_up or app.rebalancing or app.in_recovery:
        detector.reset()
        return None
    consumer = app.consumer
    _pause_failpoint(consumer, topics)
    marks = input_marks(consumer, topics, progress)
    unchanged = detector.unchanged(marks)
    if not unchanged or not idle(app):
        return None
    committed = {tp: marks[tp][0] for tp in unchanged}
    ends = await consumer.highwaters(*unchanged)
    never = [tp for tp in unchanged if committed[tp] is None]
    starts = await consumer.earliest_offsets(*never) if never else {}
    # The broker calls took time: judge only if nothing moved and nothing arrived meanwhile.
    after = input_marks(consumer, topics, progress)
    if any(after.get(tp) != marks[tp] for tp in unchanged) or not idle(app):
        return None
    starved = detector.judge(unchanged, waiting(unchanged, committed, ends, starts), clock())
    if not starved:
        return None
    behind = {_name(tp): ends[tp] - (committed[tp] if committed[tp] is not None else starts[tp]) for tp in starved}
    return Restart(
        f"idle, yet partitions {behind} (records behind) were not read for {detector.wait_s:.0f}s", cause="starved_partition"
    )


def _name(tp: Any) -> str:
    return f"{tp.topic}:{tp.partition}"


def _pause_failpoint(consumer: Any, topics: set[str]) -> None:
    path = os.environ.get(PAUSE_ENV)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as fh:
            topic, partition = fh.read().strip().rsplit(":", 1)
    except (FileNotFoundError, ValueError):
        return
    for tp in consumer.assignment():
        if (tp.topic, str(tp.partition)) == (topic, partition) and topic in topics:
            consumer.pause_partitions([tp])
            os.unlink(path)
            log.warning("failpoint: %s paused and left paused", tp)
            return
