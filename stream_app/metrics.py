"""Prometheus metrics: ``persona_*``, seconds and bytes, counters end in ``_total``.

No user or item ids in labels: label values come from closed sets (topics, outcomes,
dead-letter reasons), so series counts stay bounded.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "persona_events",
    "Input records handled, by topic and outcome (applied, duplicate, dead_letter, catalog).",
    ["topic", "outcome"],
    registry=REGISTRY,
)
_event_children: dict[tuple[str, str], Any] = {}


def event_counter(topic: str, outcome: str) -> Any:
    """``EVENTS.labels(topic, outcome)``, memoized: ``labels()`` costs a lock and a lookup."""
    child = _event_children.get((topic, outcome))
    if child is None:
        child = _event_children[(topic, outcome)] = EVENTS.labels(topic, outcome)
    return child


DEAD_LETTERS = Counter(
    "persona_dead_letter",
    "Records routed to a dead-letter topic, by reason.",
    ["reason"],
    registry=REGISTRY,
)
PROFILE_UPDATES = Counter(
    "persona_profile_updates", "Profile writes that changed a profile.", registry=REGISTRY
)
ERASURES = Counter(
    "persona_erasures", "Erasure records applied (each also puts a tombstone on the recommendations topic).", registry=REGISTRY
)
RECOMMENDATIONS = Counter(
    "persona_recommendations_emitted", "Recommendation messages emitted.", registry=REGISTRY
)
CATCHUP_CHANGES = Counter(
    "persona_catchup_changes",
    "Changes whose record was older than PERSONA_CATCHUP_AFTER_S (a backlog; a batch record's events are one "
    "change): their list waited for the end of the emit interval instead of going out at once.",
    registry=REGISTRY,
)
PROCESSING = Histogram(
    "persona_event_processing_seconds",
    "Time to decode, apply and store one event.",
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "persona_batch_events",
    "Events in one batch record (state.batch): how much of Faust's per-record cost producers' batches save.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
RANKING = Histogram(
    "persona_ranking_seconds",
    "Wall time of one emitted message's ranking (candidates, scores, reasons).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
RANKING_CPU = Counter(
    "persona_ranking_cpu_seconds",
    "CPU time of the ranking thread spent in those rankings: well below persona_ranking_seconds_sum "
    "means the rankings wait (the GIL, other threads on the cores), not work.",
    registry=REGISTRY,
)
EVENT_TO_EMIT = Histogram(
    "persona_event_to_emit_seconds",
    "Event time of the triggering event to the recommendation being emitted.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 3600.0, 86400.0, 3.2e7, 3.2e9),
    registry=REGISTRY,
)
INGEST_TO_EMIT = Histogram(
    "persona_ingest_to_emit_seconds",
    "Kafka record timestamp of the triggering event to the recommendation being emitted "
    "(the pipeline's own latency, meaningful when replaying old data).",
    # From a few ms (emit interval 0, idle) to minutes (a replay's backlog waiting in the topic).
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
PROFILE_BYTES = Histogram(
    "persona_profile_bytes",
    "Serialized profile size.",
    buckets=(128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536),
    registry=REGISTRY,
)
PROFILES_TRIMMED = Counter(
    "persona_profiles_trimmed",
    "Profiles that were over the byte cap when written and forgot their oldest or weakest "
    "entries to fit (state.bounds): a user far outside the shipped datasets, or very long ids.",
    registry=REGISTRY,
)
STALL_RESTARTS = Counter(
    "persona_commit_stall_restarts",
    "Worker self-restarts asked for by this process: a commit stuck behind finished work, "
    "a message lost before the agent (faust#596), or an idle worker owning a partition with "
    "records it never reads (starved_partition); the supervisor restarts it.",
    ["cause"],
    registry=REGISTRY,
)
LOOP_LAG = Histogram(
    "persona_event_loop_lag_seconds",
    "How late the worker's event loop wakes a 0.25 s sleep: time it could not run because "
    "something held it (CPU-bound code on the loop, GIL contention, starved cores).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
SUPERVISOR_RESTARTS = Counter(
    "persona_supervisor_restarts",
    "Restarts of this worker by its `persona worker` supervisor before the current process "
    "(carried across the restart, unlike every other counter here).",
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "persona_model_info",
    "1 for the model version this worker serves (one series per loaded model).",
    ["name", "version"],
    registry=REGISTRY,
)
MODEL_RELOAD_FAILURES = Counter(
    "persona_model_reload_failures",
    "Model artifacts refused during a hot swap (the previous model was kept).",
    registry=REGISTRY,
)
ENCODE_SECONDS = Histogram(
    "persona_encode_batch_seconds",
    "Time to encode one micro-batch of texts (reviews or catalog items).",
    # From a few ms (emit interval 0, idle) to minutes (a replay's backlog waiting in the topic).
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)
ENCODE_TEXTS = Histogram(
    "persona_encode_batch_texts",
    "Texts in one encoded micro-batch; rate(persona_encode_batch_texts_sum) is the encoder's texts/s.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
CATALOG_ITEMS = Gauge(
    "persona_catalog_items", "Items in this worker's catalog replica.", registry=REGISTRY
)
CATALOG_READY = Gauge(
    "persona_catalog_ready", "1 once the catalog replica has caught up at start.", registry=REGISTRY
)
ITEM_VECTORS = Gauge(
    "persona_item_vectors",
    "Item text vectors of the current encoder version in this worker's replica.",
    registry=REGISTRY,
)
ITEM_VECTORS_READY = Gauge(
    "persona_item_vectors_ready", "1 once the item-vector replica has caught up.", registry=REGISTRY
)
ITEMS_ENCODED = Counter(
    "persona_items_encoded",
    "Item texts this worker encoded and published (once per item, text and encoder version).",
    registry=REGISTRY,
)
ITEM_VECTOR_MISSES = Counter(
    "persona_item_vector_misses",
    "Clicks and purchases applied while their item had no vector of the current version.",
    registry=REGISTRY,
)
LIVE_HITS = Counter(
    "persona_live_hits",
    "Positive events whose item was in the last list the ranker made for that user (the prequential hit, online).",
    ["ranker", "role"],
    registry=REGISTRY,
)
LIVE_POSITIVES = Counter(
    "persona_live_positives",
    "Positive events of users the ranker had made a list for (the live hit rate's denominator).",
    ["ranker", "role"],
    registry=REGISTRY,
)
SHARED_DELTAS = Counter(
    "persona_shared_deltas",
    "Scoring deltas read from the shared topic: replicated (another worker's, applied) or known (already applied).",
    ["outcome"],
    registry=REGISTRY,
)
SHARED_CATCHUP = Gauge(
    "persona_shared_catchup_seconds",
    "Wall time of this worker's last catch-up of the shared scoring state: the snapshot read and restored, "
    "then the deltas after it.",
    registry=REGISTRY,
)
SHARED_SNAPSHOT_DELTAS = Gauge(
    "persona_shared_snapshot_deltas",
    "Scoring deltas covered by the snapshot this worker restored at start (0: none, it replayed the deltas topic).",
    registry=REGISTRY,
)
SNAPSHOT_WRITTEN = Gauge(
    "persona_shared_snapshot_timestamp_seconds",
    "When the latest shared-state snapshot was written (its manifest's Kafka time; 0: none seen), as of this worker's last check.",
    registry=REGISTRY,
)
SNAPSHOT_BEHIND = Gauge(
    "persona_shared_snapshot_behind_records",
    "Scoring-delta records after the latest snapshot's offsets (all kept records without one): what a worker "
    "starting now reads after restoring it, as of this worker's last check.",
    registry=REGISTRY,
)
SNAPSHOT_BEHIND_SINCE = Gauge(
    "persona_shared_snapshot_behind_since_timestamp_seconds",
    "Kafka time of the oldest scoring-delta record after the latest snapshot (0: none): time() minus this is "
    "how long deltas have waited for a snapshot.",
    registry=REGISTRY,
)
SNAPSHOT_FITS = Gauge(
    "persona_shared_snapshot_fits",
    "1 when the latest shared-state snapshot was taken with this worker's scoring settings (a start restores it), "
    "0 when with others (a start ignores it and replays the deltas topic, or cannot start if it was truncated); "
    "NaN when unknown (no snapshot yet). As of this worker's last check.",
    registry=REGISTRY,
)
SNAPSHOT_FITS.set(math.nan)
SHARED_ITEMS = Gauge(
    "persona_shared_items", "Items with popularity in this worker's shared scoring state.", registry=REGISTRY
)
USERS_ERASED = Gauge(
    "persona_users_erased", "Users on this worker's erasure suppression list (every worker's erasures).", registry=REGISTRY
)
ERASED_COPIES_PURGED = Counter(
    "persona_erased_copies_purged",
    "Stale copies of erased profiles deleted from RocksDB partitions this worker held before and does not own now.",
    registry=REGISTRY,
)
FOLLOW_EDGES = Gauge(
    "persona_follow_edges", "Follow edges on now in this worker's shared social graph (every worker's follows).", registry=REGISTRY
)
LAST_EMIT = Gauge(
    "persona_last_emit_timestamp_seconds",
    "Unix time of this worker's last emitted recommendation message (0: none since start).",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "persona_consumer_lag",
    "Records between a partition's high watermark and the group's committed offset (the log start "
    "where the group has committed none), per partition this worker owns (sampled every few seconds; "
    "series of revoked partitions removed).",
    ["topic", "partition"],
    registry=REGISTRY,
)
REBALANCES = Counter(
    "persona_rebalances", "Partition assignments this worker received (each rebalance it took part in).", registry=REGISTRY
)
RESTORE_RECORDS = Counter(
    "persona_state_restore_records",
    "Changelog records applied to the local RocksDB tables while restoring state.",
    registry=REGISTRY,
)
RESTORE_SECONDS = Histogram(
    "persona_state_restore_seconds",
    "Duration of one table recovery after a rebalance (Faust's recovery start to its end).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
    registry=REGISTRY,
)
STATE_BYTES = Gauge(
    "persona_state_bytes",
    "Bytes on disk of this worker's local state, by store (the RocksDB profile table).",
    ["store"],
    registry=REGISTRY,
)
PROFILES = Gauge(
    "persona_profiles",
    "Profiles in this worker's RocksDB table for the partitions it owns (RocksDB's key estimate).",
    registry=REGISTRY,
)
ROCKSDB_MEMORY_BYTES = Gauge(
    "persona_rocksdb_memory_bytes",
    "Memory RocksDB reports for this worker's profile partitions, by part: memtables (bounded by "
    "PERSONA_ROCKSDB_WRITE_BUFFER_BYTES x 2 per partition), block_cache (by PERSONA_ROCKSDB_BLOCK_CACHE_BYTES "
    "per partition) and table_readers (index and filter blocks of the SST files: grows with the data).",
    ["part"],
    registry=REGISTRY,
)
PROFILE_CACHE_BYTES = Gauge(
    "persona_profile_cache_bytes",
    "Estimated memory of the decoded profiles the worker caches (bounded by PERSONA_PROFILE_CACHE_BYTES).",
    registry=REGISTRY,
)
LIVE_QUALITY_BYTES = Gauge(
    "persona_live_quality_bytes",
    "Estimated memory of the last lists kept for the live hit rate (bounded by PERSONA_LIVE_QUALITY_BYTES).",
    registry=REGISTRY,
)
SOCIAL_QUIET_BYTES = Gauge(
    "persona_social_quiet_bytes",
    "Estimated memory of the recent items of users nobody follows (bounded by PERSONA_SOCIAL_QUIET_BYTES).",
    registry=REGISTRY,
)
