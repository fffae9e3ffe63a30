"""Serving a candidate ranker beside production, and the live hit rate that judges both.

- **Shadow**: every list is ranked by production *and* by the candidate; production's is
  emitted, the candidate's is kept in memory only, to be scored.
- **Share** (A/B): users whose stable hash (:func:`assigned`) falls below ``share`` are served
  the candidate's lists; everyone else production's. The hash depends on the user id only, so a
  user stays in the same arm across events, restarts and workers.

The **live hit rate** is the prequential protocol run online: when a user makes a positive
event (a purchase, or a review rated 4 or more or unrated, of an item new to them), it is a
*hit* for a ranker if the item was in the last list that ranker made for the user, before the
event is applied. Counted as ``persona_live_hits_total`` / ``persona_live_positives_total`` by
ranker version and role (``served``: lists users were shown; ``shadow``: lists nobody saw).

Lists are remembered for the ``capacity`` most recently ranked users (least recently ranked
dropped first): the rate is measured over active users with bounded memory, and a worker
restart starts the memory afresh (positives of users it has no list for are not counted).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter

from scoring.ranker import Scorer
from stream_app import metrics

Mode = Literal["shadow", "share"]
SERVED = "served"
SHADOW = "shadow"
#: Users whose last lists are remembered for the live hit rate.
CAPACITY = 200_000


@dataclass(frozen=True, slots=True)
class Candidate:
    model: Scorer
    mode: Mode
    #: with mode "share": the share of users it serves, in [0, 1]
    share: float = 0.0


def assigned(user_id: str, share: float) -> bool:
    """Whether ``user_id`` is in the candidate's arm of an A/B share: a stable hash in [0, 1)
    below ``share`` (the same on every worker, in every process, across restarts)."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, person=b"persona-ab").digest()
    return int.from_bytes(digest, "big") / 2**64 < share


class LiveQuality:
    """The last list each ranker made per user, and the hit counters (module docstring)."""

    def __init__(self, capacity: int = CAPACITY, hits: Counter = metrics.LIVE_HITS, positives: Counter = metrics.LIVE_POSITIVES) -> None:
        self.capacity = capacity
        #: user -> {role: (ranker version, items)}
        self._lists: OrderedDict[str, dict[str, tuple[str, frozenset[str]]]] = OrderedDict()
        self._hits = hits
        self._positives = positives
        #: (version, role) -> [hits, positives], for tests and `persona status`-like reports
        self.tally: dict[tuple[str, str], list[int]] = {}

    def ranked(self, user_id: str, role: str, version: str, items: list[str]) -> None:
        entry = self._lists.get(user_id)
        if entry is None:
            entry = self._lists[user_id] = {}
            if len(self._lists) > self.capacity:
                self._lists.popitem(last=False)
        else:
            self._lists.move_to_end(user_id)
        entry[role] = (version, frozenset(items))

    def forget_shadow(self, user_id: str) -> None:
        entry = self._lists.get(user_id)
        if entry is not None:
            entry.pop(SHADOW, None)

    def forget(self, user_id: str) -> None:
        """An erasure: the user's last lists go (the tallies hold no user)."""
        self._lists.pop(user_id, None)

    def positive(self, user_id: str, item_id: str) -> None:
        """A positive event of ``user_id`` on ``item_id``, before it is applied."""
        entry = self._lists.get(user_id)
        if not entry:
            return
        for role, (version, items) in entry.items():
            hit = item_id in items
            self._positives.labels(version, role).inc()
            # The hits series exists from the first positive on (at 0), so a version that never
            # hits reads as a rate of 0 in Prometheus, not as no data.
            hits = self._hits.labels(version, role)
            if hit:
                hits.inc()
            counts = self.tally.setdefault((version, role), [0, 0])
            counts[0] += hit
            counts[1] += 1

    def rate(self, version: str, role: str = SERVED) -> float | None:
        hits, n = self.tally.get((version, role), (0, 0))
        return hits / n if n else None
