"""``persona bench catalog``: what every worker holds per 100k catalog items, part by part.

Every worker replicates the catalog and the item vectors (``stream_app/catalog_replica.py``,
``stream_app/item_vectors.py``) and indexes the vectors for content candidates
(``scoring/content.py``). Each part is built alone, in a fresh interpreter, from the same
items, and its resident memory (RSS after a collection, minus RSS before building) is scaled to
100k items:

* ``catalog_text``: the catalog with every item's encoder text held (before issue 13);
* ``catalog``: the catalog as the worker now holds it once the items are encoded (text dropped,
  a digest kept to notice a changed text);
* ``vectors_f32``: the item-vector replica as it was: every decoded record (float32 vector,
  digest, version) per item;
* ``vectors``: the item-vector replica now (float16 vector and digest per item);
* ``content_f32`` / ``content_f16``: the usearch index with its exact-scoring copy, by storage
  type (f16 is the default; usearch also has i8, which this index does not offer: its
  candidates are re-scored exactly, and i8's rounding is too coarse for the bound that
  decides when enough candidates were fetched);
* ``worker_before`` / ``worker``: all of it together, as a worker held it before and holds it
  now; their ratio is the figure to quote.

Item texts are real: the Amazon 2018 Gift Cards and Magazines metadata (title, categories,
description, as the encoder sees them; mean about 430 characters), cycled with a numbered
suffix so no two strings are shared. Vectors are seeded random unit vectors of the MiniLM
dimension (384): the memory of a vector does not depend on its values (usearch's graph
degree barely does).
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: MiniLM-L6's dimension, the default encoder's
DIM = 384

PARTS = ("catalog_text", "catalog", "vectors_f32", "vectors", "content_f32", "content_f16", "worker_before", "worker")
#: the parts each whole-worker figure is made of
WORKER_BEFORE = ("catalog_text", "vectors_f32", "content_f16")
WORKER = ("catalog", "vectors", "content_f16")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def item_texts(data_dir: Path) -> list[tuple[str, tuple[str, ...], str]]:
    """(title, categories, description) of every metadata line of the Amazon 2018 small files."""
    out: list[tuple[str, tuple[str, ...], str]] = []
    folder = data_dir / "amazon2018-small-5core"
    for name in ("meta_Gift_Cards.json.gz", "meta_Magazine_Subscriptions.json.gz"):
        path = folder / name
        if not path.is_file():
            continue
        with gzip.open(path, "rb") as fh:
            for raw in fh:
                row = json.loads(raw)
                desc = row.get("description") or []
                desc = " ".join(desc) if isinstance(desc, list) else str(desc)
                out.append((str(row.get("title", "")), tuple(row.get("category") or ()), desc))
    if not out:
        # Without the data: texts of the same mean length, so the run still says something.
        out = [(f"Item {i}", ("Books",), "lorem ipsum dolor sit amet " * 15) for i in range(1000)]
    return out


def _build(part: str, n: int, texts: list[tuple[str, tuple[str, ...], str]]) -> list[Any]:
    """The structures of ``part`` for ``n`` items (kept alive by the caller)."""
    from state.events import Item

    rng = np.random.default_rng(0)
    keep: list[Any] = []
    if part == "worker_before":
        return [_build(p, n, texts) for p in WORKER_BEFORE]
    if part == "worker":
        return [_build(p, n, texts) for p in WORKER]
    if part.startswith("catalog"):
        from state.catalog import Catalog

        catalog = Catalog()
        for i in range(n):
            title, cats, desc = texts[i % len(texts)]
            item_id = f"item-{i:07d}"
            catalog.upsert(Item(event_id=f"i-{i}", ts=1.0, item_id=item_id, title=f"{title} #{i}", categories=list(cats), text=desc))
            entry = catalog.get(item_id)
            if part == "catalog" and entry is not None:
                catalog.drop_text(item_id, entry.digest)  # its vector arrived (stream_app.item_vectors)
        keep.append(catalog)
    elif part in ("vectors", "vectors_f32"):
        from state.interest import ItemVector, item_vector_bytes, text_digest
        from stream_app.item_vectors import VectorReplica, dumps, loads
        from stream_app.settings import Settings

        replica = VectorReplica(Settings(bootstrap_servers="unused:9092"), "items.vectors", 1)
        replica.want("minilm-v1")
        before: dict[str, ItemVector] = {}
        for i in range(n):
            v = rng.standard_normal(DIM).astype(np.float32)
            item_id = f"item-{i:07d}"
            vector = item_vector_bytes(v / np.linalg.norm(v))
            record = dumps(ItemVector(item_id=item_id, version="minilm-v1", digest=text_digest(str(i)), vector=vector))
            if part == "vectors":
                replica.apply(0, item_id.encode(), record)  # the wire format, as the replica reads it
            else:
                before[item_id] = loads(record)  # what the replica held before: each decoded record
        keep.append(replica if part == "vectors" else before)
    elif part.startswith("content_"):
        from scoring.content import ContentIndex

        index = ContentIndex(dtype=part.removeprefix("content_"))
        for i in range(n):
            v = rng.standard_normal(DIM).astype(np.float32)
            index.upsert(f"item-{i:07d}", "minilm-v1", v / np.linalg.norm(v))
        keep.append(index)
    else:
        raise ValueError(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
    return keep


def measure_one(part: str, n: int, data_dir: Path) -> dict[str, Any]:
    """Builds ``part`` in this process; RSS grown, in bytes (run it in a fresh interpreter)."""
    import scoring.content  # noqa: F401  (imports and their arenas are not the part's memory)
    import state.catalog  # noqa: F401
    import stream_app.item_vectors  # noqa: F401

    # Read once, before the baseline: the metadata is input, not the part's memory.
    texts = item_texts(data_dir)
    gc.collect()
    before = _rss()
    started = time.perf_counter()
    kept = _build(part, n, texts)
    seconds = time.perf_counter() - started
    gc.collect()
    after = _rss()
    del kept
    return {"part": part, "items": n, "rss_bytes": after - before, "build_s": round(seconds, 2)}


def run(data_dir: Path, items: int = 100_000, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Each part in its own interpreter; bytes per 100k items and ratios against the before figures."""
    report: dict[str, Any] = {"cpus": os.cpu_count() or 0, "items": items, "dim": DIM, "parts": {}}
    for part in parts:
        out = subprocess.run(
            [sys.executable, "-m", "bench.catalog", part, str(items), str(data_dir)],
            check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["bytes_per_100k_items"] = round(row["rss_bytes"] * 100_000 / items)
        report["parts"][part] = row
    got = report["parts"]
    for new, old in (("catalog", "catalog_text"), ("vectors", "vectors_f32"), ("content_f16", "content_f32"), ("worker", "worker_before")):
        if new in got and old in got and got[old]["rss_bytes"] > 0:
            report[f"{new}_vs_{old}"] = round(got[new]["rss_bytes"] / got[old]["rss_bytes"], 3)
    return report


if __name__ == "__main__":
    print(json.dumps(measure_one(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))))
