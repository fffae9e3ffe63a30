"""Coalescing of recommendation messages: at most one per user per interval.

Leading edge: the first change after a quiet interval is emitted at once. Changes inside
the interval leave the user *pending*; a timer emits pending users when their interval
ends, and every offset commit first emits *all* pending users, so an event's offset is
never committed before a message reflecting it was handed to the producer (which the
commit then flushes). That is how bursts are coalesced without losing the final state,
even across a crash.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Trigger:
    event_ts: float  #: event time of the latest change
    record_ts: float  #: Kafka timestamp of that record (s)


class Coalescer:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last_emit: dict[str, float] = {}
        self._pending: dict[str, Trigger] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, user: str, now: float, trigger: Trigger) -> bool:
        """Record a change; ``True`` means emit now (and it is recorded as emitted)."""
        last = self._last_emit.get(user)
        if last is None or now - last >= self.interval_s:
            self._last_emit[user] = now
            self._pending.pop(user, None)
            return True
        prev = self._pending.get(user)
        if prev is None or trigger.event_ts >= prev.event_ts:
            self._pending[user] = trigger
        return False

    def forget(self, user: str) -> None:
        """Drop everything about ``user`` (an erasure): no message for them is pending."""
        self._pending.pop(user, None)
        self._last_emit.pop(user, None)

    def take_due(self, now: float) -> list[tuple[str, Trigger]]:
        due = [
            (u, t) for u, t in self._pending.items() if now - self._last_emit.get(u, 0.0) >= self.interval_s
        ]
        for u, _ in due:
            del self._pending[u]
            self._last_emit[u] = now
        # Forget quiet users so memory follows the active set, not every user ever seen.
        stale = [u for u, t in self._last_emit.items() if now - t >= self.interval_s and u not in self._pending]
        for u in stale:
            del self._last_emit[u]
        return due

    def take_all(self, now: float) -> list[tuple[str, Trigger]]:
        out = list(self._pending.items())
        self._pending.clear()
        for u, _ in out:
            self._last_emit[u] = now
        return out
