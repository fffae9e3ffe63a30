"""What :class:`stream_app.pipeline.Pipeline` reads and writes through: the profile store, the
item text vectors, the emit and publish callables. The worker's are RocksDB behind a cache and
Kafka replicas (``stream_app.profile_store``, ``stream_app.item_vectors``); the in-memory ones
here serve replays in process (``persona evaluate``, training data, the swap study,
benchmarks): no Kafka, no Faust."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from scoring.shared import Delta
from state.interest import ItemVector
from state.profile import Profile


class Store(Protocol):
    """Decoded profiles by user key; ``partition`` says where a profile lives."""

    def get(self, key: bytes, partition: int) -> Profile | None: ...

    def put(self, key: bytes, profile: Profile, partition: int) -> None: ...

    def touch(self, key: bytes) -> None:
        """A replayed event was skipped: rewrite the stored copy (see ProfileStore.touch)."""

    def cached(self, key: bytes) -> Profile | None: ...

    def find(self, key: bytes) -> tuple[Profile, int] | None:
        """A profile held here and its partition, the partition unknown (an erasure's followers)."""

    def delete(self, key: bytes, partition: int) -> None:
        """Erase a profile from every copy the store keeps (cache, disk, changelog)."""

    def purge(self, key: bytes) -> int:
        """Delete stale copies of a profile from partitions held here before and owned by
        another worker now (an erasure reaches every worker); how many were found."""


class Vectors(Protocol):
    """Item text vectors of one wanted encoder version (``None``: no encoder)."""

    @property
    def wanted(self) -> str | None: ...

    def get(self, item_id: str) -> ItemVector | None: ...


#: Takes one recommendation message: ``(key, value)``; a value of None is a tombstone (erasure).
Emit = Callable[[bytes, bytes | None], None]
#: Takes one scoring delta this pipeline applied (the worker publishes it for the others).
Publish = Callable[[Delta], None]


class DictStore:
    """The pipeline's profile store as a dict (the worker's is RocksDB behind a cache)."""

    def __init__(self) -> None:
        self.profiles: dict[bytes, Profile] = {}

    def get(self, key: bytes, partition: int) -> Profile | None:
        return self.profiles.get(key)

    def put(self, key: bytes, profile: Profile, partition: int) -> None:
        self.profiles[key] = profile

    def touch(self, key: bytes) -> None:
        pass

    def cached(self, key: bytes) -> Profile | None:
        return self.profiles.get(key)

    def find(self, key: bytes) -> tuple[Profile, int] | None:
        profile = self.profiles.get(key)
        return None if profile is None else (profile, 0)

    def delete(self, key: bytes, partition: int) -> None:
        self.profiles.pop(key, None)

    def purge(self, key: bytes) -> int:
        return 0


class NoVectors:
    """No text encoder in the evaluator: the baseline ranker does not read vectors."""

    @property
    def wanted(self) -> str | None:
        return None

    def get(self, item_id: str) -> ItemVector | None:
        return None


class DictVectors:
    """Item text vectors of one encoder version, filled as the replay reaches each item
    (what the worker's item-vector replica holds)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.vectors: dict[str, ItemVector] = {}

    @property
    def wanted(self) -> str | None:
        return self.version

    def get(self, item_id: str) -> ItemVector | None:
        return self.vectors.get(item_id)


class EventClock:
    """The replay's clock: the latest event time seen (never goes back)."""

    def __init__(self) -> None:
        self.now = 0.0

    def advance(self, ts: float) -> None:
        self.now = max(self.now, ts)

    def __call__(self) -> float:
        return self.now
