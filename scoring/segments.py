"""Attribute-segment priors for cold start: what users of the same age band, occupation or gender engage with.

A user with no history yet often has declared attributes (MovieLens: age, gender, occupation, zip
code). :func:`segments_of` turns them into coarse segment keys (``"age=25-34"``,
``"occupation=engineer"``), and :class:`SegmentPopularity` keeps a decayed popularity per
(segment, item) so those users can get "popular with users aged 25-34" instead of the global
most-popular list.

Scores: ``score(S, i) = sum over s in S of share_s(i)`` with ``share_s(i) = pop_s(i) / total_s``,
the item's decayed popularity in segment ``s`` over the segment's decayed total. Using shares
rather than raw values means a big segment (``gender=m``: 670 of MovieLens's 943 users) does not
drown a small one (``occupation=doctor``: 7 users) in the sum. Every value in a segment decays at
the same rate, so a share does not change with the time it is read at: it is computed at the
segment's latest event time (which also keeps far-future reads from underflowing to 0/0), and a
segment's order changes only for the items an event lands on (kept incrementally). Equal scores go by
:func:`scoring.popularity.tie_hash`, then the id. Pure: event time only, no wall clock.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence

import msgspec

from scoring.popularity import key_order, tie_hash
from state.decay import SECONDS_PER_DAY, factor, weight_at
from state.events import AttributeValue

#: MovieLens's own age bands (ml-1m's README): (lowest age in the band, its key), ascending.
AGE_BANDS: tuple[tuple[int, str], ...] = (
    (0, "under-18"),
    (18, "18-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-49"),
    (50, "50-55"),
    (56, "56+"),
)
#: Attribute names (lowercased, without ``_``, ``-``, spaces) never made into segments: postal
#: codes and ids are nearly unique per user (MovieLens has 795 zip codes for 943 users), so their
#: segments would hold a user or two and say nothing about anybody else.
IGNORED: frozenset[str] = frozenset({"zip", "zipcode", "postcode", "postalcode", "id", "userid"})
_LN2 = math.log(2.0)
#: Candidates read from each segment's ranking per requested item (see :meth:`SegmentPopularity.top`).
SCAN_FACTOR = 20


def _name_key(name: str) -> str:
    return "".join(c for c in name.lower() if c not in "_- ")


@functools.lru_cache(maxsize=1024)
def _segment_name(raw_name: str) -> str | None:
    """An attribute name as segments spell it (stripped, lowercased), None for an empty or
    :data:`IGNORED` name. Memoized: a deployment has a handful of attribute names."""
    name = raw_name.strip().lower()
    return None if not name or _name_key(name) in IGNORED else name


def age_band(age: float) -> str | None:
    """The band key of an age (``"18-24"``; fractions floored), None when it is not a real age."""
    if not math.isfinite(age) or age < 0:
        return None
    years = math.floor(age)
    band = AGE_BANDS[0][1]
    for low, key in AGE_BANDS:
        if years >= low:
            band = key
    return band


def _value_text(value: AttributeValue) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    text = value.strip().lower() if isinstance(value, str) else str(value)
    return text or None


def segments_of(attributes: Mapping[str, AttributeValue | None]) -> tuple[str, ...]:
    """The segment keys of a user's attributes, sorted and without repeats.

    Names are stripped and lowercased. ``age`` (a number, or a string holding one) becomes its
    band (``"age=25-34"``); strings become ``"name=value"`` lowercased and stripped; booleans
    ``"name=true"``/``"name=false"``; other numbers ``"name=<str(value)>"``. None, empty strings,
    non-finite numbers and the names in :data:`IGNORED` (zip/post codes, ids) give nothing.
    """
    # Called for every engagement and every ranking with attributes that rarely change, so
    # the keys of a set of (name, value) pairs are memoized. The value's type is part of the
    # key: 1, 1.0 and True are equal in a dict but give "n=1", "n=1.0" and "n=true".
    pairs = []
    for raw_name, value in attributes.items():
        if value is None:
            continue
        name = _segment_name(raw_name)
        if name is not None:
            pairs.append((name, value.__class__, value))
    return _segments(tuple(pairs))


@functools.lru_cache(maxsize=4096)
def _segments(pairs: tuple[tuple[str, type, AttributeValue], ...]) -> tuple[str, ...]:
    out: set[str] = set()
    for name, _, value in pairs:
        if name == "age" and not isinstance(value, bool):
            try:
                age = float(value)
            except ValueError:
                continue
            band = age_band(age)
            if band is not None:
                out.add(f"age={band}")
            continue
        text = _value_text(value)
        if text is not None:
            out.add(f"{name}={text}")
    return tuple(sorted(out))


def describe(segment: str) -> str:
    """Human text for a segment key, for a reason line: ``"age=25-34"`` -> ``"users aged
    25-34"``, ``"occupation=engineer"`` -> ``"users with occupation engineer"``."""
    name, sep, value = segment.partition("=")
    if not sep:
        return f"users in {segment}"
    if name == "age":
        return f"users aged {value.replace('-', ' ', 1) if value == 'under-18' else value}"
    return f"users with {name} {value}"


class _Segment:
    """One segment: item -> (decayed value, its reference time), the decayed total, and the
    items' order kept incrementally (as :meth:`scoring.popularity.Popularity.order`)."""

    __slots__ = ("values", "ref", "total", "total_ref", "keys", "order", "moved", "changes", "shares", "shares_at")

    def __init__(self) -> None:
        self.values: dict[str, tuple[float, float]] = {}
        self.ref = -math.inf  # the latest event time in the segment
        #: the decayed sum of every value, at ``total_ref``
        self.total = 0.0
        self.total_ref = -math.inf
        #: item -> ln(value) + ref * ln 2 / half-life: ordering by it is ordering by value at any time
        self.keys: dict[str, float] = {}
        #: ``(-key, tie_hash, item)``, ascending: best first
        self.order: list[tuple[float, int, str]] = []
        #: item -> its key when the order was last brought up to date (None: not in it yet)
        self.moved: dict[str, float | None] = {}
        #: adds so far; ``shares`` holds item -> share as of ``shares_at`` adds (a ranking burst,
        #: such as the worker's pre-commit flush, reads the same shares again and again)
        self.changes = 0
        self.shares: dict[str, float] = {}
        self.shares_at = -1


class SegmentSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """One segment of :class:`SegmentPopularity`, exactly (``scoring.shared``'s snapshot)."""

    name: str
    ref: float
    total: float
    total_ref: float
    values: dict[str, tuple[float, float]]
    keys: dict[str, float]


class SegmentPopularity:
    """Decayed popularity per (segment, item), read as shares of each segment (see the module docstring).

    Exact at every read and independent of when reads happen: a cache refreshed by reads made
    the state depend on the read pattern, so a worker that rebuilt it from the deltas topic
    after a restart ranked differently from one that had ranked all along."""

    def __init__(self, half_life_days: float) -> None:
        if not half_life_days > 0.0 or not math.isfinite(half_life_days):
            raise ValueError(f"half_life_days must be a positive number, got {half_life_days}")
        self._half_life_days = half_life_days
        self._hl = half_life_days * SECONDS_PER_DAY
        self._segments: dict[str, _Segment] = {}
        self._hashes: dict[str, int] = {}

    def __len__(self) -> int:
        """Segments known."""
        return len(self._segments)

    def add(self, segments: Sequence[str], item: str, weight: float, ts: float) -> None:
        """One engagement with ``item`` of weight ``weight`` at event time ``ts`` by a user in
        ``segments`` (repeats counted once): each segment's value for the item grows by it,
        decayed by event time."""
        hl = self._hl
        for name in dict.fromkeys(segments):
            seg = self._segments.get(name)
            if seg is None:
                seg = self._segments[name] = _Segment()
            seg.changes += 1
            value, ref = seg.values.get(item, (0.0, ts))
            if ts > ref:
                value, ref = value * factor(ts - ref, hl), ts
            add = weight_at(weight, ts, ref, hl)
            new = value + add
            seg.values[item] = (new, ref)
            seg.ref = max(seg.ref, ts)
            if seg.total_ref == -math.inf:
                seg.total, seg.total_ref = 0.0, ts
            if ts > seg.total_ref:
                seg.total, seg.total_ref = seg.total * factor(ts - seg.total_ref, hl), ts
            seg.total += weight_at(weight, ts, seg.total_ref, hl)
            if new > 0.0:
                if item not in seg.moved:
                    seg.moved[item] = seg.keys.get(item)
                seg.keys[item] = math.log(new) + ref * _LN2 / hl
        if item not in self._hashes:
            self._hashes[item] = tie_hash(item)

    def _fresh(self, name: str) -> _Segment | None:
        """The segment with its order up to date (only the items added to since the last read move)."""
        seg = self._segments.get(name)
        if seg is None or not seg.moved:
            return seg
        order, hashes = seg.order, self._hashes
        for item, old in seg.moved.items():
            h = hashes[item]
            if old is not None:
                del order[bisect.bisect_left(order, (-old, h, item))]
            bisect.insort(order, (-seg.keys[item], h, item))
        seg.moved.clear()
        return seg

    def _share(self, seg: _Segment, item: str) -> float:
        entry = seg.values.get(item)
        if entry is None or seg.total <= 0.0:
            return 0.0
        at, hl = seg.ref, self._hl
        return weight_at(entry[0], entry[1], at, hl) / weight_at(seg.total, seg.total_ref, at, hl)

    def share(self, segment: str, item: str) -> float:
        """``share_segment(item)`` (0 for an unknown segment or item)."""
        seg = self._segments.get(segment)
        return 0.0 if seg is None else self._share(seg, item)

    def top(
        self, segments: Sequence[str], k: int, *, exclude: Collection[str], now: float, scan: int = SCAN_FACTOR
    ) -> list[tuple[str, float, str]]:
        """The ``k`` items most popular in ``segments``, not in ``exclude``: ``(item, score, the
        segment whose share contributed most)``, best first; positive scores only, so the list
        may be shorter than ``k``. Empty ``segments`` (or ``k <= 0``) gives ``[]``.

        Candidates are each segment's best ``scan x k`` items that are not excluded; each
        candidate's score then sums its shares over all of ``segments``. An item outside every
        segment's pool cannot make the list unless its shares across several segments add up
        past the pools' best. ``now`` does not change a share (see the module docstring); it is
        taken for symmetry with the other candidate sources.
        """
        del now  # shares are invariant in the time they are read at
        names = sorted(set(segments))
        if k <= 0 or not names:
            return []
        fresh = [(n, s) for n, s in ((n, self._fresh(n)) for n in names) if s is not None]
        pool = scan * k
        candidates: set[str] = set()
        for _, seg in fresh:
            taken = 0
            for _, _, item in seg.order:
                if taken >= pool:
                    break
                if item in exclude:
                    continue
                candidates.add(item)
                taken += 1
        # _share per (candidate, segment), with each segment's decayed total hoisted: the same
        # float operations in the same order (bit-identical shares), at half the cost per ranking.
        hl, exp = self._hl, math.exp
        segs = [(name, seg, weight_at(seg.total, seg.total_ref, seg.ref, hl)) for name, seg in fresh if seg.total > 0.0]
        if not segs:
            return []
        items = sorted(candidates)
        # One list of shares per segment (comprehensions, not a loop per candidate and segment:
        # this was a fifth of a MovieLens ranking), summed in segment order: the same float
        # operations in the same order as _share (bit-identical scores). A share is computed once
        # per state of its segment: until the segment's next add, rankings read it from the cache.
        shares: list[list[float]] = []
        for _, seg, denom in segs:
            if seg.shares_at != seg.changes:
                seg.shares, seg.shares_at = {}, seg.changes
            cache, values, at = seg.shares, seg.values, seg.ref
            missing = [item for item in items if item not in cache]
            if missing:
                cache.update(zip(missing, [
                    0.0 if e is None else e[0] * exp(-_LN2 * (at - e[1]) / hl) / denom for e in map(values.get, missing)
                ], strict=True))
            shares.append([cache[item] for item in items])
        totals = [0.0 + x for x in shares[0]]
        for more in shares[1:]:
            totals = [a + b for a, b in zip(totals, more, strict=True)]
        names = [name for name, _, _ in segs]
        hashes = self._hashes
        keyed = [(-t, hashes[item], item, j) for j, (item, t) in enumerate(zip(items, totals, strict=True)) if t > 0.0]
        keyed.sort()
        out: list[tuple[str, float, str]] = []
        for score, _, item, j in keyed[:k]:
            # The segment whose share contributed most; names ascend, so the first of equal shares stays.
            column = [s[j] for s in shares]
            out.append((item, -score, names[column.index(max(column))]))
        return out

    def score(self, segments: Sequence[str], items: Iterable[str], now: float) -> dict[str, float]:
        """The :meth:`top` score of each of ``items`` (0 for items, or segments, never seen)."""
        del now
        fresh = [s for s in (self._segments.get(n) for n in sorted(set(segments))) if s is not None]
        return {item: sum((self._share(seg, item) for seg in fresh), 0.0) for item in items}

    def describe(self, segment: str) -> str:
        """Human text for a segment key (:func:`describe`)."""
        return describe(segment)

    # --- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> list[SegmentSnapshot]:
        """Every segment's values, totals and order keys (the orders are derived from the keys)."""
        return [
            SegmentSnapshot(name=name, ref=seg.ref, total=seg.total, total_ref=seg.total_ref, values=dict(seg.values), keys=dict(seg.keys))
            for name, seg in self._segments.items()
        ]

    def empty_like(self) -> SegmentPopularity:
        """A new, empty instance with this one's half-life."""
        return SegmentPopularity(self._half_life_days)

    def restore(self, snap: Sequence[SegmentSnapshot]) -> None:
        """Load ``snap`` into this empty instance: it then scores as the one that made it."""
        if self._segments:
            raise ValueError("restore needs an empty SegmentPopularity")
        for s in snap:
            seg = self._segments[s.name] = _Segment()
            seg.values, seg.keys = dict(s.values), dict(s.keys)
            seg.ref, seg.total, seg.total_ref = s.ref, s.total, s.total_ref
            seg.order = key_order(seg.keys, self._hashes)
