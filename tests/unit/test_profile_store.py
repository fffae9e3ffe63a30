"""The worker's write-back profile cache, over a table double (RocksDB is exercised by the
integration tests): bounded by bytes, written back before eviction, erasure's deletes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from state.codec import dumps, loads
from state.events import Purchase
from state.profile import Origin, Profile, apply, new_profile
from stream_app.profile_store import DECODED_PER_ENCODED_BYTE, ProfileStore


class FakeDB(dict[bytes, bytes]):
    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)


@dataclass
class FakeData:
    _dbs: dict[int, FakeDB] = field(default_factory=lambda: {0: FakeDB(), 1: FakeDB()})
    _key_index: dict[bytes, int] = field(default_factory=dict)

    def _db_for_partition(self, partition: int) -> FakeDB:
        return self._dbs.setdefault(partition, FakeDB())


@dataclass
class FakeTable:
    data: FakeData = field(default_factory=FakeData)
    partitions: int = 2
    changelog: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)

    def send_changelog(self, partition: int, key: bytes, value: Any) -> None:
        self.changelog.append((partition, key, value))


def _profile(user: str, items: int) -> Profile:
    p = new_profile(user)
    for j in range(items):
        applied = apply(p, Purchase(event_id=f"{user}-{j}", ts=100.0 + j, user_id=user, item_id=f"item-{j}"),
                        origin=Origin("t", 0, j), categories=("c",), in_place=True)
        p = applied or p
    return p


def test_the_cache_is_bounded_by_bytes_and_evicted_profiles_are_written_back_first() -> None:
    table = FakeTable()
    big = _profile("big", 300)
    budget = int(len(dumps(big)) * DECODED_PER_ENCODED_BYTE * 3.5)  # room for three big profiles
    store = ProfileStore(table, max_bytes=budget)
    for n in range(10):
        store.put(f"u{n}".encode(), _profile(f"u{n}", 300), n % 2)
        store.flush()  # measures each profile's size
    assert store.cached_bytes <= budget
    assert len(store) == 3
    # Every profile is in RocksDB (written at flush) and on the changelog, evicted ones included.
    for n in range(10):
        key = f"u{n}".encode()
        assert loads(table.data._dbs[n % 2][key]) == _profile(f"u{n}", 300)
    # An evicted dirty profile is written back before it leaves the cache.
    store.put(b"u9", _profile("u9", 301), 1)  # dirty, most recent
    for n in range(20, 24):
        store.put(f"u{n}".encode(), _profile(f"u{n}", 300), 0)
        store.flush()
    assert store.cached(b"u9") is None
    assert loads(table.data._dbs[1][b"u9"]).version == 301


def test_small_profiles_fit_many_more_than_big_ones() -> None:
    table = FakeTable()
    store = ProfileStore(table, max_bytes=200_000)
    for n in range(1000):
        store.put(f"s{n}".encode(), _profile(f"s{n}", 1), 0)
        store.flush()
    small = len(store)
    store.reset()
    for n in range(1000):
        store.put(f"b{n}".encode(), _profile(f"b{n}", 200), 0)
        store.flush()
    big = len(store)
    # What fits is the budget over each profile's charged size (5.5x its encoded size).
    for count, user, items in ((small, "s0", 1), (big, "b0", 200)):
        charged = int(len(dumps(_profile(user, items))) * DECODED_PER_ENCODED_BYTE)
        assert count in (200_000 // charged, 200_000 // charged - 1), (count, charged)
    assert store.cached_bytes <= 200_000


def test_delete_removes_cache_disk_and_sends_a_changelog_tombstone() -> None:
    table = FakeTable()
    store = ProfileStore(table)
    store.put(b"alice", _profile("alice", 3), 1)
    store.flush()
    assert b"alice" in table.data._dbs[1]
    store.delete(b"alice", 1)
    assert store.cached(b"alice") is None and b"alice" not in table.data._dbs[1]
    assert table.changelog[-1] == (1, b"alice", None)
    assert store.cached_bytes == 0
    assert store.find(b"alice") is None


def test_a_profile_over_the_byte_cap_is_written_trimmed_to_the_changelog_and_rocksdb() -> None:
    from stream_app import metrics

    table = FakeTable()
    store = ProfileStore(table, max_profile_bytes=4_000)
    big = _profile("big", 300)  # ~6 KB encoded
    assert len(dumps(big)) > 4_000
    before = metrics.PROFILES_TRIMMED._value.get()
    store.put(b"big", big, 1)
    store.flush()
    (partition, key, value), = table.changelog
    assert (partition, key) == (1, b"big")
    assert value is not None and len(value) <= 4_000
    assert table.data._dbs[1][b"big"] == value
    kept = loads(value)
    assert kept == store.cached(b"big")  # the cache holds what was written
    assert sorted(kept.purchased, key=kept.purchased.__getitem__) == [f"item-{j}" for j in range(300 - len(kept.purchased), 300)]
    assert metrics.PROFILES_TRIMMED._value.get() == before + 1
