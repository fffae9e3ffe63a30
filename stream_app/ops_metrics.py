"""Operational gauges the per-event path does not produce: consumer lag per partition, local
state size, table recovery (records and seconds). Sampled by a worker timer or hooked into
Faust's recovery; nothing here runs per event.

Faust keeps what these need in private attributes (the consumer's committed offsets, the
recovery's start and end times); each read is guarded, so a Faust upgrade that renames one
leaves a gauge unset instead of crashing the worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from stream_app import metrics
from stream_app.settings import Settings

log = logging.getLogger("persona.worker")


#: ``(topic, partition) -> (the group's committed offset or None, log start, end)``, from the broker
BrokerView = Mapping[tuple[str, int], tuple[int | None, int, int]]
Positions = Callable[[list[tuple[str, int]]], BrokerView]


def _end(highwater: Callable[[Any], int | None], tp: Any) -> int | None:
    try:
        end = highwater(tp)
    except Exception:  # not fetched yet (aiokafka raises or returns None until the first fetch)
        return None
    return None if end is None else int(end)


def unknown_partitions(
    assignment: Iterable[Any], highwater: Callable[[Any], int | None], committed: Mapping[Any, int | None]
) -> list[tuple[str, int]]:
    """The assigned partitions whose high watermark or committed offset the consumer does not
    know: Faust knows a committed offset only once this worker committed there, or found one
    at its assignment (and it reads a committed 0 as none)."""
    return [
        (tp.topic, tp.partition)
        for tp in assignment
        if _end(highwater, tp) is None or committed.get(tp) is None
    ]


def partition_lags(
    assignment: Iterable[Any],
    highwater: Callable[[Any], int | None],
    committed: Mapping[Any, int | None],
    broker: BrokerView | None = None,
) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> records not yet committed`` for the assigned partitions (Kafka's
    sense: the committed offset is the next record to read, the high watermark the next one to
    be written). What the consumer does not know comes from ``broker``: the group's committed
    offset, or the log start when the group has committed nothing there (every record kept is
    then uncommitted). A partition known to neither is left out."""
    out: dict[tuple[str, int], int] = {}
    broker = broker or {}
    for tp in assignment:
        key = (tp.topic, tp.partition)
        seen = broker.get(key)
        end = _end(highwater, tp)
        done = committed.get(tp)
        if end is None and seen is not None:
            end = seen[2]
        if done is None and seen is not None:
            done = seen[1] if seen[0] is None else seen[0]
        if end is None or done is None:
            continue
        out[key] = max(0, int(end) - int(done))
    return out


class LagGauge:
    """``persona_consumer_lag`` per owned partition; series of partitions no longer owned are
    removed, so a rebalance does not leave a stale lag behind.

    The bug it pins (test_regression_an_owned_partition_the_worker_had_not_committed_had_no_lag):
    the consumer's own view was the only source, and it knows a committed offset only once the
    worker committed there, so an owned partition had no series until then: a worker stuck on
    a partition from its assignment on was invisible to the lag alert, and the set of partitions
    a worker owns read from the gauge could lack one (the likely cause of a chaos test's
    intermittent failure)."""

    def __init__(self, positions: Positions | None = None) -> None:
        self._shown: set[tuple[str, int]] = set()
        self._positions = positions

    def update(self, lags: Mapping[tuple[str, int], int]) -> None:
        for topic, partition in self._shown - set(lags):
            try:
                metrics.CONSUMER_LAG.remove(topic, str(partition))
            except KeyError:
                pass
        for (topic, partition), lag in lags.items():
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        self._shown = set(lags)

    async def sample(self, consumer: Any, exclude: Collection[str] = ()) -> None:
        """From the consumer's own view (no broker round trip) where it has one; the partitions
        it has none of yet are asked of the broker, in a thread (a broker that does not answer
        leaves them out of this sample). ``exclude``: topics assigned but not consumed by the
        group (table changelogs: the worker writes them and reads them back on recovery,
        without committing)."""

        def assigned() -> list[Any]:
            return [tp for tp in consumer.assignment() if tp.topic not in exclude]

        committed = getattr(consumer, "_committed_offset", {})
        missing = unknown_partitions(assigned(), consumer.highwater, committed)
        broker: BrokerView = {}
        if missing and self._positions is not None:
            try:
                broker = await asyncio.to_thread(self._positions, missing)
            except Exception as exc:
                log.warning("consumer lag: the broker did not give the positions of %d partitions: %s", len(missing), exc)
        # The assignment may have changed during the broker call: the gauge shows the one now.
        self.update(partition_lags(assigned(), consumer.highwater, committed, broker))


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
