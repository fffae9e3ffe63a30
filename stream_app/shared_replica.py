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

import msgspec

from scoring.shared import decode_delta
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

    def apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            delta = decode_delta(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Only workers write this topic; a bad record is a bug, not input to dead-letter.
            log.error("unreadable scoring delta at key %r: %s", key, exc)
            return
        if self.pipeline.apply_delta(delta):
            metrics.SHARED_DELTAS.labels("replicated").inc()
        else:
            metrics.SHARED_DELTAS.labels("known").inc()

    def after_batch(self) -> None:
        metrics.SHARED_ITEMS.set(len(self.pipeline.shared.popularity))
        metrics.FOLLOW_EDGES.set(self.pipeline.shared.social.edges())
        metrics.USERS_ERASED.set(len(self.pipeline.shared.erased))

    def on_ready(self) -> None:
        log.info("shared scoring replica ready: %s", dict(self.pipeline.shared.summary()))
