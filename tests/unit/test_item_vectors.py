"""Which items the owner encodes, and when: the selection logic of stream_app.item_vectors,
driven through real replica objects fed with encoded records (no broker)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from state.events import Item, encode, item_text
from state.interest import ItemVector, text_digest
from stream_app.catalog_replica import CatalogReplica
from stream_app.item_vectors import ItemEncoder, VectorReplica, dumps, loads
from stream_app.reviews import EncoderHolder
from stream_app.settings import Settings


class CountingEncoder:
    """Deterministic text -> unit vector (a hash), counting what it was asked to encode."""

    def __init__(self, version: str) -> None:
        self.info = SimpleNamespace(version=version)
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:8].astype(np.float32) + 1 for t in texts]
        out = np.stack(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def sentiment(self, vectors: np.ndarray) -> np.ndarray:
        return np.zeros(len(vectors), dtype=np.float32)


class Setup:
    def __init__(self, owned: set[int], version: str = "v1") -> None:
        self.catalog = CatalogReplica(Settings(bootstrap_servers="unused:9092"), "items", 2, 65_536)
        self.vectors = VectorReplica(Settings(bootstrap_servers="unused:9092"), "items.vectors", 2)
        self.holder = EncoderHolder(registry=Path("/nonexistent"))
        self.holder.encoder = CountingEncoder(version)
        self.vectors.want(version)
        self.sent: list[tuple[bytes, ItemVector, int]] = []
        self.owned = owned
        self.encoder = ItemEncoder(self.catalog, self.vectors, self.holder, lambda: self.owned, self._send, batch=3)
        self.catalog.ready.set()
        self.vectors.ready.set()

    async def _send(self, key: bytes, value: bytes, partition: int) -> None:
        self.sent.append((key, loads(value), partition))

    def item(self, item_id: str, partition: int, title: str, ts: float = 1.0, text: str = "") -> Item:
        item = Item(item_id=item_id, event_id=f"{item_id}@{ts}", ts=ts, title=title, text=text, categories=["c"])
        self.catalog.apply(partition, item_id.encode(), encode(item))
        return item

    def read_back(self) -> None:
        """What every worker's replica would read from the vectors topic."""
        for key, vector, partition in self.sent:
            self.vectors.apply(partition, key, dumps(vector))

    def drain(self) -> int:
        async def run() -> int:
            n = 0
            while sent := await self.encoder.step():
                n += sent
            return n

        return asyncio.run(run())


def test_the_owner_encodes_each_item_with_text_once_per_version() -> None:
    s = Setup(owned={0})
    s.item("a", 0, "Guitar strings")
    s.item("b", 0, "Drum sticks")
    s.item("c", 1, "Piano bench")  # partition 1 belongs to another worker
    s.item("d", 0, "")  # categories only: still text ("c")
    assert s.drain() == 3
    assert sorted(k for k, _, _ in s.sent) == [b"a", b"b", b"d"]
    assert {p for _, _, p in s.sent} == {0}
    for key, vector, _ in s.sent:
        entry = s.catalog.catalog.get(key.decode())
        assert entry is not None and vector.digest == text_digest(entry.text) and vector.version == "v1"
    s.read_back()
    # Nothing new: no second encoding, even after a restart of the selection (new owner set).
    s.owned = {0}
    assert s.drain() == 0
    # A catalog update with the same text is not re-encoded; a changed text is.
    s.item("a", 0, "Guitar strings", ts=2.0)
    s.item("b", 0, "Drum sticks, maple", ts=2.0)
    assert s.drain() == 1 and s.sent[-1][0] == b"b"
    assert s.holder.encoder.texts.count(item_text("Drum sticks", ["c"], "")) == 1  # type: ignore[union-attr]


def test_a_new_partition_or_encoder_version_brings_a_full_pass() -> None:
    s = Setup(owned={0})
    for i in range(5):
        s.item(f"i{i}", i % 2, f"title {i}")
    assert s.drain() == 3  # i0, i2, i4
    s.read_back()
    s.owned = {0, 1}  # rebalance: this worker now owns partition 1 too
    assert s.drain() == 2
    s.read_back()
    s.holder.encoder = CountingEncoder("v2")
    assert s.drain() == 0  # the replica still holds v1: wait until it switched
    s.vectors.want("v2")
    s.vectors.ready.set()  # (the tail re-read the topic; it holds no v2 vector yet)
    assert s.drain() == 5
    assert {v.version for _, v, _ in s.sent[-5:]} == {"v2"}


def test_the_replica_keeps_only_the_wanted_version() -> None:
    r = VectorReplica(Settings(bootstrap_servers="unused:9092"), "items.vectors", 1)
    r.want("v2")
    old = ItemVector(item_id="a", version="v1", digest="x", vector=b"\x00" * 16)
    new = ItemVector(item_id="b", version="v2", digest="y", vector=b"\x00" * 16)
    r.apply(0, b"a", dumps(old))
    r.apply(0, b"b", dumps(new))
    r.apply(0, b"c", b"not msgpack of an item vector")
    r.apply(0, b"d", None)  # a tombstone
    assert r.get("a") is None and r.get("b") == new and len(r) == 1
