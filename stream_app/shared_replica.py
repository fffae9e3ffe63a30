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
segments, social) with one mechanism. The cost is a restore that grows with the history:
the topic keeps everything (``retention.ms=-1``); a periodic snapshot would bound it
(not built yet, see the README).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from scoring.shared import Delta, decode_record, encode_batch, encode_delta
from stream_app import metrics
from stream_app.catalog_replica import TopicTail
from stream_app.pipeline import Pipeline
from stream_app.settings import Settings

log = logging.getLogger(__name__)


class SharedReplica(TopicTail):
    """Folds every worker's scoring deltas into this worker's pipeline."""

    def __init__(self, settings: Settings, topic: str, partitions: int, pipeline: Pipeline) -> None:
        super().__init__(settings, topic, partitions)
        self.pipeline = pipeline

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
        log.info("shared scoring replica ready: %s", dict(self.pipeline.shared.summary()))


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

    def __init__(self, send: Callable[[bytes, bytes], None], max_deltas: int, max_bytes: int = MAX_BATCH_BYTES) -> None:
        self._send = send
        self._max_deltas = max(1, max_deltas)
        self._max_bytes = max_bytes
        #: source -> (encoded deltas, their total size)
        self._pending: dict[str, tuple[list[bytes], list[int]]] = {}

    def add(self, delta: Delta) -> None:
        data = encode_delta(delta)
        batch = self._pending.get(delta.source)
        if batch is None:
            batch = self._pending[delta.source] = ([], [0])
        elif batch[1][0] + len(data) > self._max_bytes:
            self._send_batch(delta.source)
            batch = self._pending[delta.source] = ([], [0])
        batch[0].append(data)
        batch[1][0] += len(data)
        if len(batch[0]) >= self._max_deltas:
            self._send_batch(delta.source)

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
        encoded, _ = self._pending.pop(source)
        if encoded:
            self._send(source.encode(), encoded[0] if len(encoded) == 1 else encode_batch(encoded))
