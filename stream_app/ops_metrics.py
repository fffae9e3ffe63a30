"""Operational gauges the per-event path does not produce: consumer lag per partition, local
state size, table recovery (records and seconds). Sampled by a worker timer or hooked into
Faust's recovery; nothing here runs per event.

Faust keeps what these need in private attributes (the consumer's committed offsets, the
recovery's start and end times); each read is guarded, so a Faust upgrade that renames one
leaves a gauge unset instead of crashing the worker.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stream_app import metrics
from stream_app.settings import Settings

log = logging.getLogger("persona.worker")


def partition_lags(assignment: Iterable[Any], highwater: Any, committed: Mapping[Any, int | None]) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> records not yet committed`` for the assigned partitions whose
    high watermark and committed offset are both known (Kafka's sense: the committed offset is
    the next record to read, the high watermark the next one to be written)."""
    out: dict[tuple[str, int], int] = {}
    for tp in assignment:
        try:
            end = highwater(tp)
        except Exception:  # not fetched yet (aiokafka raises or returns None until the first fetch)
            continue
        done = committed.get(tp)
        if end is None or done is None:
            continue
        out[(tp.topic, tp.partition)] = max(0, int(end) - int(done))
    return out


class LagGauge:
    """``persona_consumer_lag`` per owned partition; series of partitions no longer owned are
    removed, so a rebalance does not leave a stale lag behind."""

    def __init__(self) -> None:
        self._shown: set[tuple[str, int]] = set()

    def update(self, lags: Mapping[tuple[str, int], int]) -> None:
        for topic, partition in self._shown - set(lags):
            try:
                metrics.CONSUMER_LAG.remove(topic, str(partition))
            except KeyError:
                pass
        for (topic, partition), lag in lags.items():
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        self._shown = set(lags)

    def sample(self, consumer: Any) -> None:
        self.update(partition_lags(consumer.assignment(), consumer.highwater, getattr(consumer, "_committed_offset", {})))


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist): RocksDB's SST, log and
    manifest files, as the disk sees them."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # a compaction removed it between the listing and the stat
                continue
    return total


#: ``persona_rocksdb_memory_bytes{part}`` -> the RocksDB property it sums over the partitions.
#: Table readers (index and filter blocks held outside the block cache, RocksDB's default) are
#: the part no setting bounds: it grows with the data on disk.
ROCKSDB_MEMORY_PROPERTIES: dict[str, str] = {
    "memtables": "rocksdb.cur-size-all-mem-tables",
    "block_cache": "rocksdb.block-cache-usage",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}


def rocksdb_properties(dbs: Iterable[Any], properties: Mapping[str, str]) -> dict[str, int]:
    """``name -> sum of the integer property over dbs``; a db closed during a rebalance (or a
    property it does not report) counts as 0 instead of failing the sample."""
    out = dict.fromkeys(properties, 0)
    for db in dbs:
        for name, prop in properties.items():
            try:
                out[name] += int(db.property_int_value(prop) or 0)
            except Exception:  # closed during a rebalance
                continue
    return out


def sample_state(state_dir: Path, table: Any) -> None:
    """``persona_state_bytes{store="profiles"}``, ``persona_profiles`` (RocksDB's key estimate
    over the partitions this worker opened) and ``persona_rocksdb_memory_bytes{part}``.

    Each partition has its own block cache (Faust opens one per partition with the table's
    options), so summing ``block-cache-usage`` over the partitions counts no cache twice."""
    metrics.STATE_BYTES.labels("profiles").set(directory_bytes(state_dir))
    dbs = list(getattr(table.data, "_dbs", {}).values())
    props = rocksdb_properties(dbs, {"keys": "rocksdb.estimate-num-keys", **ROCKSDB_MEMORY_PROPERTIES})
    metrics.PROFILES.set(props.pop("keys"))
    for part, value in props.items():
        metrics.ROCKSDB_MEMORY_BYTES.labels(part).set(value)


def instrument_restore(app: Any, table: Any) -> None:
    """Count the changelog records Faust's recovery applies to ``table``, and observe each
    recovery's duration when it completes."""
    apply = table.apply_changelog_batch

    def counted(batch: Any) -> None:
        if not isinstance(batch, list):
            batch = list(batch)
        if batch:
            metrics.RESTORE_RECORDS.inc(len(batch))
        apply(batch)

    table.apply_changelog_batch = counted

    async def completed() -> None:
        recovery = getattr(app.tables, "recovery", None)
        started = getattr(recovery, "_recovery_started_at", None)
        ended = getattr(recovery, "_recovery_ended_at", None)
        if started is not None and ended is not None and ended >= started:
            metrics.RESTORE_SECONDS.observe(ended - started)
            log.info("state restore took %.3f s", ended - started)

    table.on_recover(completed)


def sample_snapshot_coverage(settings: Settings) -> None:
    """``persona_shared_snapshot_*``: how far the latest shared-state snapshot lags the deltas
    topic (a few small reads from the broker: run it in a thread)."""
    from stream_app.snapshot_lag import coverage

    found = coverage(settings)
    metrics.SNAPSHOT_WRITTEN.set(found.written_at or 0.0)
    metrics.SNAPSHOT_BEHIND.set(found.behind)
    metrics.SNAPSHOT_BEHIND_SINCE.set(found.oldest_behind_at or 0.0)
    fits = math.nan if found.differs is None else float(not found.differs)
    was = metrics.SNAPSHOT_FITS._value.get()
    metrics.SNAPSHOT_FITS.set(fits)
    if found.differs and was != 0.0 and found.manifest is not None:  # said once per change, not every check
        log.warning(
            "the latest shared-state snapshot %s was taken with other scoring settings (%s): this worker would "
            "ignore it at its next start", found.manifest.id, ", ".join(found.differs),
        )
