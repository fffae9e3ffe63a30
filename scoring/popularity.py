"""Decayed item popularity, kept per worker over the events that worker applies."""

from __future__ import annotations

import bisect
import itertools
import math
import zlib
from collections.abc import Callable
from collections.abc import Set as AbstractSet

import msgspec

from state.decay import SECONDS_PER_DAY, factor, weight_at

_LN2 = math.log(2.0)


def tie_hash(item_id: str) -> int:
    """A stable (across processes, unlike ``hash()``), unsalted order for equal popularity.
    crc32: it runs over the whole candidate set on every cache refresh, so it must be cheap."""
    return zlib.crc32(item_id.encode())


class PopularitySnapshot(msgspec.Struct, frozen=True, array_like=True):
    """:class:`Popularity`'s values, exactly (``scoring.shared``'s snapshot)."""

    now: float
    #: item -> (value, its reference time), in insertion order (MessagePack keeps it)
    values: dict[str, tuple[float, float]]
    #: item -> its order key (items whose value was ever positive)
    keys: dict[str, float]


def key_order(keys: dict[str, float], hashes: dict[str, int]) -> list[tuple[float, int, str]]:
    """The ``(-key, tie_hash, id)`` order of ``keys`` built at once, filling ``hashes``: what
    one insort per item reaches (a restored :class:`Popularity` or segment)."""
    for item in keys:
        if item not in hashes:
            hashes[item] = tie_hash(item)
    return sorted((-key, hashes[item], item) for item, key in keys.items())


class Popularity:
    """``pop(i) = sum of event weights on i, decayed by event time``.

    Each item keeps its value at its own reference time, so an update touches one item
    only; reads decay to the common "now" (the latest event time seen).
    """

    def __init__(self, half_life_days: float, refresh_s: float = 2.0, clock: Callable[[], float] | None = None) -> None:
        self._half_life_days = half_life_days
        self._hl = half_life_days * SECONDS_PER_DAY
        #: paces the ranking cache only (values never depend on it). Event time by default (the
        #: latest event time seen): a cache refreshed by the wall clock made what a worker emitted
        #: depend on how fast it ran, so a replay through the broker could not reproduce it.
        self.now: float = 0.0
        self._clock: Callable[[], float] = clock if clock is not None else self._event_time
        self._values: dict[str, tuple[float, float]] = {}
        self._refresh_s = refresh_s
        self._top_cache: dict[str, list[tuple[float, str]]] = {}
        self._cache_at = 0.0
        self._dirty = False
        self._hashes: dict[str, int] = {}
        # The order of every item, kept incrementally (see :meth:`order`): item -> its key
        # ln(value) + ref * ln2 / half-life, and the sorted (-key, tie_hash, id) entries.
        self._lkey: dict[str, float] = {}
        self._order: list[tuple[float, int, str]] = []
        #: item -> its key when the order was last brought up to date (None: not in it yet)
        self._moved: dict[str, float | None] = {}

    def __len__(self) -> int:
        return len(self._values)

    @property
    def half_life_days(self) -> float:
        return self._half_life_days

    def _event_time(self) -> float:
        return self.now

    def add(self, item_id: str, weight: float, ts: float) -> None:
        value, ref = self._values.get(item_id, (0.0, ts))
        if ts > ref:
            value, ref = value * factor(ts - ref, self._hl), ts
        new = value + weight_at(weight, ts, ref, self._hl)
        self._values[item_id] = (new, ref)
        self.now = max(self.now, ts)
        self._dirty = True
        if new > 0.0:
            if item_id not in self._moved:
                self._moved[item_id] = self._lkey.get(item_id)
            self._lkey[item_id] = math.log(new) + ref * _LN2 / self._hl

    def order(self) -> list[tuple[float, int, str]]:
        """Every item with a positive popularity, most popular first, as ``(-key, tie_hash, id)``
        (read-only: the list is this object's own).

        Exact at any time, and cheap: every value decays by the same factor, so the order of
        two items changes only when one of them is added to. Each item's *key* is its value's
        logarithm projected to a common time origin, ``ln(value) + ref * ln 2 / half-life``;
        ordering by key is ordering by the value at any common "now". Only the items added to
        since the last call move (bisect out, bisect in): on CiaoDVD's 16k films a full re-sort
        per event-time step was most of the replay's cost.
        """
        if self._moved:
            order, hashes = self._order, self._hashes
            for item, old in self._moved.items():
                h = hashes.get(item)
                if h is None:
                    h = hashes[item] = tie_hash(item)
                if old is not None:
                    del order[bisect.bisect_left(order, (-old, h, item))]
                bisect.insort(order, (-self._lkey[item], h, item))
            self._moved.clear()
        return self._order

    def entry(self, item_id: str) -> tuple[float, int, str] | None:
        """``item_id``'s entry in :meth:`order` (None when it has no positive popularity); only
        valid until the next :meth:`add`, and after :meth:`order` brought the entries up to date."""
        key = self._lkey.get(item_id)
        return None if key is None else (-key, self._hashes[item_id], item_id)

    def value(self, item_id: str) -> float:
        value, ref = self._values.get(item_id, (0.0, self.now))
        return weight_at(value, ref, self.now, self._hl)

    def values(self, items: list[str]) -> list[float]:
        """:meth:`value` of each of ``items`` (one call for a ranking's candidates)."""
        values, now, hl, absent, exp = self._values, self.now, self._hl, (0.0, self.now), math.exp
        # weight_at's expression inlined (bit-identical): a call per candidate was most of this.
        return [v * exp(-_LN2 * (now - t) / hl) for v, t in map(values.get, items, itertools.repeat(absent))]

    def top(self, candidates: AbstractSet[str] | None, n: int, key: str = "*") -> list[tuple[float, str]]:
        """The ``n`` most popular of ``candidates`` (all items when None), best first."""
        return self.ranked(candidates, key)[:n]

    def ranked(self, candidates: AbstractSet[str] | None, key: str = "*") -> list[tuple[float, str]]:
        """All of ``candidates`` by popularity, best first; equal popularity is ordered by a
        stable hash of the item id (:func:`tie_hash`), not by the id string, so no id range is
        favoured when values tie (e.g. all zero right after a restart). The recommender
        re-orders those ties per user.

        Cached per ``key`` for ``refresh_s`` seconds of ``clock`` (wall seconds by default):
        ranking on every emission would dominate the per-event cost, and popularity moves slowly.
        """
        clock = self._clock()
        if self._dirty and clock - self._cache_at > self._refresh_s:
            self._top_cache.clear()
            self._cache_at = clock
            self._dirty = False
        cached = self._top_cache.get(key)
        if cached is not None and (candidates is None or len(cached) == len(candidates)):
            return cached
        pool = self._values.keys() if candidates is None else candidates
        # Sorted by (-value, tie_hash, id): the id itself only settles a crc32 collision, so the
        # order stays total and reproducible. Plain tuples sort without a key function, and each
        # item's hash is computed once: a rebuild is the hot path of a replay (evaluate).
        hashes = self._hashes
        for i in pool:
            if i not in hashes:
                hashes[i] = tie_hash(i)
        values, now, hl = self._values, self.now, self._hl
        absent = (0.0, now)
        # weight_at(value, ref, now, hl) is what value() computes; negation is exact.
        keyed = [(-weight_at(*values.get(i, absent), now, hl), hashes[i], i) for i in pool]
        keyed.sort()
        ranked = [(-v, i) for v, _, i in keyed]
        self._top_cache[key] = ranked
        return ranked

    # --- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> PopularitySnapshot:
        """Everything the values and the order depend on (not the ranking cache, which is derived)."""
        return PopularitySnapshot(now=self.now, values=dict(self._values), keys=dict(self._lkey))

    def empty_like(self) -> Popularity:
        """A new, empty instance made as this one was (a snapshot is restored into it off the
        event loop, then swapped in)."""
        clock = None if self._clock == self._event_time else self._clock
        return Popularity(self._half_life_days, self._refresh_s, clock)

    def restore(self, snap: PopularitySnapshot) -> None:
        """Load ``snap`` into this empty instance: it then reads and orders as the one that made it."""
        if self._values:
            raise ValueError("restore needs an empty Popularity")
        self._values = dict(snap.values)
        self._lkey = dict(snap.keys)
        self._hashes = {}
        self._order = key_order(self._lkey, self._hashes)
        self._moved = {}
        self.now = snap.now
        self._dirty = True
