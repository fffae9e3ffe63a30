"""Which items the owner encodes, and when: the selection logic of stream_app.item_vectors,
driven through real replica objects fed with encoded records (no broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from state.events import Item, encode, item_text
from state.interest import ItemVector, text_digest
from stream_app.catalog_replica import CatalogReplica
from stream_app.item_vectors import ItemEncoder, VectorReplica, dumps, link_replicas, loads
from stream_app.reviews import EncoderHolder
from stream_app.settings import Settings
from tests.support import CountingEncoder


class Setup:
    def __init__(self, owned: set[int], version: str = "v1", *, linked: bool = False) -> None:
        self.catalog = CatalogReplica(Settings(bootstrap_servers="unused:9092"), "items", 2, 65_536)
        self.vectors = VectorReplica(Settings(bootstrap_servers="unused:9092"), "items.vectors", 2)
        self.indexed: list[str] = []
        if linked:  # as the worker's Runtime wires them
            link_replicas(self.catalog, self.vectors, lambda v: self.indexed.append(v.item_id))
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


def _texts(s: Setup) -> dict[str, str]:
    return {i: e.text for i in sorted(s.catalog.catalog.ids()) if (e := s.catalog.catalog.get(i)) is not None}


def test_an_items_text_is_dropped_once_its_vector_exists_and_a_changed_text_is_kept_until_encoded() -> None:
    s = Setup(owned={0, 1}, linked=True)
    items = [s.item(f"i{i}", i % 2, f"title {i}", text=f"description {i}") for i in range(4)]
    assert s.drain() == 4
    assert all(_texts(s).values())  # sent, not yet read back: the texts are still needed
    s.read_back()
    assert _texts(s) == {f"i{i}": "" for i in range(4)} and s.catalog.catalog.dropped == 4
    assert sorted(s.indexed) == [f"i{i}" for i in range(4)]  # the content index still gets every vector
    for item in items:  # what is kept tells a changed text: the digest of the one encoded
        entry = s.catalog.catalog.get(item.item_id)
        assert entry is not None and entry.digest == text_digest(item_text(item.title, item.categories, item.text))
    # Read again (a restart's catch-up, or a re-announced item) with a vector already there: dropped at once.
    s.item("i0", 0, "title 0", ts=2.0, text="description 0")
    assert _texts(s)["i0"] == "" and s.catalog.catalog.dropped == 4
    # A changed text is held until its own vector is read back, then dropped.
    s.item("i1", 1, "title 1", ts=2.0, text="description 1, revised")
    assert _texts(s)["i1"] == item_text("title 1", ["c"], "description 1, revised") and s.catalog.catalog.dropped == 3
    assert s.drain() == 1
    s.read_back()
    assert _texts(s)["i1"] == "" and s.catalog.catalog.dropped == 4
    assert s.drain() == 0  # nothing re-encoded for want of a text


def test_a_new_encoder_version_reads_the_dropped_texts_again_and_encodes_every_item() -> None:
    s = Setup(owned={0, 1}, linked=True)
    items = [s.item(f"i{i}", i % 2, f"title {i}", text=f"description {i}") for i in range(3)]
    s.drain()
    s.read_back()
    assert s.catalog.catalog.dropped == 3
    s.holder.encoder = CountingEncoder("v2")
    s.vectors.want("v2")
    assert not s.catalog.ready.is_set() and s.catalog._rewind  # asked to read the items topic again
    for i, item in enumerate(items):  # what the tail reads again: no v2 vector yet, so the texts stay
        s.catalog.apply(i % 2, item.item_id.encode(), encode(item))
    assert all(_texts(s).values()) and s.catalog.catalog.dropped == 0
    s.catalog.ready.set()
    s.vectors.ready.set()
    assert s.drain() == 3
    assert {v.version for _, v, _ in s.sent[-3:]} == {"v2"}
    s.read_back()  # v1 records are ignored now, the v2 ones drop the texts
    assert _texts(s) == {"i0": "", "i1": "", "i2": ""}


def test_a_dropped_text_whose_vector_is_gone_makes_the_catalog_read_it_again() -> None:
    s = Setup(owned={0}, linked=True)
    s.item("a", 0, "Guitar strings")
    s.drain()
    s.read_back()
    assert _texts(s) == {"a": ""}
    s.vectors.on_rewind()  # the vector is no longer held (as if never read back)
    s.encoder._sent.clear()
    s.owned = {0}
    s.encoder._partitions = set()  # a new assignment: a full pass
    assert s.drain() == 0 and not s.catalog.ready.is_set()  # nothing to encode from, so: read again


def test_published_vectors_are_float16_rounded_and_the_replica_serves_exactly_what_was_published() -> None:
    s = Setup(owned={0}, linked=True)
    s.item("a", 0, "Guitar strings", text="Nickel wound, light gauge")
    s.drain()
    _, published, _ = s.sent[0]
    raw = s.holder.encoder.encode([item_text("Guitar strings", ["c"], "Nickel wound, light gauge")])[0]  # type: ignore[union-attr]
    want = raw.astype(np.float16).astype(np.float32)
    assert np.array_equal(published.array(), want) and not np.array_equal(published.array(), raw.astype(np.float32))
    s.read_back()
    held = s.vectors.get("a")
    assert held == published  # the float16 copy is exact for a rounded vector
    # A record written before the rounding (full float32) is served, and indexed, rounded.
    old = ItemVector(item_id="b", version="v1", digest="d", vector=np.array([0.1, 0.2, 0.3], dtype="<f4").tobytes())
    seen: list[ItemVector] = []
    s.vectors.on_vector = seen.append
    s.vectors.apply(0, b"b", dumps(old))
    got = s.vectors.get("b")
    rounded = np.array([0.1, 0.2, 0.3], dtype=np.float16).astype(np.float32)
    assert got is not None and np.array_equal(got.array(), rounded) and got.digest == "d" and got.version == "v1"
    assert seen == [got]


def test_the_catalog_replica_skips_an_entry_from_the_future_as_the_items_agent_dead_letters_it() -> None:
    """Catalog entries go by last writer wins on event time: a far-future entry would win forever."""
    replica = CatalogReplica(Settings(bootstrap_servers="unused:9092"), "items", 1, 65_536)
    produced = 1_733_000_000.0
    first = Item(item_id="a", event_id="a1", ts=produced - 10, title="Real title", categories=["c"])
    replica.apply(0, b"a", encode(first), produced)
    in_ms = Item(item_id="a", event_id="a2", ts=produced * 1000, title="From the year 55,000", categories=["d"])
    replica.apply(0, b"a", encode(in_ms), produced)
    assert replica.catalog.categories("a") == ("c",)
    later = Item(item_id="a", event_id="a3", ts=produced, title="Next title", categories=["e"])
    replica.apply(0, b"a", encode(later), produced)
    assert replica.catalog.categories("a") == ("e",)
