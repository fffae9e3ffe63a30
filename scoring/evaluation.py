"""Prequential evaluation, the pure parts: which events are test positives, the metrics, and
the popularity baselines. The runner (``stream_app/evaluate.py``) replays a stream through the
worker's pipeline and calls these; nothing here knows about Kafka, the pipeline or a clock.

Protocol (test-then-train, in stream order): before an event is applied, if it is a *positive*
of a user with at least one earlier interaction, each variant's current top-K for that user,
over items the user has not interacted with, is scored against the event's item; then the
event is applied to every variant's state.

- **interaction**: a click, purchase or review of an item; a user's *earlier interactions*
  are the distinct items they interacted with before (an Amazon or CiaoDVD line's purchase and
  review of one item are one interaction).
- **positive**: a purchase or review that is the user's first interaction with the item and,
  where the data carries a rating for that (user, item), has rating >= 4. A review carries its
  rating; a purchase takes the rating of the review emitted with it (the next event: same user,
  item and time, as the Amazon and CiaoDVD readers emit one line). MovieLens purchases carry
  no rating, so each is a positive.
- **cold**: fewer than 3 earlier interactions.

Metrics, one relevant item per evaluated positive: Recall@K (hit rate), NDCG@K =
``1 / log2(rank + 1)`` when the item is at ``rank <= K``, else 0; coverage@K = distinct items in
any evaluated top-K / items seen in the replay; diversity@K = mean over lists of the mean over
pairs of ``1 - Jaccard`` (of the items' category sets, or of their co-occurrence, whichever the
caller passes; pairs it cannot compare are left out).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Callable, Collection, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Final

from scoring.baseline import tie_key
from scoring.popularity import Popularity
from state.decay import SECONDS_PER_DAY
from state.events import Click, Event, Purchase, Review

POSITIVE_KINDS: Final = (Purchase, Review)
INTERACTIONS: Final = (Click, Purchase, Review)
MIN_RATING: Final = 4.0
COLD_BELOW: Final = 3


# --- labels ----------------------------------------------------------------------------------------


def paired_rating(event: Event, following: Event | None) -> float | None:
    """The rating that applies to ``event``: a review's own; for a purchase, that of the review
    emitted with it (``following`` is a review of the same user and item at the same time);
    ``None`` when the data has none."""
    if isinstance(event, Review):
        return event.rating
    if (
        isinstance(event, Purchase)
        and isinstance(following, Review)
        and following.user_id == event.user_id
        and following.item_id == event.item_id
        and following.ts == event.ts
    ):
        return following.rating
    return None


@dataclass(frozen=True, slots=True)
class Label:
    """What the protocol makes of one interaction, before it is applied."""

    user_id: str
    item_id: str
    #: the event is a purchase or a review
    kind_counts: bool
    #: the user's first interaction with the item
    first: bool
    rating: float | None
    #: distinct items the user interacted with before this event
    earlier: int
    min_rating: float = MIN_RATING
    cold_below: int = COLD_BELOW

    @property
    def positive(self) -> bool:
        return self.kind_counts and self.first and (self.rating is None or self.rating >= self.min_rating)

    @property
    def evaluated(self) -> bool:
        """A positive of a user with at least one earlier interaction."""
        return self.positive and self.earlier >= 1

    @property
    def cold(self) -> bool:
        return self.earlier < self.cold_below


class Interactions:
    """Each user's interacted items so far: the labels' state and every variant's exclusion."""

    def __init__(self, *, min_rating: float = MIN_RATING, cold_below: int = COLD_BELOW) -> None:
        self.min_rating = min_rating
        self.cold_below = cold_below
        self._items: dict[str, set[str]] = {}

    def items(self, user_id: str) -> Collection[str]:
        return self._items.get(user_id, frozenset())

    def label(self, event: Event, following: Event | None = None) -> Label | None:
        """The label of ``event`` (``None`` unless it is an interaction); changes nothing."""
        if not isinstance(event, INTERACTIONS):
            return None
        items: Collection[str] = self._items.get(event.user_id, frozenset())
        return Label(
            user_id=event.user_id,
            item_id=event.item_id,
            kind_counts=isinstance(event, POSITIVE_KINDS),
            first=event.item_id not in items,
            rating=paired_rating(event, following),
            earlier=len(items),
            min_rating=self.min_rating,
            cold_below=self.cold_below,
        )

    def record(self, event: Event) -> bool:
        """Fold an applied interaction in; returns whether it was the user's first with the item."""
        if not isinstance(event, INTERACTIONS):
            return False
        items = self._items.setdefault(event.user_id, set())
        if event.item_id in items:
            return False
        items.add(event.item_id)
        return True


# --- metrics ---------------------------------------------------------------------------------------

#: Similarity of two items in ``[0, 1]``, or ``None`` when the pair cannot be compared.
Similarity = Callable[[str, str], float | None]


def jaccard(a: AbstractSet[str], b: AbstractSet[str]) -> float | None:
    """``|a & b| / |a | b|``; ``None`` when either set is empty (nothing to compare)."""
    if not a or not b:
        return None
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def rank_of(ranked: Sequence[str], target: str) -> int | None:
    """1-based position of ``target`` in ``ranked``, ``None`` when absent."""
    try:
        return ranked.index(target) + 1
    except ValueError:
        return None


def ndcg(rank: int | None, k: int) -> float:
    """Binary relevance, one relevant item: ``1 / log2(rank + 1)`` within the top ``k``."""
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


@dataclass
class Accumulator:
    """Recall, NDCG, coverage and diversity of one variant's lists over evaluated positives."""

    ks: tuple[int, ...]
    n: int = 0
    cold: int = 0
    hits: dict[int, int] = field(default_factory=dict)
    gain: dict[int, float] = field(default_factory=dict)
    recommended: dict[int, set[str]] = field(default_factory=dict)
    div_sum: dict[int, float] = field(default_factory=dict)
    div_lists: dict[int, int] = field(default_factory=dict)
    length_sum: int = 0
    empty: int = 0

    def __post_init__(self) -> None:
        self.ks = tuple(sorted(set(self.ks)))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"cut-offs must be >= 1, got {self.ks}")
        for k in self.ks:
            self.hits.setdefault(k, 0)
            self.gain.setdefault(k, 0.0)
            self.recommended.setdefault(k, set())
            self.div_sum.setdefault(k, 0.0)
            self.div_lists.setdefault(k, 0)

    def add(self, ranked: Sequence[str], target: str, *, cold: bool, similarity: Similarity | None = None) -> None:
        """One evaluated positive: ``ranked`` (best first, at least ``max(ks)`` long when it can)
        against the positive's item."""
        top = list(ranked[: self.ks[-1]])
        self.n += 1
        self.cold += cold
        self.length_sum += len(top)
        self.empty += not top
        rank = rank_of(top, target)
        for k in self.ks:
            if rank is not None and rank <= k:
                self.hits[k] += 1
                self.gain[k] += ndcg(rank, k)
            self.recommended[k].update(top[:k])
        if similarity is not None and len(top) >= 2:
            self._diversity(top, similarity)

    def _diversity(self, top: list[str], similarity: Similarity) -> None:
        # Pairs (i, j), i < j, in order of j: a prefix of pairs is the list cut at j + 1.
        total, pairs, j_seen = 0.0, 0, 1
        for k in self.ks:
            for j in range(j_seen, min(k, len(top))):
                for i in range(j):
                    s = similarity(top[i], top[j])
                    if s is not None:
                        total += 1.0 - s
                        pairs += 1
            j_seen = max(j_seen, min(k, len(top)))
            if pairs:
                self.div_sum[k] += total / pairs
                self.div_lists[k] += 1

    def result(self, items_seen: int) -> dict[str, float]:
        """``recall@K``, ``ndcg@K``, ``coverage@K``, ``diversity@K`` per cut-off, then
        ``cold_share``, ``evaluated``, ``mean_length`` and ``empty_share``."""
        out: dict[str, float] = {}
        n = max(self.n, 1)
        for k in self.ks:
            out[f"recall@{k}"] = self.hits[k] / n
            out[f"ndcg@{k}"] = self.gain[k] / n
            out[f"coverage@{k}"] = len(self.recommended[k]) / items_seen if items_seen else 0.0
            out[f"diversity@{k}"] = self.div_sum[k] / self.div_lists[k] if self.div_lists[k] else 0.0
        out["cold_share"] = self.cold / n
        out["evaluated"] = self.n
        out["mean_length"] = self.length_sum / n
        out["empty_share"] = self.empty / n
        return out


# --- popularity baselines --------------------------------------------------------------------------


class RankIndex:
    """Items ordered by a float key, best first, updated one item at a time; top-k queries skip
    a user's excluded items and order equal keys by ``tie_key(user, item)``. A query walks
    only the head of the order (plus the group tied at the cut), never the whole catalogue."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, str]] = []  # (-key, item), ascending
        self._key: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._key)

    def key(self, item_id: str) -> float | None:
        return self._key.get(item_id)

    def set(self, item_id: str, key: float) -> None:
        old = self._key.get(item_id)
        if old is not None:
            if old == key:
                return
            del self._entries[bisect_left(self._entries, (-old, item_id))]
        insort(self._entries, (-key, item_id))
        self._key[item_id] = key

    def top(self, user_id: str, k: int, exclude: Collection[str]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        entries = self._entries
        n, i = len(entries), 0
        while i < n and len(out) < k:
            neg = entries[i][0]
            group: list[str] = []
            while i < n and entries[i][0] == neg:
                item = entries[i][1]
                if item not in exclude:
                    group.append(item)
                i += 1
            need = k - len(out)
            if len(group) > need:
                group = heapq.nsmallest(need, group, key=lambda it: tie_key(user_id, it))
            elif len(group) > 1:
                group.sort(key=lambda it: tie_key(user_id, it))
            out.extend((item, -neg) for item in group)
        return out


class CountPopularity:
    """``popularity``: all-time interaction counts so far (users per item), every seen item a
    candidate (catalogue items nobody touched yet count 0)."""

    def __init__(self) -> None:
        self._index = RankIndex()
        self._count: dict[str, int] = {}

    def see(self, item_id: str) -> None:
        """Make ``item_id`` a candidate (a catalogue entry), without counting an interaction."""
        if item_id not in self._count:
            self._count[item_id] = 0
            self._index.set(item_id, 0.0)

    def add(self, item_id: str) -> None:
        """One user's first interaction with ``item_id``."""
        c = self._count.get(item_id, 0) + 1
        self._count[item_id] = c
        self._index.set(item_id, float(c))

    def count(self, item_id: str) -> int:
        return self._count.get(item_id, 0)

    def top(self, user_id: str, k: int, exclude: Collection[str]) -> list[tuple[str, float]]:
        return self._index.top(user_id, k, exclude)


class DecayedPopularity:
    """``decayed_popularity``: :class:`scoring.popularity.Popularity` (event-time half-life, the
    pipeline's event weights), ranked without re-sorting the catalogue per query.

    Decay multiplies every item by the same factor, so the order at any "now" is the order of
    ``log2(pop(i)) + now / half_life`` computed when ``i`` last changed: only the item an event
    touches moves. Items with no weight (catalogue entries nobody touched) rank last, tied.
    """

    def __init__(self, half_life_days: float) -> None:
        self.popularity = Popularity(half_life_days)
        self._hl = half_life_days * SECONDS_PER_DAY
        self._index = RankIndex()
        self._t0: float | None = None

    def see(self, item_id: str) -> None:
        if self._index.key(item_id) is None:
            self._index.set(item_id, -math.inf)

    def add(self, item_id: str, weight: float, ts: float) -> None:
        self.popularity.add(item_id, weight, ts)
        if self._t0 is None:
            self._t0 = ts
        value = self.popularity.value(item_id)
        key = math.log2(value) + (self.popularity.now - self._t0) / self._hl if value > 0.0 else -math.inf
        self._index.set(item_id, key)

    def top(self, user_id: str, k: int, exclude: Collection[str]) -> list[tuple[str, float]]:
        """Best first, ``(item, popularity now)``."""
        return [(i, self.popularity.value(i)) for i, _ in self._index.top(user_id, k, exclude)]
