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

Lists are remembered for the most recently ranked users within a budget of bytes
(``PERSONA_LIVE_QUALITY_BYTES``; least recently ranked dropped first): the rate is measured
over active users with memory bounded by bytes, not users (at 200,000 entries it held ~63 MB
of a worker's RSS, the largest part that grew with users after the profile cache), and a
worker restart starts the memory afresh (positives of users it has no list for are not counted).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Counter

from scoring.ranker import Scorer
from stream_app import metrics

Mode = Literal["shadow", "share"]
SERVED = "served"
SHADOW = "shadow"
#: Bytes of the last lists remembered for the live hit rate (the setting's default): about
#: 100k users' top-10 lists.
CAPACITY_BYTES = 32 * 1024 * 1024
#: Bytes of one remembered list beside its user id string and its packed items: the dict slot
#: and ordered node, the tuple and the bytes header (tracemalloc: 260 B per top-10 list of a
#: 100,000-user memory without the ids, 80 B of it the items).
ENTRY_OVERHEAD = 180


def entry_bytes(user_id: str, packed: bytes) -> int:
    """The estimated memory of one remembered list (the budget counts this)."""
    return ENTRY_OVERHEAD + sys.getsizeof(user_id) + len(packed)


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


def _packed(items: list[str]) -> bytes:
    """A list's items as packed 64-bit hashes: about 8 bytes per item instead of a set of
    strings (a user's remembered list went from ~1.7 KB to ~0.3 KB). ``hash`` of a str is
    salted per process, and these lists never leave the process."""
    return struct.pack(f"{len(items)}q", *(hash(i) for i in items))


def _contains(packed: bytes, item_id: str) -> bool:
    # A false hit needs two 64-bit hashes to collide within one 10-item list: not a concern.
    return hash(item_id) in struct.unpack(f"{len(packed) // 8}q", packed)


class LiveQuality:
    """The last list each ranker made per user, and the hit counters (module docstring)."""

    def __init__(
        self, capacity_bytes: int = CAPACITY_BYTES, hits: Counter = metrics.LIVE_HITS, positives: Counter = metrics.LIVE_POSITIVES
    ) -> None:
        self.capacity_bytes = capacity_bytes
        #: estimated bytes of the lists held (served and shadow: :func:`entry_bytes`)
        self.nbytes = 0
        #: user -> (ranker version, packed list) of the lists users were shown; the version
        #: strings are shared objects, so an entry costs its tuple and bytes
        self._served: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        #: the same for the shadow candidate's lists (only while one runs)
        self._shadow: dict[str, tuple[str, bytes]] = {}
        self._versions: dict[str, str] = {}
        self._hits = hits
        self._positives = positives
        #: (version, role) -> [hits, positives], for tests and `persona status`-like reports
        self.tally: dict[tuple[str, str], list[int]] = {}
        #: (version, role) -> its (positives, hits) counter children: ``labels()`` takes a lock
        #: and builds a key on every call, and a positive is most purchases
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._served or user_id in self._shadow

    def ranked(self, user_id: str, role: str, version: str, items: list[str]) -> None:
        version = self._versions.setdefault(version, version)
        entry = (version, _packed(items))
        self.nbytes += entry_bytes(user_id, entry[1])
        if role == SHADOW:
            self._drop(user_id, self._shadow.pop(user_id, None))
            self._shadow[user_id] = entry
        else:
            old = self._served.pop(user_id, None)  # re-inserted at the recent end
            self._drop(user_id, old)
            self._served[user_id] = entry
        # Least recently served first, with their shadow lists. A shadow list alone is left when
        # the budget is smaller than the user's own served list (that went first): it goes too.
        while self.nbytes > self.capacity_bytes and (self._served or self._shadow):
            if self._served:
                gone, dropped = self._served.popitem(last=False)
                self._drop(gone, dropped)
                self._drop(gone, self._shadow.pop(gone, None))
            else:
                gone, dropped = self._shadow.popitem()
                self._drop(gone, dropped)

    def _drop(self, user_id: str, entry: tuple[str, bytes] | None) -> None:
        if entry is not None:
            self.nbytes -= entry_bytes(user_id, entry[1])

    def forget_shadow(self, user_id: str) -> None:
        self._drop(user_id, self._shadow.pop(user_id, None))

    def forget(self, user_id: str) -> None:
        """An erasure: the user's last lists go (the tallies hold no user)."""
        self._drop(user_id, self._served.pop(user_id, None))
        self._drop(user_id, self._shadow.pop(user_id, None))

    def positive(self, user_id: str, item_id: str) -> None:
        """A positive event of ``user_id`` on ``item_id``, before it is applied."""
        for role, entry in ((SERVED, self._served.get(user_id)), (SHADOW, self._shadow.get(user_id))):
            if entry is None:
                continue
            version, packed = entry
            hit = _contains(packed, item_id)
            children = self._children.get((version, role))
            if children is None:
                # The hits series exists from the first positive on (at 0), so a version that
                # never hits reads as a rate of 0 in Prometheus, not as no data.
                children = self._children[(version, role)] = (
                    self._positives.labels(version, role),
                    self._hits.labels(version, role),
                )
            positives, hits = children
            positives.inc()
            if hit:
                hits.inc()
            counts = self.tally.setdefault((version, role), [0, 0])
            counts[0] += hit
            counts[1] += 1

    def rate(self, version: str, role: str = SERVED) -> float | None:
        hits, n = self.tally.get((version, role), (0, 0))
        return hits / n if n else None
