"""How far the latest shared-state snapshot lags the deltas topic (``persona_shared_snapshot_*``,
``persona shared show``, ``persona status``): a few small reads, never a snapshot's chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from scoring.shared import config_differences
from stream_app.kafka_clients import watermarks
from stream_app.settings import Settings
from stream_app.snapshots import CHUNKS, MANIFESTS, Manifest, manifests, new_state, partitions, read, reader


@dataclass(frozen=True)
class Coverage:
    """How far the latest snapshot lags the deltas topic: what a worker starting now reads after
    restoring it. Workers sample it for Prometheus (``persona_shared_snapshot_*``): a snapshot
    job that stopped shows as deltas piling up behind an ever older first record."""

    #: the latest snapshot (None: none yet)
    manifest: Manifest | None
    #: when the job wrote it (the manifest record's Kafka time, s)
    written_at: float | None
    #: delta records kept after its offsets (without a snapshot: all kept records)
    behind: int
    #: the Kafka time (s) of the oldest of those records; None when there is none
    oldest_behind_at: float | None
    #: how the snapshot's scoring settings differ from these settings' (empty: a worker with
    #: them restores it); None when unknown (no snapshot, or a manifest without them)
    differs: list[str] | None = None
    #: delta records the topic keeps in all (after ``--truncate``: from the deleted range on)
    kept: int = 0


def coverage(settings: Settings, *, timeout_s: float = 30.0) -> Coverage:
    """The latest manifest (not its chunks), the deltas topic's offsets, and the first record
    after the manifest's offsets on each partition that has one."""
    consumer = reader(settings, lean=True)
    deadline = time.monotonic() + timeout_s
    try:
        latest, written = None, None
        topic = settings.scoring_snapshots_topic
        if {MANIFESTS, CHUNKS} <= set(partitions(consumer, topic)):
            latest, _, written = manifests(consumer, topic, deadline)
        return _behind(settings, consumer, latest, written, deadline)
    finally:
        consumer.close()


def coverage_of(settings: Settings, manifest: Manifest | None, written_at: float | None, *, timeout_s: float = 30.0) -> Coverage:
    """:func:`coverage` for a manifest already read (``snapshots.read_latest``; None: there is
    no snapshot), without reading the manifests again."""
    consumer = reader(settings, lean=True)
    try:
        return _behind(settings, consumer, manifest, written_at, time.monotonic() + timeout_s)
    finally:
        consumer.close()


def _behind(settings: Settings, consumer: Consumer, latest: Manifest | None, written: float | None, deadline: float) -> Coverage:
    topic = settings.scoring_deltas_topic
    positions = latest.positions if latest is not None else {}
    behind, kept, oldest = 0, 0, None
    for p in partitions(consumer, topic):
        low, high = watermarks(consumer, TopicPartition(topic, p), 10)
        kept += high - low
        start = max(low, positions.get(p, 0))
        if start >= high:
            continue
        behind += high - start
        first: list[float] = []

        def keep(key: bytes, value: bytes | None, timestamp: float, first: list[float] = first) -> bool:
            first.append(timestamp)
            return False

        read(consumer, topic, p, start, start + 1, deadline, keep)
        if first and (oldest is None or first[0] < oldest):
            oldest = first[0]
    differs = config_differences(latest.config, new_state(settings).config) if latest is not None and latest.config else None
    return Coverage(manifest=latest, written_at=written, behind=behind, oldest_behind_at=oldest, differs=differs, kept=kept)
