"""A write-back cache of decoded profiles over the Faust RocksDB table.

Writing the whole profile to RocksDB and to the changelog topic on every event made the
changelog carry one full profile per input record (MovieLens users hold hundreds of
items), which dominated the worker's cost. Like Kafka Streams' record cache, profiles stay
decoded in memory and are written once per commit: :meth:`flush` runs right before Faust
commits offsets (and Faust flushes the producer before committing), so a committed event
always has its profile on the changelog. A crash loses only uncommitted work, which the
replay re-applies; the idempotency watermark skips what RocksDB already has.

Faust refuses table writes outside an event (it takes the partition from the current
event), so the flush writes to the partition's RocksDB and sends the changelog record
with the partition it recorded when the profile was read.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from state.codec import dumps, loads
from state.profile import Profile
from stream_app import metrics


class ProfileStore:
    def __init__(self, table: Any, max_cached: int = 50_000) -> None:
        self._table = table
        self._max = max_cached
        #: user key -> (profile, partition)
        self._cache: OrderedDict[bytes, tuple[Profile, int]] = OrderedDict()
        self._dirty: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def _db(self, partition: int) -> Any:
        return self._table.data._db_for_partition(partition)

    def get(self, key: bytes, partition: int) -> Profile | None:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit[0]
        raw = self._db(partition).get(key)
        if raw is None:
            return None
        profile = loads(raw)
        self._remember(key, profile, partition)
        return profile

    def cached(self, key: bytes) -> Profile | None:
        hit = self._cache.get(key)
        return hit[0] if hit is not None else None

    def put(self, key: bytes, profile: Profile, partition: int) -> None:
        self._remember(key, profile, partition)
        self._dirty.add(key)

    def touch(self, key: bytes) -> None:
        """Mark for rewrite: after kill -9 the local RocksDB may be ahead of the changelog,
        and a replayed (skipped) event re-sends the profile so the changelog catches up."""
        if key in self._cache:
            self._dirty.add(key)

    def _remember(self, key: bytes, profile: Profile, partition: int) -> None:
        self._cache[key] = (profile, partition)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            old, _ = next(iter(self._cache.items()))
            if old in self._dirty:
                self._write(old)
            del self._cache[old]

    def _write(self, key: bytes) -> None:
        profile, partition = self._cache[key]
        data = dumps(profile)
        self._db(partition).put(key, data)
        self._table.data._key_index[key] = partition
        self._table.send_changelog(partition, key, data)
        self._dirty.discard(key)
        metrics.PROFILE_BYTES.observe(len(data))

    def flush(self) -> int:
        """Write every changed profile to RocksDB and the changelog (before a commit)."""
        n = len(self._dirty)
        for key in list(self._dirty):
            self._write(key)
        return n

    def reset(self) -> None:
        """Flush and forget everything (partitions moved: cached copies may go stale)."""
        self.flush()
        self._cache.clear()
