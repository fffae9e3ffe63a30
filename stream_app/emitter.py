"""Coalescing of recommendation messages: at most one per user per interval.

Leading edge: the first change after a quiet interval is emitted at once. Changes inside
the interval leave the user *pending*; so does a first change offered as *catch-up* (its
record long behind the stream's head: a backlog), whose interval starts with it, since a
list ranked at the first of a busy user's backlogged changes is superseded within the
interval; a timer emits pending users when their interval
ends, and every offset commit first emits *all* pending users, so an event's offset is
never committed before a message reflecting it was handed to the producer (which the
commit then flushes). That is how bursts are coalesced without losing the final state,
even across a crash.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: How often the worker emits the pending users whose interval ended (s).
TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class Trigger:
    event_ts: float  #: event time of the latest change
    record_ts: float  #: Kafka timestamp of that record (s)


class Coalescer:
    """``now`` never goes back between calls (the worker's monotonic clock, the replay's event
    clock): the last emissions are kept in the order they happened, oldest first, so
    :meth:`take_due` visits only the users whose interval ended and can run often (the worker
    calls it every 50 ms: a change waits at most the interval and a tick, not an interval and
    a half as with a tick of half the interval)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        #: user -> the start of their interval: their last emission's time, or a catch-up
        #: change's that opened it (the ``now`` of each call), oldest first
        self._last_emit: OrderedDict[str, float] = OrderedDict()
        #: users with a change since their last emission (always in ``_last_emit`` too)
        self._pending: dict[str, Trigger] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, user: str, now: float, trigger: Trigger, *, catch_up: bool = False) -> bool:
        """Record a change; ``True`` means emit now (and it is recorded as emitted).
        ``catch_up``: no leading edge; the change waits for the end of an interval that starts
        now (or of the one already running), like a change inside an interval (a zero interval
        still emits every change)."""
        last = self._last_emit.get(user)
        prev = self._pending.get(user)
        if last is None or now - last >= self.interval_s:
            if not catch_up or self.interval_s <= 0.0:
                self._emitted(user, now)
                self._pending.pop(user, None)
                return True
            if prev is None:
                self._emitted(user, now)  # the interval starts now; take_due emits at its end
        if prev is None or trigger.event_ts >= prev.event_ts:
            self._pending[user] = trigger
        return False

    def forget(self, user: str) -> None:
        """Drop everything about ``user`` (an erasure): no message for them is pending."""
        self._pending.pop(user, None)
        self._last_emit.pop(user, None)

    def take_due(self, now: float) -> list[tuple[str, Trigger]]:
        """Pending users whose interval ended, oldest emission first (recorded as emitted
        now). Users quiet for a whole interval are forgotten, so memory follows the active
        set, not every user ever seen. Costs the number of users whose interval ended."""
        ended: list[str] = []
        for user, last in self._last_emit.items():
            if now - last < self.interval_s:
                break  # everyone after emitted later
            ended.append(user)
        due: list[tuple[str, Trigger]] = []
        for user in ended:
            trigger = self._pending.pop(user, None)
            if trigger is None:
                del self._last_emit[user]
            else:
                due.append((user, trigger))
                self._emitted(user, now)
        return due

    def take_all(self, now: float) -> list[tuple[str, Trigger]]:
        out = list(self._pending.items())
        self._pending.clear()
        for u, _ in out:
            self._emitted(u, now)
        return out

    def _emitted(self, user: str, now: float) -> None:
        self._last_emit[user] = now
        self._last_emit.move_to_end(user)
