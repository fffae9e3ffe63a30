"""Item-to-item co-occurrence over a stream: the item-kNN baseline and a collaborative candidate source.

Counts are built from the interactions seen so far, in stream order, and nothing else: no
wall clock, no randomness, so the same stream always gives the same counts and scores.

- ``n(i)``: how many users interacted with item ``i`` (each user once per item);
- ``c(i, j)``: how many users interacted with both ``i`` and ``j`` *within a window*: when a user
  interacts with a new item, it co-occurs once with each of that user's last ``window`` distinct
  items (50 by default: the cost of one interaction is bounded, and a very long history's
  oldest items say little about the new one);
- ``sim(i, j) = c(i, j) / sqrt(n(i) * n(j))`` (cosine over binary user vectors);
- ``score(H, j) = sum over h in H of sim(h, j)`` for a history ``H`` (the user's last ``window``
  items).

Equal scores are ordered by :func:`scoring.baseline.tie_key` (a per-user hash), never by the
id string.

Size bound (``max_neighbours`` = N > 0): a row that reaches 2N neighbours is cut to its N
largest counts (equal counts in :func:`scoring.popularity.tie_hash` order), so an item costs at
most 2N entries whatever the stream's length: amortised O(1) per increment, and a popular item's
long tail of one-off co-occurrences goes first. (Cutting by similarity at the time of the cut
instead keeps the early rare items, whose one co-occurrence over a count of one looks strong:
on MovieLens-100k's validation slice NDCG@10 fell from .111 unbounded to .056 at N = 50, against
.077 by count; N = 200 by count gives .109.)
Rows are cut independently, so after a cut ``c(a, b)`` read from ``a``'s row may differ from
``b``'s; every reader uses one row (a history item's for scores, the candidate's for reasons).
The cut depends on the order increments arrive in, which the unbounded counts do not: two
workers that applied the same updates in a different interleaving can differ in the tail of a
cut row (N = 0, the default of this class and the item-kNN baseline, keeps every count).

Storage is sparse (one row per item: neighbour index -> count, plus numpy arrays of
the same row for vectorised scoring), so a sparse catalogue such as CiaoDVD's 16k films costs
what its co-occurrences cost, not ``n**2``.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Collection, Iterable, Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from scoring.baseline import tie_key
from scoring.popularity import tie_hash

#: Distinct recent items of a user that a new item co-occurs with (and that a score sums over).
WINDOW = 50

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]


class KNNSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """:class:`ItemKNN`'s counts, exactly (``scoring.snapshot``): row ``r`` is item ``ids[r]``."""

    window: int
    max_neighbours: int
    cuts: int
    ids: list[str]
    #: ``n(i)`` of each row, float64 little-endian
    users: bytes
    #: each row's neighbour rows (int64) and counts (float64), little-endian, in row order
    #: (scores sum in that order, so it is kept)
    neighbours: list[bytes]
    counts: list[bytes]


class ItemKNN:
    """Co-occurrence counts, built one interaction at a time (see the module docstring)."""

    def __init__(self, window: int = WINDOW, max_neighbours: int = 0) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if max_neighbours < 0:
            raise ValueError(f"max_neighbours must be >= 0, got {max_neighbours}")
        self.window = window
        self.max_neighbours = max_neighbours
        #: rows cut to the bound so far
        self.cuts = 0
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._users: _F64 = np.zeros(64, dtype=np.float64)
        #: tie_hash of each row's item, for vectorised cuts
        self._tie: npt.NDArray[np.int64] = np.zeros(64, dtype=np.int64)
        # Row r: neighbour index -> position in _nb[r] / _co[r]. The rows are array.array, not
        # numpy: an increment of an array.array item costs half a numpy scalar's (the
        # bulk of a first engagement's), appending grows it in place, and numpy reads the
        # same memory without a copy (np.frombuffer) to score. No view may outlive the call
        # that made it: an array.array exporting its buffer cannot grow.
        self._pos: list[dict[int, int]] = []
        self._nb: list[array[int]] = []
        self._co: list[array[float]] = []
        # Per-user convenience state for observe()/recommend().
        self._history: dict[str, list[str]] = {}
        self._seen: dict[str, set[str]] = {}
        self._seen_rows: dict[str, list[int]] = {}

    def __len__(self) -> int:
        """Items known (every item that was added, or was in a history that was)."""
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    # --- building --------------------------------------------------------------------------
    def _row(self, item_id: str) -> int:
        r = self._index.get(item_id)
        if r is None:
            r = len(self._ids)
            self._index[item_id] = r
            self._ids.append(item_id)
            if r >= self._users.size:
                self._users = np.concatenate([self._users, np.zeros(self._users.size, dtype=np.float64)])
                self._tie = np.concatenate([self._tie, np.zeros(self._tie.size, dtype=np.int64)])
            self._tie[r] = tie_hash(item_id)
            self._pos.append({})
            self._nb.append(array("q"))
            self._co.append(array("d"))
        return r

    def _inc(self, r: int, c: int) -> None:
        pos = self._pos[r]
        p = pos.get(c)
        if p is not None:
            self._co[r][p] += 1.0
            return
        p = len(pos)
        if self.max_neighbours and p >= 2 * self.max_neighbours:
            self._cut(r)
            pos = self._pos[r]
            p = len(pos)
        self._nb[r].append(c)
        self._co[r].append(1.0)
        pos[c] = p

    def _cut(self, r: int) -> None:
        """Keep row ``r``'s ``max_neighbours`` largest counts (ties: stable hash, then id)."""
        pos = self._pos[r]
        m, n = len(pos), self.max_neighbours
        nb, co, ids = _ints(self._nb[r]), _floats(self._co[r]), self._ids
        # Sorted by (-count, tie hash) in numpy; the id only matters where two entries with
        # the same count and a colliding 32-bit hash straddle the cut, then Python sorts.
        order = np.lexsort((self._tie[nb], -co))
        a, b = order[n - 1], order[n]
        if co[a] == co[b] and self._tie[nb[a]] == self._tie[nb[b]]:
            keep = sorted(range(m), key=lambda p: (-co[p], tie_hash(ids[nb[p]]), ids[nb[p]]))[:n]
        else:
            keep = order[:n].tolist()
        keep.sort()  # the kept entries stay in insertion order: scoring sums in row order
        kept_nb: list[int] = nb[keep].tolist()
        kept_co: list[float] = co[keep].tolist()
        self._nb[r], self._co[r] = array("q", kept_nb), array("d", kept_co)
        self._pos[r] = {c: p for p, c in enumerate(kept_nb)}
        self.cuts += 1

    def neighbour_count(self, item_id: str) -> int:
        """Entries in the item's row (at most ``2 * max_neighbours`` when bounded)."""
        r = self._index.get(item_id)
        return 0 if r is None else len(self._pos[r])

    def add(self, history: Iterable[str], item_id: str) -> None:
        """One user's first interaction with ``item_id``: ``n(item)`` grows by one and the item
        co-occurs once with each distinct item of ``history`` (that user's earlier items, already
        cut to the caller's window; ``item_id`` itself is skipped)."""
        j = self._row(item_id)
        self._users[j] += 1.0
        # _inc inlined for the common case (the pair is already counted): one first
        # engagement is up to 2 x window increments, the bulk of a behaviour event's cost.
        pos, co, row, index = self._pos, self._co, self._row, self._index
        pos_j, co_j = pos[j], co[j]
        for h in dict.fromkeys(history):
            if h == item_id:
                continue
            i = index.get(h)
            if i is None:
                i = row(h)
            p = pos[i].get(j)
            if p is None:
                self._inc(i, j)
            else:
                co[i][p] += 1.0
            p = pos_j.get(i)
            if p is None:
                self._inc(j, i)  # may grow or cut row j: read it again
                pos_j, co_j = pos[j], co[j]
            else:
                co_j[p] += 1.0

    def observe(self, user_id: str, item_id: str) -> bool:
        """Fold one interaction of ``user_id`` in (its first with the item only): :meth:`add`
        with the user's last ``window`` items. Returns whether it was a first interaction."""
        seen = self._seen.setdefault(user_id, set())
        if item_id in seen:
            return False
        history = self._history.setdefault(user_id, [])
        self.add(history[-self.window :], item_id)
        seen.add(item_id)
        history.append(item_id)
        self._seen_rows.setdefault(user_id, []).append(self._index[item_id])
        return True

    def history(self, user_id: str) -> list[str]:
        """The user's last ``window`` distinct items, oldest first (what scores sum over)."""
        return self._history.get(user_id, [])[-self.window :]

    def seen(self, user_id: str) -> Collection[str]:
        """Every item the user interacted with (through :meth:`observe`)."""
        return self._seen.get(user_id, frozenset())

    # --- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> KNNSnapshot:
        """Every count (not :meth:`observe`'s per-user state: a snapshot is of counts only)."""
        if self._history:
            raise ValueError("a snapshot holds counts only; this ItemKNN also holds observe()'s users")
        n = len(self._ids)
        sizes = [len(pos) for pos in self._pos]
        return KNNSnapshot(
            window=self.window,
            max_neighbours=self.max_neighbours,
            cuts=self.cuts,
            ids=list(self._ids),
            users=self._users[:n].astype("<f8").tobytes(),
            neighbours=[_ints(nb)[:m].astype("<i8").tobytes() for nb, m in zip(self._nb, sizes, strict=True)],
            counts=[_floats(co)[:m].astype("<f8").tobytes() for co, m in zip(self._co, sizes, strict=True)],
        )

    def empty_like(self) -> ItemKNN:
        """A new, empty instance with this one's window and bound."""
        return ItemKNN(window=self.window, max_neighbours=self.max_neighbours)

    def restore(self, snap: KNNSnapshot) -> None:
        """Load ``snap`` into this empty instance made with the same window and bound."""
        if self._ids:
            raise ValueError("restore needs an empty ItemKNN")
        if (snap.window, snap.max_neighbours) != (self.window, self.max_neighbours):
            raise ValueError(
                f"snapshot of window {snap.window} and bound {snap.max_neighbours}, "
                f"this ItemKNN has {self.window} and {self.max_neighbours}"
            )
        n = len(snap.ids)
        if not len(snap.neighbours) == len(snap.counts) == n or len(snap.users) != 8 * n:
            raise ValueError("inconsistent ItemKNN snapshot")
        self.cuts = snap.cuts
        self._ids = list(snap.ids)
        self._index = {item: r for r, item in enumerate(self._ids)}
        size = max(64, n)
        self._users = np.zeros(size, dtype=np.float64)
        self._users[:n] = np.frombuffer(snap.users, dtype="<f8")
        self._tie = np.zeros(size, dtype=np.int64)
        self._tie[:n] = [tie_hash(item) for item in self._ids]
        self._pos, self._nb, self._co = [], [], []
        for nb_bytes, co_bytes in zip(snap.neighbours, snap.counts, strict=True):
            nb = np.frombuffer(nb_bytes, dtype="<i8").astype(np.int64)
            co = np.frombuffer(co_bytes, dtype="<f8").astype(np.float64)
            if nb.size != co.size or (nb.size and (int(nb.min()) < 0 or int(nb.max()) >= n)):
                raise ValueError("inconsistent ItemKNN snapshot row")
            m = nb.size
            self._nb.append(array("q", nb.tobytes()))
            self._co.append(array("d", co.tobytes()))
            self._pos.append(dict(zip(nb.tolist(), range(m), strict=True)))

    # --- reading ---------------------------------------------------------------------------
    def count(self, item_id: str) -> int:
        """``n(item)``: users who interacted with it."""
        r = self._index.get(item_id)
        return 0 if r is None else int(self._users[r])

    def cooccurrence(self, a: str, b: str) -> int:
        """``c(a, b)`` (symmetric; 0 for unknown items and for ``a == b``)."""
        ra, rb = self._index.get(a), self._index.get(b)
        if ra is None or rb is None:
            return 0
        p = self._pos[ra].get(rb)
        return 0 if p is None else int(self._co[ra][p])

    def similarity(self, a: str, b: str) -> float:
        """``sim(a, b) = c(a, b) / sqrt(n(a) n(b))``."""
        c = self.cooccurrence(a, b)
        # Counts floored at 1, as in scoring (_accumulate): an item can co-occur before it was
        # added itself (a worker restarted with profiles whose history it never counted).
        return c / math.sqrt(max(self.count(a), 1) * max(self.count(b), 1)) if c else 0.0

    def anchor(self, item_id: str, history: Sequence[str]) -> tuple[str, float] | None:
        """The item of ``history`` most similar to ``item_id`` and that similarity (ties: the
        larger id), or None when none co-occurs with it: the evidence of a collaborative reason,
        read from the item's own row instead of one lookup pair per history item."""
        r = self._index.get(item_id)
        if r is None:
            return None
        pos, co, users = self._pos[r], self._co[r], self._users
        best: tuple[float, str] | None = None
        for h in history:
            c = self._index.get(h)
            p = pos.get(c) if c is not None else None
            if p is None or c is None:
                continue
            key = (float(co[p]) / math.sqrt(max(users[r], 1.0) * max(users[c], 1.0)), h)
            if best is None or key > best:
                best = key
        return None if best is None else (best[1], best[0])

    def neighbours(self, item_id: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` items most similar to ``item_id``, best first: ``(item, sim)``; equal
        similarities in a stable hash order (:func:`scoring.popularity.tie_hash`)."""
        r = self._index.get(item_id)
        if r is None or n <= 0:
            return []
        nb = _ints(self._nb[r])
        sims = _floats(self._co[r]) / np.sqrt(np.maximum(self._users[r], 1.0) * np.maximum(self._users[nb], 1.0))
        pairs = zip(sims.tolist(), (self._ids[c] for c in nb.tolist()), strict=True)
        best = heapq.nsmallest(n, pairs, key=lambda t: (-t[0], tie_hash(t[1]), t[1]))
        return [(i, s) for s, i in best]

    def _accumulate(self, history: Iterable[str], recency: float = 1.0) -> tuple[_F64, list[int]]:
        """Dense scores over all known items for ``history``, and the history's row indices.
        ``recency`` < 1 weighs the newest history item 1, the one before ``recency``, and so on
        (``history`` is oldest first)."""
        n = len(self._ids)
        inv = 1.0 / np.sqrt(np.maximum(self._users[:n], 1.0))
        rows: list[int] = []
        nbs: list[_I64] = []
        cos: list[_F64] = []
        scales: list[float] = []
        lengths: list[int] = []
        index, pos, nb, co = self._index, self._pos, self._nb, self._co
        items = list(dict.fromkeys(history))
        for age, h in enumerate(reversed(items)):
            r = index.get(h)
            if r is None:
                continue
            rows.append(r)
            m = len(pos[r])
            if m:
                nbs.append(_ints(nb[r]))
                cos.append(_floats(co[r]))
                scales.append(float(inv[r]) * recency**age)
                lengths.append(m)
        if not nbs:
            return np.zeros(n, dtype=np.float64), rows
        # One bincount over every row instead of a fancy-index += per row (50 numpy calls a
        # ranking): bincount adds the weights in array order, rows in the loop's order, so
        # each item's sum is the same float additions in the same order (bit-identical).
        weights = np.concatenate(cos) * np.repeat(np.array(scales), lengths)
        acc: _F64 = np.bincount(np.concatenate(nbs), weights=weights, minlength=n).astype(np.float64, copy=False)
        acc *= inv
        return acc, rows

    def score(self, history: Iterable[str], candidates: Iterable[str] | None = None, recency: float = 1.0) -> dict[str, float]:
        """``score(history, j)`` for each candidate (every co-occurring item when ``None``;
        those with a positive score only); ``recency`` as in :meth:`top`."""
        acc, _ = self._accumulate(history, recency)
        if candidates is None:
            return {self._ids[c]: float(acc[c]) for c in np.flatnonzero(acc > 0.0).tolist()}
        out: dict[str, float] = {}
        for item in candidates:
            r = self._index.get(item)
            out[item] = 0.0 if r is None else float(acc[r])
        return out

    def top(
        self, history: Sequence[str], k: int, *, user_id: str, exclude: Collection[str] = (), recency: float = 1.0
    ) -> list[tuple[str, float]]:
        """The ``k`` best items for ``history`` with a positive score, best first: ``(item,
        score)``. History items and ``exclude`` are never returned; ties go by
        ``tie_key(user_id, item)``. May be shorter than ``k`` (only co-occurring items score)."""
        index = self._index
        gone = [r for r in (index.get(x) for x in exclude) if r is not None]
        return self._top(history, k, user_id, gone, recency)

    def recommend(self, user_id: str, k: int) -> list[tuple[str, float]]:
        """:meth:`top` for a user folded in with :meth:`observe`: over the user's last
        ``window`` items, never an item the user interacted with."""
        return self._top(self.history(user_id), k, user_id, self._seen_rows.get(user_id, []))

    def _top(self, history: Sequence[str], k: int, user_id: str, gone: list[int], recency: float = 1.0) -> list[tuple[str, float]]:
        if k <= 0:
            return []
        acc, rows = self._accumulate(history, recency)
        acc[rows] = 0.0
        acc[gone] = 0.0
        cand = np.flatnonzero(acc > 0.0)
        if cand.size > k:
            values = acc[cand]
            kth = np.partition(values, cand.size - k)[cand.size - k]
            cand = cand[values >= kth]  # the k best and everything tied with the k-th
        ids = self._ids
        scored = [(float(acc[c]), ids[c]) for c in cand.tolist()]
        scored.sort(key=lambda t: (-t[0], tie_key(user_id, t[1])))
        return [(i, s) for s, i in scored[:k]]


def _ints(row: array[int]) -> _I64:
    """A row's neighbours as numpy, without a copy (see ``ItemKNN._nb``)."""
    return np.frombuffer(row, dtype=np.int64)


def _floats(row: array[float]) -> _F64:
    """A row's counts as numpy, without a copy (see ``ItemKNN._nb``)."""
    return np.frombuffer(row, dtype=np.float64)
