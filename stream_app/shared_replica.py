"""Every worker's copy of the global scoring state: a tail of the ``scoring.deltas`` topic.

The owner of a user's partition applies each delta it makes at once (so a single worker
never waits on the broker for its own knowledge) and publishes it here, keyed by its input
``topic:partition`` (one source, one delta partition: per-source offset order holds). Every
worker reads all partitions of this topic from the beginning with a group-less consumer
(:class:`stream_app.catalog_replica.TopicTail`) and folds in what it has not applied yet:
its own deltas come back and are skipped by the per-source watermark
(:meth:`scoring.shared.SharedState.apply`), the other workers' deltas are new. The agents wait
for the catch-up at start, so a restarted worker ranks with the whole history again.

Why a delta log and not a compacted table of neighbours: a delta is small and order-free,
and replaying the log rebuilds every part of the state (popularity, co-occurrence, centroids,
segments, social) with one mechanism. What bounds the replay is the latest snapshot
(``stream_app.snapshots``, taken by ``persona shared snapshot``): the replica restores it and
reads each partition from the snapshot's offsets. Without a snapshot that fits the worker's
scoring settings it reads the whole topic, and refuses to start (restarts, loudly) when
deltas it would need were deleted. Deltas deleted under a replica that is still reading
(it fell behind a ``--truncate``) make the worker restart and restore the newer snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from aiokafka.errors import OffsetOutOfRangeError
from confluent_kafka import KafkaException

from scoring.shared import MARK_HEADER, Delta, SnapshotError, decode_record, encode_batch, encode_delta, encode_mark
from state.errors import BrokerError
from stream_app import metrics, snapshots
from stream_app.catalog_replica import TopicTail
from stream_app.flush import restart_now
from stream_app.pipeline import Pipeline
from stream_app.settings import Settings

log = logging.getLogger(__name__)


class SharedReplica(TopicTail):
    """Folds every worker's scoring deltas into this worker's pipeline."""

    offset_reset = "none"  # a delta deleted under the replica must not be skipped silently

    def __init__(self, settings: Settings, topic: str, partitions: int, pipeline: Pipeline) -> None:
        super().__init__(settings, topic, partitions)
        self.pipeline = pipeline
        self._started = time.monotonic()

    async def start_offsets(self) -> dict[int, int]:
        """The latest snapshot's offsets, once it is restored; {} (the topic's start) without one."""
        self._started = time.monotonic()
        shared, settings = self.pipeline.shared, self._settings
        if shared.applied:  # a state already built is only read on
            return {}
        latest = None
        if settings.shared_snapshot:
            try:
                latest = await asyncio.to_thread(snapshots.read_latest, settings)
            except (SnapshotError, BrokerError) as exc:
                log.error("the latest shared-state snapshot cannot be read (%s): reading the deltas topic from its start", exc)
        bounds = await self._deltas_bounds()
        stale = snapshots.beyond_end(latest.manifest, bounds) if latest is not None else None
        if latest is not None and stale is not None:
            log.warning("shared-state snapshot %s not used: %s", latest.manifest.id, stale)
        elif latest is not None:
            try:
                # Decoded and built in a thread (seconds for a large state: the loop keeps serving
                # the consumer's heartbeats and the other replicas); taken over here, on the loop,
                # where the other replicas write to the state.
                staged = await asyncio.to_thread(shared.stage, latest.data)
                shared.adopt(staged)
            except SnapshotError as exc:
                log.warning("shared-state snapshot %s not used: %s", latest.manifest.id, exc)
            else:
                # What replaying each erase delta did at every start: stale copies of the erased
                # profiles in partitions this worker held before are deleted (a worker that was
                # down when a user was erased still holds theirs).
                for user in list(shared.erased):
                    self.pipeline.erased_elsewhere(user, [], None)
                metrics.SHARED_SNAPSHOT_DELTAS.set(latest.manifest.deltas)
                log.info(
                    "shared scoring state restored from snapshot %s (%d deltas, %d bytes); reading the deltas from %s",
                    latest.manifest.id, latest.manifest.deltas, latest.manifest.size, latest.manifest.positions,
                )
                return dict(latest.manifest.positions)
        try:
            snapshots.check_covers(settings.scoring_deltas_topic, bounds, {})
        except SnapshotError as exc:
            # Ranking with a state that misses deleted history would be silently wrong.
            restart_now(f"the shared scoring state cannot be built: {exc}")
        return {}

    async def _deltas_bounds(self, tries: int = 5) -> dict[int, tuple[int, int]]:
        """The deltas topic's (first kept, end) offsets; after ``tries`` failures the worker
        restarts (it cannot know what it must read)."""
        for attempt in range(tries):
            try:
                return await asyncio.to_thread(snapshots.deltas_bounds, self._settings)
            except (BrokerError, KafkaException) as exc:
                log.warning("reading the deltas topic's offsets failed (%s); try %d of %d", exc, attempt + 1, tries)
                await asyncio.sleep(min(2.0 * (attempt + 1), 10.0))
        restart_now(f"the offsets of {self._settings.scoring_deltas_topic} could not be read in {tries} tries")

    def out_of_range(self, exc: OffsetOutOfRangeError) -> None:
        restart_now(
            f"scoring deltas this worker had not read yet were deleted ({exc}): restarting to restore the latest snapshot"
        )

    def skip(self, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> bool:
        """A record whose mark says every delta in it was applied here: counted, not decoded
        (this worker's own deltas come back so)."""
        if key is None:
            return False
        for name, mark in headers:
            if name == MARK_HEADER:
                known = self.pipeline.shared.covered(key.decode(errors="replace"), mark)
                if known is None:
                    return False
                metrics.SHARED_DELTAS.labels("known").inc(known)
                return True
        return False

    def apply(self, partition: int, key: bytes | None, value: bytes | None, timestamp: float | None = None) -> None:
        if value is None:
            return
        try:
            deltas = decode_record(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Only workers write this topic; a bad record is a bug, not input to dead-letter.
            log.error("unreadable scoring delta at key %r: %s", key, exc)
            return
        replicated = sum(1 for delta in deltas if self.pipeline.apply_delta(delta))
        if replicated:
            metrics.SHARED_DELTAS.labels("replicated").inc(replicated)
        if len(deltas) > replicated:
            metrics.SHARED_DELTAS.labels("known").inc(len(deltas) - replicated)

    def after_batch(self) -> None:
        metrics.SHARED_ITEMS.set(len(self.pipeline.shared.popularity))
        metrics.FOLLOW_EDGES.set(self.pipeline.shared.social.edges())
        metrics.USERS_ERASED.set(len(self.pipeline.shared.erased))

    def on_ready(self) -> None:
        took = time.monotonic() - self._started
        metrics.SHARED_CATCHUP.set(took)
        log.info("shared scoring replica ready in %.2f s: %s", took, dict(self.pipeline.shared.summary()))


#: Largest batch record, in bytes (under Kafka's default 1 MiB message and request sizes).
MAX_BATCH_BYTES = 256 * 1024


class DeltaBatcher:
    """This worker's scoring deltas, sent to the deltas topic in batches.

    One record per input source and batch: a source's deltas stay in offset order on one
    partition (the record's key is the source), as with one record per delta. A delta is
    applied to this worker's state when it is made; batching only delays what the *other*
    workers learn, until the batch fills (``max_deltas`` or :data:`MAX_BATCH_BYTES`) or the
    next :meth:`flush` (the worker's flush timer, and before every offset commit, so a
    committed input record's delta is always in the producer's hands). Why: a record per
    behaviour event was the producer's and every replica's biggest per-event cost.
    A batch of one is written as a single delta, the format workers before batches read.
    """

    def __init__(
        self, send: Callable[[bytes, bytes, list[tuple[str, bytes]]], None], max_deltas: int, max_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        #: send(key, value, headers)
        self._send = send
        self._max_deltas = max(1, max_deltas)
        self._max_bytes = max_bytes
        #: source -> (encoded deltas, [their total size, the highest (offset, index) among them])
        self._pending: dict[str, tuple[list[bytes], list[Any]]] = {}

    def add(self, delta: Delta) -> None:
        data = encode_delta(delta)
        source = delta.source
        batch = self._pending.get(source)
        if batch is None:
            batch = self._pending[source] = ([], [0, (-1, -1)])
        elif batch[1][0] + len(data) > self._max_bytes:
            self._send_batch(source)
            batch = self._pending[source] = ([], [0, (-1, -1)])
        batch[0].append(data)
        meta = batch[1]
        meta[0] += len(data)
        # A source's deltas are made in (offset, index) order; the max, not the last, keeps the
        # mark safe even if they were not.
        at = (delta.offset, delta.index)
        if at > meta[1]:
            meta[1] = at
        if len(batch[0]) >= self._max_deltas:
            self._send_batch(source)

    @property
    def pending(self) -> int:
        """Deltas made and not yet handed to the producer."""
        return sum(len(b[0]) for b in self._pending.values())

    def flush(self) -> int:
        """Hand every pending delta to the producer; how many."""
        n = self.pending
        for source in list(self._pending):
            self._send_batch(source)
        return n

    def _send_batch(self, source: str) -> None:
        encoded, meta = self._pending.pop(source)
        if encoded:
            offset, index = meta[1]
            mark = [(MARK_HEADER, encode_mark(len(encoded), offset, index))]
            self._send(source.encode(), encoded[0] if len(encoded) == 1 else encode_batch(encoded), mark)
