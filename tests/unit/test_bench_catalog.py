"""`persona bench catalog` builds what it says it measures (bench.catalog): a smoke test of
each part's structures at a small size. Memory itself is measured by the benchmark, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.catalog import PARTS, WORKER, WORKER_BEFORE, _build, item_texts
from scoring.content import ContentIndex
from state.catalog import Catalog
from stream_app.item_vectors import VectorReplica

N = 40


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, tuple[str, ...], str]]:
    # An empty data dir: the builtin texts (the benchmark's stand-in without the dataset).
    return item_texts(tmp_path_factory.mktemp("no-data"))


def test_the_catalog_parts_hold_every_item_with_and_without_its_text(texts: list[tuple[str, tuple[str, ...], str]]) -> None:
    (held,) = _build("catalog_text", N, texts)
    (dropped,) = _build("catalog", N, texts)
    assert isinstance(held, Catalog) and isinstance(dropped, Catalog)
    assert len(held) == len(dropped) == N
    assert held.dropped == 0 and dropped.dropped == N
    for i in (0, N - 1):
        before, after = held.get(f"item-{i:07d}"), dropped.get(f"item-{i:07d}")
        assert before is not None and after is not None
        assert before.text and after.text == ""
        assert after.digest == before.digest != ""  # a changed text is still noticed


def test_the_vector_parts_hold_one_vector_per_item(texts: list[tuple[str, tuple[str, ...], str]]) -> None:
    (replica,) = _build("vectors", N, texts)
    (decoded,) = _build("vectors_f32", N, texts)
    assert isinstance(replica, VectorReplica) and len(replica) == N
    assert isinstance(decoded, dict) and len(decoded) == N
    for item_id, record in decoded.items():
        held = replica.get(item_id)
        assert held is not None and held.digest == record.digest
        # Both came from the same seeded unit vectors: the replica's float16 copy is that vector.
        np.testing.assert_allclose(held.array(), record.array(), atol=1e-3)
        assert np.linalg.norm(held.array()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_the_content_parts_index_every_item(texts: list[tuple[str, tuple[str, ...], str]], dtype: str) -> None:
    (index,) = _build(f"content_{dtype}", N, texts)
    assert isinstance(index, ContentIndex) and len(index) == N


def test_the_whole_worker_parts_are_made_of_their_named_parts(texts: list[tuple[str, tuple[str, ...], str]]) -> None:
    assert set(WORKER) | set(WORKER_BEFORE) < set(PARTS)
    before = _build("worker_before", N, texts)
    now = _build("worker", N, texts)
    assert [type(p[0]) for p in before] == [Catalog, dict, ContentIndex]
    assert [type(p[0]) for p in now] == [Catalog, VectorReplica, ContentIndex]


def test_an_unknown_part_is_refused(texts: list[tuple[str, tuple[str, ...], str]]) -> None:
    with pytest.raises(ValueError, match="unknown part"):
        _build("vectors_i8", N, texts)


def test_item_texts_read_the_amazon_metadata_when_it_is_there(data_dir: Path) -> None:
    if not (data_dir / "amazon2018-small-5core" / "meta_Gift_Cards.json.gz").is_file():
        pytest.skip("Amazon 2018 metadata not present")
    rows = item_texts(data_dir)
    assert len(rows) > 1000 and any(desc for _, _, desc in rows)
