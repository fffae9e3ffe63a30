"""The accumulated history, read back from the input topics: what ``persona train --from-topics``
learns from in a deployment, where the trainer has the broker and no dataset files.

Every input topic (one per event kind) is read from its earliest retained offset to its end
at the time of the read. Records that do not decode are skipped and counted (the worker
dead-lettered them too). Events are put in event-time order; ties (many: datasets have
one-second or one-day timestamps) go by user, then kind (a purchase before the review of the
same line, an impression before its clicks), then topic, partition and offset. That order is
deterministic whatever the partitioning and however the producers interleaved (catalog, user
and follow events of a second come before that second's behaviour), and it keeps
a purchase next to the review that rates it, which the positive rule reads
(:func:`scoring.evaluation.paired_rating`). ``since``/``until`` keep an event-time range.
Erased users' events (those an erasure covers) are left out.

The offsets read (first and last per partition) go into the trained version's manifest, so a
version says exactly which records it learned from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from state.events import EVENT_KINDS, DeadLetter, Erasure, Event, EventKind, Follow
from stream_app.inspect import scan_timed
from stream_app.records import events_of
from stream_app.settings import Settings

#: Tie order of kinds at equal (time, user): what must exist before behaviour refers to it.
KIND_ORDER: dict[EventKind, int] = {
    "item": 0, "user": 1, "follow": 2, "impression": 3, "click": 4, "purchase": 5, "review": 6, "erasure": 7
}


@dataclass
class History:
    events: list[Event]
    #: topic -> partition -> [first offset, last offset] read
    offsets: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    skipped: int = 0

    def source(self) -> dict[str, Any]:
        """What a manifest records about where the examples came from."""
        return {
            "source": "topics",
            "offsets": {t: {str(p): r for p, r in parts.items()} for t, parts in self.offsets.items()},
            "events_read": len(self.events),
            "undecodable": self.skipped,
        }


def read_history(settings: Settings, *, since: float | None = None, until: float | None = None) -> History:
    """Every retained input event of ``settings``' topics in ``[since, until)`` (module docstring)."""
    keyed: list[tuple[tuple[float, bool, str, int, str, int, int, int], Event]] = []
    history = History(events=[])
    for kind in EVENT_KINDS:
        topic = settings.topic(kind)
        for key, value, _, partition, offset, record_ts in scan_timed(settings, topic):
            span = history.offsets.setdefault(topic, {}).setdefault(partition, [offset, offset])
            span[0], span[1] = min(span[0], offset), max(span[1], offset)
            # The worker's checks, event time included: what it dead-lettered is not history.
            # A batch record (state.batch) gives each of its events in order.
            decoded = events_of(settings, kind, key, value, record_ts)
            for index, event in enumerate(decoded):
                if isinstance(event, DeadLetter):
                    history.skipped += 1
                    continue
                if (since is not None and event.ts < since) or (until is not None and event.ts >= until):
                    continue
                who = str(getattr(event, "user_id", None) or getattr(event, "item_id", ""))
                rank = KIND_ORDER[kind]
                keyed.append(((event.ts, rank >= KIND_ORDER["impression"], who, rank, topic, partition, offset, index), event))
    keyed.sort(key=lambda kv: kv[0])
    history.events = without_erased([e for _, e in keyed])
    return history


def without_erased(events: list[Event]) -> list[Event]:
    """``events`` minus the erasures and every event an erasure covers: the user's own at or
    before its time, and follows of the user from then or before. The trainer never learns
    from an erased user (their later events, a returning user's, are kept)."""
    erased: dict[str, float] = {}
    for e in events:
        if isinstance(e, Erasure):
            erased[e.user_id] = max(e.ts, erased.get(e.user_id, e.ts))
    if not erased:
        return events

    def covered(user: str | None, ts: float) -> bool:
        return user is not None and user in erased and ts <= erased[user]

    return [
        e for e in events
        if not isinstance(e, Erasure)
        and not covered(getattr(e, "user_id", None), e.ts)
        and not (isinstance(e, Follow) and covered(e.followee_id, e.ts))
    ]
