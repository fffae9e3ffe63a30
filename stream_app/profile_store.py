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

import logging
from collections import OrderedDict
from typing import Any

from state.bounds import MAX_PROFILE_BYTES, fit
from state.codec import loads
from state.profile import Profile
from stream_app import metrics

log = logging.getLogger("persona.worker")


#: A decoded profile takes about this many times its MessagePack size in Python objects
#: (measured: 5.1x for one-event profiles, 5.6x for 100-item ones; dicts of floats dominate).
DECODED_PER_ENCODED_BYTE = 5.5
#: The size assumed for a new profile until its first write measures it.
NEW_PROFILE_BYTES = 512


class ProfileStore:
    """The cache is bounded by bytes, not entries: profiles differ a hundredfold in size (a
    newcomer's one event against a MovieLens user's hundreds), so a count bound either wastes
    memory or thrashes. Each entry is charged :data:`DECODED_PER_ENCODED_BYTE` times its
    latest encoded size (known when it is read or written)."""

    def __init__(self, table: Any, max_bytes: int = 16 * 1024 * 1024, max_profile_bytes: int = MAX_PROFILE_BYTES) -> None:
        self._table = table
        self._max_bytes = max_bytes
        self._max_profile_bytes = max_profile_bytes
        #: user key -> (profile, partition)
        self._cache: OrderedDict[bytes, tuple[Profile, int]] = OrderedDict()
        #: user key -> charged bytes (decoded estimate)
        self._charged: dict[bytes, int] = {}
        self._bytes = 0
        self._dirty: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        """The decoded-size estimate of every cached profile (what ``max_bytes`` bounds)."""
        return self._bytes

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
        self._remember(key, profile, partition, len(raw))
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

    def find(self, key: bytes) -> tuple[Profile, int] | None:
        """A profile this worker holds, and its partition, without knowing the partition
        (an erasure reaching the followers of the erased user): the cache, then every open
        partition's RocksDB."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        for partition, db in list(self._table.data._dbs.items()):
            raw = db.get(key)
            if raw is not None:
                profile = loads(raw)
                self._remember(key, profile, partition, len(raw))
                return profile, partition
        return None

    def delete(self, key: bytes, partition: int) -> None:
        """Erase a profile: out of the cache, out of RocksDB, and a tombstone on the changelog
        (sent now, flushed before the next commit like every changelog record; compaction
        then removes the profile's older records: see README, "Erasure")."""
        self._forget(key)
        self._dirty.discard(key)
        self._db(partition).delete(key)
        self._table.data._key_index.pop(key, None)
        self._table.send_changelog(partition, key, None)

    def purge(self, key: bytes) -> int:
        """Delete ``key`` from the RocksDB files of partitions this worker does not own now.

        Faust keeps a revoked partition's files (a warm start if it comes back); an erasure
        applied by the new owner leaves the profile there. Restoring that partition later
        would replay the changelog's tombstone, but it may never come back: an erasure has to
        reach this copy now. A file another handle still holds (Faust closes revoked
        partitions by garbage collection) is logged and left to that tombstone."""
        data = self._table.data
        found = 0
        for partition in range(self._table.partitions or 0):
            if partition in data._dbs:
                continue
            path = data.partition_path(partition)
            if not path.exists():
                continue
            try:
                db = data.rocksdb_options.open(path)
            except Exception as exc:  # rocksdict raises a bare Exception for a held lock
                log.warning("erasure: could not open %s to purge a stale copy: %s", path, exc)
                continue
            try:
                if db.get(key) is not None:
                    db.delete(key)
                    found += 1
            finally:
                db.close()
        return found

    def _remember(self, key: bytes, profile: Profile, partition: int, encoded: int | None = None) -> None:
        self._cache[key] = (profile, partition)
        self._cache.move_to_end(key)
        if encoded is not None or key not in self._charged:
            self._charge(key, encoded if encoded is not None else NEW_PROFILE_BYTES)
        self._evict()

    def _evict(self) -> None:
        # The most recent entry stays even if it alone is over the budget.
        while self._bytes > self._max_bytes and len(self._cache) > 1:
            old = next(iter(self._cache))
            if old in self._dirty:
                self._write(old)
            self._forget(old)

    def _charge(self, key: bytes, encoded: int) -> None:
        charged = int(encoded * DECODED_PER_ENCODED_BYTE)
        self._bytes += charged - self._charged.get(key, 0)
        self._charged[key] = charged

    def _forget(self, key: bytes) -> None:
        self._cache.pop(key, None)
        self._bytes -= self._charged.pop(key, 0)

    def _write(self, key: bytes) -> None:
        profile, partition = self._cache[key]
        # A record over the producer's limit is refused (the worker restarts and meets it again):
        # an oversized profile forgets its oldest entries first (state.bounds).
        data, forgot = fit(profile, self._max_profile_bytes)
        if forgot:
            metrics.PROFILES_TRIMMED.inc()
            log.warning("a profile over %d bytes forgot %d of its oldest or weakest entries", self._max_profile_bytes, forgot)
        self._charge(key, len(data))
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
        self._evict()  # the writes measured the new profiles' real sizes
        return n

    def reset(self) -> None:
        """Flush and forget everything (partitions moved: cached copies may go stale)."""
        self.flush()
        self._cache.clear()
        self._charged.clear()
        self._bytes = 0
