"""The content candidate generator (scoring/content.py), against brute-force numpy cosine rankings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from scoring.content import ContentIndex
from scoring.popularity import tie_hash

V1 = "enc-v1"
DIM = 48
N = 400

Matrix = npt.NDArray[np.float32]
Build = Callable[..., tuple[ContentIndex, list[str], Matrix]]


def unit_rows(rng: np.random.Generator, n: int, d: int = DIM) -> Matrix:
    x = rng.standard_normal((n, d)).astype(np.float32)
    out: Matrix = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(x: Matrix, ids: list[str], q: npt.NDArray[np.float32], k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
    """Brute force, in float64, independent of the index: (similarity, id) best first."""
    sims = x.astype(np.float64) @ (q.astype(np.float64) / np.linalg.norm(q))
    order = sorted((i for i in range(len(ids)) if ids[i] not in exclude), key=lambda i: -sims[i])
    return [(ids[i], float(sims[i])) for i in order[:k]]


@pytest.fixture
def build() -> Build:
    """Factory: an index holding ``n`` seeded random unit vectors under ids ``item-<n>``."""

    def make(n: int = N, *, seed: int = 0, version: str = V1, **kwargs: object) -> tuple[ContentIndex, list[str], Matrix]:
        x = unit_rows(np.random.default_rng(seed), n)
        ids = [f"item-{i:04d}" for i in range(n)]
        index = ContentIndex(**kwargs)  # type: ignore[arg-type]
        for item_id, row in zip(ids, x, strict=True):
            index.upsert(item_id, version, row)
        return index, ids, x

    return make


def test_search_matches_brute_force(build: Build) -> None:
    index, ids, x = build()
    assert len(index) == N and index.version == V1 and "item-0007" in index and "nope" not in index
    queries = unit_rows(np.random.default_rng(1), 30)
    hits = 0
    for q in queries:
        got = index.search(q, 10, version=V1)
        want = exact_top(x, ids, q, 10)
        assert len(got) == 10
        hits += len({i for i, _ in got} & {i for i, _ in want})
        exact = dict(exact_top(x, ids, q, N))
        for item_id, sim in got:
            assert isinstance(sim, float) and round(sim, 6) == sim
            assert sim == pytest.approx(exact[item_id], abs=1e-2)
        sims = [s for _, s in got]
        assert sims == sorted(sims, reverse=True)
    assert hits / (10 * len(queries)) >= 0.95


def test_excluded_items_never_returned(build: Build) -> None:
    index, ids, x = build()
    q = unit_rows(np.random.default_rng(2), 1)[0]
    # The best 25 (all the first hits) and a scattering of others.
    exclude = {i for i, _ in exact_top(x, ids, q, 25)} | set(ids[::7]) | {"not-in-index"}
    got = index.search(q, 10, version=V1, exclude=exclude)
    assert len(got) == 10
    assert not {i for i, _ in got} & exclude
    want = exact_top(x, ids, q, 10, exclude)
    assert len({i for i, _ in got} & {i for i, _ in want}) >= 9
    # Fewer remain than asked for: all of them, best first.
    keep = set(ids[:3])
    rest = index.search(q, 10, version=V1, exclude=set(ids) - keep)
    assert [i for i, _ in rest] == [i for i, _ in exact_top(x, ids, q, 3, set(ids) - keep)]
    assert index.search(q, 10, version=V1, exclude=ids) == []
    assert index.search(q, 0, version=V1) == []


def test_upsert_replaces_vector_and_neighbours(build: Build) -> None:
    index, ids, x = build()
    target = ids[5]
    old_neighbours = [i for i, _ in exact_top(x, ids, x[5], 11)[1:]]
    # Move item 5 next to item 300: its neighbours become 300's.
    moved = x[300] + 0.05 * unit_rows(np.random.default_rng(3), 1)[0]
    index.upsert(target, V1, moved * 3.0)  # not unit: normalised on the way in
    x2 = x.copy()
    x2[5] = moved / np.linalg.norm(moved)
    assert len(index) == N
    stored = index.vector(target)
    assert stored is not None and stored.dtype == np.float32
    np.testing.assert_allclose(stored, x2[5], atol=1e-3)

    got = [i for i, _ in index.search(x2[5], 11, version=V1, exclude={target})]
    want = [i for i, _ in exact_top(x2, ids, x2[5], 11, {target})]
    assert len(set(got) & set(want)) >= 10
    assert ids[300] in got[:2]
    assert len(set(got) & set(old_neighbours)) <= 2
    # Found where it now is, not where it was.
    assert [i for i, _ in index.search(x[300], 2, version=V1)] == [ids[300], target]
    assert target not in [i for i, _ in index.search(x[5], 10, version=V1)]
    assert index.similarity(x2[5], target, version=V1) == pytest.approx(1.0, abs=1e-3)


def test_replacing_many_vectors_keeps_search_exact_enough(build: Build) -> None:
    # Replacement removes and re-adds in usearch: the graph must stay searchable after many of them.
    index, ids, x = build(300)
    x2 = x.copy()
    rng = np.random.default_rng(4)
    for r in range(0, 300, 2):
        x2[r] = unit_rows(rng, 1)[0]
        index.upsert(ids[r], V1, x2[r])
    index.upsert(ids[1], V1, x2[1])  # unchanged: a no-op
    assert len(index) == 300
    hits = 0
    for q in unit_rows(np.random.default_rng(5), 20):
        hits += len({i for i, _ in index.search(q, 10, version=V1)} & {i for i, _ in exact_top(x2, ids, q, 10)})
    assert hits / 200 >= 0.95


def test_falls_back_to_exact_search_when_the_graph_reaches_too_few(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    # usearch has not been seen to return fewer than asked for here; should it (tombstones, odd graphs),
    # the search must still return what remains. Simulate a graph that reaches only 5 items.
    # Only through scoring.content, which loads onnxruntime before usearch (see there).
    from usearch.index import Index

    index, ids, x = build(60)
    real = Index.search

    def short(self: object, q: object, count: int, **kwargs: object) -> object:
        matches = real(self, q, count, **kwargs)  # type: ignore[arg-type]
        return matches if kwargs.get("exact") else real(self, q, min(count, 5), **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Index, "search", short)
    q = x[7]
    exclude = {i for i, _ in exact_top(x, ids, q, 5)}
    got = index.search(q, 10, version=V1, exclude=exclude)
    assert [i for i, _ in got] == [i for i, _ in exact_top(x, ids, q, 10, exclude)]


def test_new_version_resets(build: Build) -> None:
    index, ids, x = build(50)
    q = x[0]
    assert index.search(q, 5, version=V1)
    new = unit_rows(np.random.default_rng(6), 2, d=16)  # another encoder, another dimension
    index.upsert("fresh", "enc-v2", new[0])
    assert index.version == "enc-v2" and len(index) == 1
    assert ids[0] not in index and index.vector(ids[0]) is None
    assert index.search(q, 5, version=V1) == []
    assert index.similarity(q, ids[0], version=V1) == 0.0
    assert index.similarities(q, ids[:3], version=V1) == {i: 0.0 for i in ids[:3]}
    assert [i for i, _ in index.search(new[1], 5, version="enc-v2")] == ["fresh"]
    # Back to the first version is just another different version: a reset too.
    index.upsert(ids[0], V1, x[0])
    assert len(index) == 1 and "fresh" not in index and index.version == V1


def test_empty_index() -> None:
    index = ContentIndex()
    q = np.ones(DIM, dtype=np.float32)
    assert index.version is None and len(index) == 0
    assert index.search(q, 5, version=V1) == []
    assert index.similarity(q, "a", version=V1) == 0.0
    assert index.similarities(q, ["a"], version=V1) == {"a": 0.0}
    assert index.vector("a") is None


def test_similarities_agree_with_numpy_and_search(build: Build) -> None:
    index, ids, x = build(200)
    q = unit_rows(np.random.default_rng(7), 1)[0]
    exact = dict(exact_top(x, ids, q, 200))
    asked = ids[10:40] + ["absent"]
    sims = index.similarities(q, asked, version=V1)
    assert list(sims) == asked and sims["absent"] == 0.0
    for item_id in ids[10:40]:
        assert sims[item_id] == pytest.approx(exact[item_id], abs=1e-2)
        assert sims[item_id] == index.similarity(q, item_id, version=V1)
    for item_id, sim in index.search(q, 10, version=V1):
        assert sim == index.similarity(q, item_id, version=V1)
    assert index.similarity(q, ids[10], version="other") == 0.0
    assert index.similarity(q, "absent", version=V1) == 0.0


def _digest_calls(index: ContentIndex) -> list[list[tuple[str, float]]]:
    """A fixed sequence of upserts and searches; what it returns must not depend on the process."""
    rng = np.random.default_rng(8)
    x = unit_rows(rng, 300)
    ids = [f"d{i}" for i in range(300)]
    for item_id, row in zip(ids, x, strict=True):
        index.upsert(item_id, V1, row)
    for r in range(0, 300, 5):
        index.upsert(ids[r], V1, unit_rows(rng, 1)[0])
    return [index.search(q, 10, version=V1, exclude=ids[:20]) for q in unit_rows(rng, 15)]


def test_deterministic_within_and_across_processes() -> None:
    first = _digest_calls(ContentIndex())
    assert first == _digest_calls(ContentIndex())
    # Another process, with another hash seed: nothing may depend on hash() or on process state.
    code = "from tests.unit.test_content import ContentIndex, _digest_calls; print(repr(_digest_calls(ContentIndex())))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root, timeout=60)
    assert out.stdout.strip() == repr(first)


def test_ties_ordered_by_tie_hash_not_id() -> None:
    # Two ids whose string order and tie_hash order disagree.
    a, b = next((p, q) for p, q in ((f"t{i}", f"t{i + 1}") for i in range(100)) if tie_hash(p) > tie_hash(q))
    assert a < b and tie_hash(b) < tie_hash(a)
    rng = np.random.default_rng(9)
    index = ContentIndex()
    for i, row in enumerate(unit_rows(rng, 100)):
        index.upsert(f"other-{i}", V1, row)
    twin = unit_rows(rng, 1)[0]
    index.upsert(a, V1, twin)
    index.upsert(b, V1, twin)
    got = index.search(twin, 2, version=V1)
    assert [i for i, _ in got] == [b, a]
    assert got[0][1] == got[1][1]
    # The k-th place is a tie too: the tie_hash winner takes it, whichever one the graph met first.
    assert [i for i, _ in index.search(twin, 1, version=V1)] == [b]
    assert [i for i, _ in index.search(twin, 1, version=V1, exclude={b})] == [a]


def test_zero_vector_raises(build: Build) -> None:
    index, ids, x = build(20)
    with pytest.raises(ValueError, match="zero"):
        index.upsert("z", V1, np.zeros(DIM, dtype=np.float32))
    # Not even a reset to a new version: a bad vector must leave the index as it was.
    with pytest.raises(ValueError, match="zero"):
        index.upsert("z", "enc-v2", np.zeros(DIM, dtype=np.float32))
    with pytest.raises(ValueError):
        index.upsert("z", V1, np.full(DIM, np.nan, dtype=np.float32))
    assert index.version == V1 and len(index) == 20 and "z" not in index
    # A zero query (an interest that cancelled out) is close to nothing: no candidates, no error.
    zero = np.zeros(DIM, dtype=np.float32)
    assert index.search(zero, 5, version=V1) == []
    assert index.similarity(zero, ids[0], version=V1) == 0.0
    assert index.similarities(zero, ids[:2], version=V1) == {ids[0]: 0.0, ids[1]: 0.0}
    with pytest.raises(ValueError):
        index.search(np.full(DIM, np.inf, dtype=np.float32), 5, version=V1)


def test_dimension_mismatch_raises(build: Build) -> None:
    index, ids, x = build(20)
    with pytest.raises(ValueError, match="dimension"):
        index.upsert("short", V1, np.ones(DIM - 1, dtype=np.float32))
    with pytest.raises(ValueError, match="dimension"):
        index.upsert(ids[0], V1, np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(DIM + 1, dtype=np.float32), 5, version=V1)
    with pytest.raises(ValueError, match="dimension"):
        index.similarities(np.zeros(DIM + 1, dtype=np.float32), ids[:2], version=V1)
    with pytest.raises(ValueError):
        index.upsert("matrix", V1, np.ones((2, DIM), dtype=np.float32))
    assert len(index) == 20
    np.testing.assert_allclose(index.vector(ids[0]), x[0], atol=1e-3)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_other_dtypes(build: Build, dtype: str) -> None:
    index, ids, x = build(100, dtype=dtype)
    q = x[3]
    got = index.search(q, 5, version=V1)
    assert got[0] == (ids[3], 1.0)
    assert [i for i, _ in got] == [i for i, _ in exact_top(x, ids, q, 5)]
    with pytest.raises(ValueError):
        ContentIndex(dtype="i8")


def test_importing_the_encoders_runtime_afterwards_does_not_crash() -> None:
    # onnxruntime segfaulted on import once usearch's extension was loaded (see scoring/content.py);
    # a fresh process, because this one may have loaded them in either order already.
    pytest.importorskip("onnxruntime")
    code = "import scoring.content, onnxruntime; print('ok')"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), cwd=root, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_regression_tied_vectors_do_not_scan_the_whole_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # bench load's catalog gave every item the text of one category name, so every item had one
    # vector: the boundary never settled and 99% of searches enumerated the whole index.
    rng = np.random.default_rng(4)
    twin = unit_rows(rng, 1)[0]
    index = ContentIndex()
    for i, row in enumerate(unit_rows(rng, 100)):
        index.upsert(f"other-{i}", V1, row)
    for i in range(700):
        index.upsert(f"twin-{i}", V1, twin)
    scored: list[int] = []
    cosines = ContentIndex._cosines

    def counting(self: ContentIndex, q: npt.NDArray[np.float64], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        scored.append(len(rows))
        return cosines(self, q, rows)

    monkeypatch.setattr(ContentIndex, "_cosines", counting)
    got = index.search(twin, 10, version=V1, exclude={"twin-0"})
    assert len(got) == 10 and all(i.startswith("twin-") and i != "twin-0" and s == 1.0 for i, s in got)
    assert sum(scored) <= 2 * (2 * 10 + 1) + (2 * 10 + 1)  # the first count, then one doubling: never the 800 items
    assert got == index.search(twin, 10, version=V1, exclude={"twin-0"})  # the graph's order is deterministic
    # Without ties the boundary still settles exactly (the brute-force tests above), and a graph that
    # reaches too few items still falls back to exact search (test_falls_back_to_exact_search...).


@pytest.mark.parametrize("inserted", [("c699378", "c18020006"), ("c18020006", "c699378")])
def test_a_crc32_collision_at_equal_similarity_is_ordered_by_id(inserted: tuple[str, str]) -> None:
    """The numpy ordering goes by (similarity, tie hash); two items sharing both (one vector, a
    crc32 collision) are ordered by id, as the reference tuple sort does, whichever was
    inserted (so fetched) first."""
    first, second = "c699378", "c18020006"
    assert tie_hash(first) == tie_hash(second) and second < first
    rng = np.random.default_rng(11)
    index = ContentIndex()
    for i, row in enumerate(unit_rows(rng, 50)):
        index.upsert(f"other-{i}", V1, row)
    twin = unit_rows(rng, 1)[0]
    for item in inserted:
        index.upsert(item, V1, twin)
    got = index.search(twin, 2, version=V1)
    assert [i for i, _ in got] == [second, first]
    assert [i for i, _ in index.search(twin, 1, version=V1)] == [second]


def test_pairwise_is_similarity_with_the_items_own_vector(build: Build) -> None:
    index, ids, _ = build(120)
    items, others = ids[:7] + ["absent"], ids[50:60] + ["absent"]
    got = index.pairwise(items, others, version=V1)
    assert got.shape == (8, 11)
    for a, item in enumerate(items):
        vec = index.vector(item)
        for b, other in enumerate(others):
            expected = 0.0 if vec is None else index.similarity(vec, other, version=V1)
            # One matrix product against one product per item: equal to the rounding (6 decimals).
            assert got[a, b] == pytest.approx(expected, abs=1.5e-6), (item, other)
    assert not index.pairwise(items, others, version="other").any()


def test_similarities_reuse_known_values_and_compute_the_rest(build: Build) -> None:
    index, ids, _ = build(100)
    q = unit_rows(np.random.default_rng(12), 1)[0]
    found = dict(index.search(q, 5, version=V1))
    asked = ids[:20] + list(found)
    full = index.similarities(q, asked, version=V1)
    # Marked values show which entries were taken from ``known`` rather than recomputed.
    marked = {i: -5.0 for i in found}
    reused = index.similarities(q, asked, version=V1, known=marked)
    assert list(reused) == list(full)
    for item in asked:
        assert reused[item] == (-5.0 if item in found else full[item])


def test_a_search_for_a_large_share_of_the_items_scans_them_and_rescores_only_what_it_returns(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heavy user of a small catalog excludes hundreds of its items: walking the graph for that
    # many costs more than scanning every vector. Only through scoring.content (see there).
    from usearch.index import Index

    index, ids, x = build()
    asked: list[tuple[int, bool]] = []
    scored: list[int] = []
    real, cosines = Index.search, ContentIndex._cosines

    def search(self: object, q: object, count: int, **kwargs: object) -> object:
        asked.append((count, bool(kwargs.get("exact"))))
        return real(self, q, count, **kwargs)  # type: ignore[arg-type]

    def counting(self: ContentIndex, q: npt.NDArray[np.float64], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        scored.extend(rows.tolist())
        return cosines(self, q, rows)

    monkeypatch.setattr(Index, "search", search)
    monkeypatch.setattr(ContentIndex, "_cosines", counting)
    # Brute force over the vectors as stored (float16-rounded): the scan must give exactly its order.
    stored = np.stack([v for v in (index.vector(i) for i in ids) if v is not None])
    queries = unit_rows(np.random.default_rng(8), 10)
    for q in queries:
        exclude = {i for i, _ in exact_top(stored, ids, q, 100)}
        asked.clear()
        scored.clear()
        got = index.search(q, 10, version=V1, exclude=exclude)
        assert [i for i, _ in got] == [i for i, _ in exact_top(stored, ids, q, 10, exclude)]
        assert asked[0] == (2 * 10 + 100, True)  # 120 of 400 items: a scan
        assert scored and not {ids[r] for r in scored} & exclude  # the excluded are never re-scored
        # A search for a few items walks the graph.
        asked.clear()
        index.search(q, 5, version=V1)
        assert asked == [(10, False)]
