"""The content candidate generator: items whose text vectors are nearest to a user's interest vector.

Item text vectors (one encoder version at a time) live in a usearch HNSW index with the cosine
metric; :meth:`ContentIndex.search` asks it for candidates and re-scores them exactly, so what the
ranker sees does not depend on usearch's approximate, SIMD-specific distance arithmetic.

Pure and deterministic: no clock, no randomness of its own, no threads. The same sequence of calls
gives the same results in any process, which is what a reproducible replay needs:

- usearch draws each node's HNSW level from a ``std::default_random_engine`` that lives in a
  per-thread context and is *default-constructed*, i.e. always seeded the same way (contexts are
  rebuilt, so re-seeded, whenever the index grows; also deterministic). What is not deterministic
  is which context serves an add: with ``threads`` > 1 the scheduler decides, and the graph then
  differs from run to run (observed with usearch 2.26 on batch adds). Every call here therefore
  passes ``threads=1``, and parameters are fixed at construction, so HNSW needs no exact-search
  fallback for determinism. Exact search (``exact=True``, usearch's SIMD scan of every stored
  vector) is used when a search asks for a large share of the index (:data:`_EXACT_SHARE`: a
  user who has seen hundreds of a small catalog's items, all excluded), where the scan is the
  cheaper of the two, and when the graph cannot reach enough non-excluded items (removed nodes
  stay as tombstones, tiny graphs).
  Caveat: determinism is per platform and CPU class; another C++ standard library (another
  ``default_random_engine``) or another SIMD kernel may build a slightly different graph, which
  can change which candidates are found, never their scores.
- Candidates are re-scored in float64 against the stored (dtype-rounded) vectors and rounded to
  6 decimals, so float noise cannot flip an order between runs; equal scores are ordered by
  :func:`scoring.popularity.tie_hash` of the item id, then the id (only a crc32 collision gets
  that far), never by the id string alone, so no id range is favoured.

One index per encoder version: vectors of different encoders live in different spaces and are
never compared, so a vector of another version resets the index (versions are not ordered; a
"different" version is a new one).

Memory, per item at dimension ``d`` with the default ``f16``: usearch holds the vector (``2d``
bytes) plus its graph links and allocator slack (usearch's own ``memory_usage`` reports about
2 KiB per item in all at d=384); this class keeps a second copy for vectorised reads (``2d`` bytes,
plus 4 bytes of norm, in matrices that grow by doubling) and about 100 bytes of id mapping.
``f16`` halves what ``f32`` would take; the rounding (~1e-3 relative) is far below what separates
useful candidates.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# onnxruntime (the encoders' runtime) segfaults while importing if usearch's extension is already
# loaded (usearch 2.26.6 with onnxruntime-gpu 1.31.1: a crash in libstdc++ during ORT's device
# discovery); the other way round both work. The worker imports this module long before it may
# load an encoder, so load ORT first here, whoever imports what; import usearch only through here.
try:
    import onnxruntime  # noqa: F401
except ImportError:  # an environment without encoders: nothing to protect
    pass

from usearch.index import Index

from scoring.popularity import tie_hash

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]

#: Storage types this index supports: usearch's continuous ones that numpy can also hold.
_DTYPES: dict[str, type[np.floating[Any]]] = {"f16": np.float16, "f32": np.float32, "f64": np.float64}

#: Rows of the first vector matrix; it doubles from there.
_INITIAL_ROWS = 64

#: Decimals of the returned similarities (see the module docstring).
_DECIMALS = 6

#: When the k-th result scores within this of the farthest candidate fetched, items the search did
#: not fetch may tie with it (or beat it, after exact re-scoring): fetch more. usearch ranks by its
#: own dtype-rounded arithmetic, which differs from the exact re-score by far less than this.
_BOUNDARY_EPS = 1e-3

#: A search fetches at most this many times its first count to settle a tie at the boundary.
_TIE_BUDGET = 2

#: A search asking for at least this share of the items scans them all instead of walking the
#: graph. HNSW's cost grows with the count asked for (its beam is at least that wide), the scan's
#: with the index: usearch 2.26, 384-d f16, one thread, a search for 300 / 600 / 1,200 of 1,682
#: items took 0.18 / 0.28 / 0.46 ms on the graph and 0.14 / 0.16 / 0.20 ms scanning; 600 of
#: 20,000 took 3.4 against 2.0 ms; 20 of 1,682 the same either way (0.10 ms).
_EXACT_SHARE = 1 / 16


class ContentIndex:
    """Item vectors of one encoder version in a usearch index."""

    def __init__(self, *, dtype: str = "f16", connectivity: int = 16, expansion_add: int = 64, expansion_search: int = 64) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        for name, value in (("connectivity", connectivity), ("expansion_add", expansion_add), ("expansion_search", expansion_search)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self._dtype = dtype
        self._np_dtype = _DTYPES[dtype]
        self._connectivity = connectivity
        self._expansion_add = expansion_add
        self._expansion_search = expansion_search
        self._reset(None, 0)

    def _reset(self, version: str | None, ndim: int) -> None:
        self._version = version
        self._ndim = ndim
        # Row r of the matrices is usearch key r: items are never deleted (only replaced), so keys stay dense.
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []
        # Tie hashes by row, as an array: a search orders its fetched rows in numpy.
        self._hashes: _I64 = np.zeros(0, dtype=np.int64)
        self._matrix: npt.NDArray[np.floating[Any]] = np.zeros((0, ndim), dtype=self._np_dtype)
        # Norms of the stored, dtype-rounded rows: rounding moves them off 1, and cosine divides by them.
        self._norms: _F64 = np.zeros(0, dtype=np.float64)
        self._index: Index | None = None
        if version is not None:
            self._index = Index(
                ndim=ndim,
                metric="cos",
                dtype=self._dtype,
                connectivity=self._connectivity,
                expansion_add=self._expansion_add,
                expansion_search=self._expansion_search,
            )

    # --- reads ------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        """Encoder version of the vectors held (None: nothing was ever added)."""
        return self._version

    @property
    def ndim(self) -> int:
        """Dimension of the vectors held (0: nothing was ever added)."""
        return self._ndim

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and item_id in self._rows

    def items(self) -> list[str]:
        """The items held, in the order they were first added (a snapshot restores that order)."""
        return list(self._ids)

    def vector(self, item_id: str) -> _F32 | None:
        """A float32 copy of the stored (unit-normalised, then dtype-rounded) vector; None if absent."""
        r = self._rows.get(item_id)
        return None if r is None else self._matrix[r].astype(np.float32)

    # --- writes -----------------------------------------------------------------------------
    def upsert(self, item_id: str, version: str, vector: npt.ArrayLike) -> None:
        """Adds or replaces ``item_id``'s vector. A vector of a version other than the one held resets
        the index to that version first (see the module docstring). Raises ValueError for a vector
        that is not 1-D, is zero or not finite, or (within a version) has another dimension."""
        unit = _unit(vector, "vector")
        if unit is None:
            # An item without direction (empty text, a centroid that cancelled out) would be equally
            # (un)similar to everything: a caller's bug, not something to index.
            raise ValueError(f"vector of {item_id!r} is zero: it has no direction to compare")
        if version != self._version:
            # Validated first: a bad vector must not wipe the index.
            self._reset(version, unit.shape[0])
        elif unit.shape[0] != self._ndim:
            raise ValueError(f"vector has dimension {unit.shape[0]}, version {version!r} has {self._ndim}")
        index = self._index
        assert index is not None  # set by _reset for any non-None version
        stored = unit.astype(self._np_dtype)
        r = self._rows.get(item_id)
        if r is None:
            r = len(self._ids)
            if r == self._matrix.shape[0]:
                self._grow()
            self._rows[item_id] = r
            self._ids.append(item_id)
            self._hashes[r] = tie_hash(item_id)
        elif np.array_equal(self._matrix[r], stored):
            # Unchanged (a replay, an item re-announced): leave the graph as it is.
            return
        else:
            # usearch refuses duplicate keys; a removed node's slot is reused by the next add, so
            # replacing vectors (moving centroids) does not grow the graph.
            index.remove(r)
        self._matrix[r] = stored
        self._norms[r] = float(np.linalg.norm(stored.astype(np.float64)))
        # The already-rounded row, so usearch and the matrix hold the same values.
        index.add(r, stored, threads=1)

    def _grow(self) -> None:
        rows = max(_INITIAL_ROWS, 2 * self._matrix.shape[0])
        matrix = np.zeros((rows, self._ndim), dtype=self._np_dtype)
        matrix[: self._matrix.shape[0]] = self._matrix
        norms = np.zeros(rows, dtype=np.float64)
        norms[: self._norms.shape[0]] = self._norms
        hashes = np.zeros(rows, dtype=np.int64)
        hashes[: self._hashes.shape[0]] = self._hashes
        self._matrix, self._norms, self._hashes = matrix, norms, hashes

    # --- scoring ----------------------------------------------------------------------------
    def search(self, query: npt.ArrayLike, k: int, *, version: str, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to ``k`` items most similar to ``query`` (cosine, higher first), none of ``exclude``.

        [] when ``version`` is not the one held (vectors of another encoder are never compared) or
        nothing is held or ``query`` is zero. Fewer than ``k`` only when fewer items remain outside
        ``exclude``. Raises ValueError for a non-finite or wrong-dimension query of the held version.
        """
        n = len(self._ids)
        if k < 1 or version != self._version or n == 0:
            return []
        index = self._index
        assert index is not None
        q = self._query(query)
        if q is None:
            return []
        rows = self._rows
        blocked = np.fromiter({rows[i] for i in exclude if i in rows}, dtype=np.int64)
        want = min(k, n - blocked.size)
        if want < 1:
            return []
        # Excluded items may take the first hits, and items just past the k-th may tie with it: ask for
        # room for both, then more (doubling) while the boundary is not settled, up to ``budget``.
        count = min(n, 2 * k + blocked.size)
        budget = min(n, _TIE_BUDGET * count)
        exact = count >= _EXACT_SHARE * n
        q32 = q.astype(np.float32)
        while True:
            matches = index.search(q32, count, threads=1, exact=exact)
            keys = np.asarray(matches.keys, dtype=np.int64)
            # The farthest item fetched, by usearch's own distance: it differs from the exact
            # re-score by far less than _BOUNDARY_EPS, and the excluded items (most of what a
            # heavy user's search fetches) then need no re-score.
            frontier = 1.0 - float(np.max(matches.distances)) if keys.size else -np.inf
            complete = keys.size >= n  # every item was fetched: nothing can be missing
            if blocked.size:
                keys = keys[~np.isin(keys, blocked)]
            sims = self._cosines(q, keys)
            ranked = self._ranked(keys, sims, want)
            if len(ranked) >= want and (complete or count >= budget or ranked[want - 1][1] - frontier > _BOUNDARY_EPS):
                # Past the budget the boundary is a tie among more items than were fetched (many
                # items sharing one vector): the graph's deterministic order picks, not the tie
                # hash. Settling it would enumerate the whole index on every search: it did, on a
                # catalog whose items' only text was one category name (bench load: 99% of searches,
                # 2.7 ms of a 4.6 ms ranking; test_regression_tied_vectors_do_not_scan_the_whole_index).
                break
            if count >= n:
                if exact or complete:
                    break
                # The graph could not reach enough items (tombstones, a tiny graph): enumerate them all.
                exact = True
            count = min(n, 2 * count)
        return ranked

    def _ranked(self, keys: _I64, sims: _F64, limit: int) -> list[tuple[str, float]]:
        """The first ``limit`` ``(id, similarity)`` of ``keys``, best first: by similarity, then
        tie hash, then id.
        Ordered in numpy (a search fetches a few hundred rows per ranking; tuples sorted in Python
        were a third of its cost); the ids decide only where two rows share both similarity and
        hash (a crc32 collision), and then the whole list is sorted as tuples instead."""
        hashes = self._hashes[keys]
        order = np.lexsort((hashes, -sims))
        s, h = sims[order], hashes[order]
        ids = self._ids
        if order.size > 1 and bool(np.any((s[1:] == s[:-1]) & (h[1:] == h[:-1]))):
            full = sorted((-x, y, ids[r], x) for r, x, y in zip(keys.tolist(), sims.tolist(), hashes.tolist(), strict=True))
            return [(i, x) for _, _, i, x in full[:limit]]
        return [(ids[r], x) for r, x in zip(keys[order[:limit]].tolist(), s[:limit].tolist(), strict=True)]

    def similarity(self, query: npt.ArrayLike, item_id: str, *, version: str) -> float:
        """Cosine of ``query`` with the stored vector of ``item_id``; 0.0 if absent or of another version."""
        r = self._rows.get(item_id)
        if r is None or version != self._version:
            return 0.0
        q = self._query(query)
        return 0.0 if q is None else float(self._cosines(q, np.array([r], dtype=np.int64))[0])

    def similarities(
        self, query: npt.ArrayLike, item_ids: Sequence[str], *, version: str, known: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """:meth:`similarity` for each of ``item_ids`` (the ranker's candidates from other generators), vectorised.
        ``known``: similarities to the same ``query`` already computed (a :meth:`search`'s results), not computed again."""
        out = dict.fromkeys(item_ids, 0.0)
        if version != self._version or not self._ids:
            return out
        if known:
            out.update((i, x) for i, x in known.items() if i in out)
        present = [i for i in out if i in self._rows and (known is None or i not in known)]
        q = self._query(query) if present else None
        if q is not None:
            rows = np.fromiter((self._rows[i] for i in present), dtype=np.int64, count=len(present))
            out.update(zip(present, self._cosines(q, rows).tolist(), strict=True))
        return out

    def pairwise(self, items: Sequence[str], others: Sequence[str], *, version: str) -> _F64:
        """Cosines of each of ``items`` with each of ``others`` (items, others), as :meth:`similarity`
        computes them with the item's stored vector as the query, to its rounding (one matrix
        product may sum in another order than one product per item), 0.0 where either is absent
        or ``version`` is not the one held: one product for the evidence of a whole list."""
        out = np.zeros((len(items), len(others)), dtype=np.float64)
        if version != self._version or not items or not others:
            return out
        ri = [(j, r) for j, r in enumerate(self._rows.get(i) for i in items) if r is not None]
        ro = [(j, r) for j, r in enumerate(self._rows.get(o) for o in others) if r is not None]
        if not ri or not ro:
            return out
        a_rows = np.array([r for _, r in ri], dtype=np.int64)
        b_rows = np.array([r for _, r in ro], dtype=np.int64)
        # The queries as _query makes them: the float32 stored row, unit-normalised in float64,
        # rounded to float32, then widened.
        a = self._matrix[a_rows].astype(np.float32).astype(np.float64)
        a = (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
        dots = (self._matrix[b_rows].astype(np.float64) @ a.T).T
        out[np.ix_([j for j, _ in ri], [j for j, _ in ro])] = np.round(dots / self._norms[b_rows], _DECIMALS)
        return out

    def _query(self, query: npt.ArrayLike) -> _F64 | None:
        """``query`` as a float64 unit vector; None if it is zero (an interest that cancelled out is
        close to nothing, which is no reason to stop a worker). ValueError if it is not a finite
        vector of the held dimension: that is a caller's bug."""
        unit = _unit(query, "query")
        n = unit.shape[0] if unit is not None else np.asarray(query).shape[0]
        if n != self._ndim:
            raise ValueError(f"query has dimension {n}, version {self._version!r} has {self._ndim}")
        return None if unit is None else unit.astype(np.float64)

    def _cosines(self, q: _F64, rows: _I64) -> _F64:
        """Cosines of unit ``q`` with the stored ``rows``, in float64 (so the rounding to 6 decimals is
        the same on any BLAS), rounded."""
        dots: _F64 = self._matrix[rows].astype(np.float64) @ q
        return np.round(dots / self._norms[rows], _DECIMALS)


def _unit(vector: npt.ArrayLike, what: str) -> _F32 | None:
    """``vector`` as a float32 unit vector, None if it is zero; ValueError if it is not a 1-D, finite
    vector. Callers should pass unit vectors already; normalising again costs little and spares the
    index a caller's drift."""
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1 or v.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty 1-D vector, got shape {v.shape}")
    norm = float(np.linalg.norm(v.astype(np.float64)))
    if not np.isfinite(norm):
        raise ValueError(f"{what} is not finite")
    if norm == 0.0:
        return None
    unit: _F32 = (v.astype(np.float64) / norm).astype(np.float32)
    return unit
