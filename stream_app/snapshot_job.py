"""The snapshot job (``persona shared snapshot``): fold the deltas since the latest snapshot into
its state and write the result in one Kafka transaction; ``--truncate`` then deletes the deltas
the previous snapshot covers. Storage format and reading: :mod:`stream_app.snapshots`."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from msgspec.structs import replace

from scoring.shared import SnapshotError
from state.errors import BrokerError
from stream_app.settings import Settings
from stream_app.snapshots import (
    CHUNKS,
    MANIFEST_KEY,
    MANIFESTS,
    PENDING_KEY,
    Manifest,
    Pending,
    beyond_end,
    chunk_key,
    deltas_bounds,
    fold,
    new_state,
    read_latest_and_orphan,
    reader,
)

log = logging.getLogger(__name__)

#: Largest chunk of a snapshot, in bytes (under Kafka's default 1 MiB ``max.message.bytes``).
CHUNK_BYTES = 512 * 1024

_manifest_encoder = msgspec.msgpack.Encoder()


@dataclass
class Report:
    """What :func:`take` did."""

    manifest: Manifest | None
    #: deltas read from the topic this time
    read: int = 0
    #: whether a new snapshot was written (False: nothing new since the latest)
    written: bool = False
    #: the previous snapshot this one was built on (None: built from the topic's start)
    base: Manifest | None = None
    #: per deltas partition, the offset below which records are now deleted (``--truncate``)
    truncated: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def writer(settings: Settings) -> Producer:
    """The job's transactional producer, its id initialised: from here on any other run that
    was writing is fenced (its open transaction aborted, its later writes refused)."""
    conf = settings.kafka_config()
    conf.update({
        "acks": "all", "enable.idempotence": True, "compression.type": "lz4", "linger.ms": 5,
        "transactional.id": settings.snapshot_transactional_id,
        # Only the write is in the transaction (a large snapshot: tens of seconds); a run killed
        # with one open is aborted by the next run's init or after this long. Readers are never
        # held by it: a read_committed reader's end offset is the last stable one.
        "transaction.timeout.ms": 600_000,
    })
    producer = Producer(conf)
    try:
        producer.init_transactions(60)
    except KafkaException as exc:
        raise BrokerError(f"starting the snapshot job's transaction ({settings.snapshot_transactional_id}): {exc}") from exc
    return producer


def write(
    settings: Settings,
    data: bytes,
    manifest: Manifest,
    previous: Manifest | None,
    left_over: Pending | None = None,
    *,
    producer: Producer | None = None,
) -> Manifest:
    """In one transaction: the pending record, the chunks, the manifest (with the first chunk's
    offset), then tombstones for ``previous``'s chunks and those a failed run of an earlier
    version left (``left_over``). Returns the manifest as written.

    Why a transaction: two runs at once (a run by hand while the cron job runs) each delete
    the chunks the other's pending record names; the later manifest could then name deleted
    chunks, and no worker could restore it. With one transactional id, the run that started
    last fences the other (its writes are refused and its transaction aborted), and readers
    (``read_committed``) see a run's records all at once or never: a run that fails half-way
    leaves nothing they read."""
    topic = settings.scoring_snapshots_topic
    if producer is None:
        producer = writer(settings)
    failed: list[KafkaError] = []
    offsets: list[int] = []
    last: dict[int, int] = {}  # partition -> the offset of this run's last record there

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            failed.append(err)
            return
        last[msg.partition()] = max(last.get(msg.partition(), -1), msg.offset())
        if msg.partition() == CHUNKS and msg.value() is not None:
            offsets.append(msg.offset())

    def flush(step: str) -> None:
        left = producer.flush(60)
        if left or failed:
            raise BrokerError(f"writing snapshot {manifest.id} to {topic} ({step}): {failed[:1] or f'{left} records not delivered'}")

    try:
        producer.begin_transaction()
        pending = Pending(id=manifest.id, chunks=manifest.chunks)
        producer.produce(topic, key=PENDING_KEY, value=msgspec.msgpack.encode(pending), partition=MANIFESTS, on_delivery=on_delivery)
        for i in range(manifest.chunks):
            producer.produce(topic, key=chunk_key(manifest.id, i), value=data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES],
                             partition=CHUNKS, on_delivery=on_delivery)
            producer.poll(0)
        flush("chunks")
        manifest = replace(manifest, chunk_offset=min(offsets))
        producer.produce(topic, key=MANIFEST_KEY, value=_manifest_encoder.encode(manifest), partition=MANIFESTS, on_delivery=on_delivery)
        # Never the chunks just written: an earlier snapshot (or failed run) of the same state has the same id.
        stale = {(p.id, p.chunks) for p in (previous, left_over) if p is not None and p.id != manifest.id}
        for snapshot_id, chunks in sorted(stale):
            for i in range(chunks):
                producer.produce(topic, key=chunk_key(snapshot_id, i), value=None, partition=CHUNKS, on_delivery=on_delivery)
        flush("manifest")
        producer.commit_transaction(60)
    except BaseException as exc:
        _abort(producer)
        errors: list[Any] = list(failed)
        if isinstance(exc, KafkaException) and exc.args:
            errors.append(exc.args[0])
        if any(isinstance(e, KafkaError) and e.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED) for e in errors):
            raise BrokerError(
                f"snapshot {manifest.id} was not written: another `persona shared snapshot` run started since "
                f"and fenced this one (transactional id {settings.snapshot_transactional_id}); its snapshot stands"
            ) from exc
        if isinstance(exc, KafkaException):
            raise BrokerError(f"writing snapshot {manifest.id} to {topic}: {exc}") from exc
        raise
    await_visible(settings, last, what=f"snapshot {manifest.id}")
    return manifest


def await_visible(settings: Settings, offsets: Mapping[int, int], *, what: str, timeout_s: float = 30.0) -> None:
    """Return once a ``read_committed`` reader's end of each snapshots partition in ``offsets``
    (partition -> the offset of a record just committed there) is past that offset.

    Why: the broker answers a transaction's commit once the commit is decided, then writes the
    commit markers to the partitions, each in its own time; until a partition has its marker,
    its last stable offset stays before the transaction, and readers do not see those records.
    Without this wait, a reader right after a run (a starting worker, the next run, a test)
    could find the previous manifest, or the new manifest without its chunks
    (``test_regression_a_snapshot_was_not_readable_right_after_its_run``)."""
    consumer = reader(settings)
    deadline = time.monotonic() + timeout_s
    topic = settings.scoring_snapshots_topic
    waiting = dict(offsets)
    try:
        while waiting:
            for partition, offset in list(waiting.items()):
                _, stable = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if stable > offset:
                    del waiting[partition]
                elif time.monotonic() > deadline:
                    raise BrokerError(
                        f"{what} was committed but readers did not see it within {timeout_s:.0f} s "
                        f"(the last stable offset of {topic}:{partition} is {stable}, the record is at {offset}): the broker "
                        "has not written the commit marker yet, or another producer's transaction on that partition is open"
                    )
            if waiting:
                time.sleep(0.02)
    finally:
        consumer.close()


def _abort(producer: Producer) -> None:
    """Abort the open transaction, when the producer still can (a fenced one cannot: the run
    that fenced it aborted it already)."""
    try:
        producer.abort_transaction(30)
    except KafkaException as exc:
        log.debug("aborting the snapshot transaction: %s", exc)


def delete_before(settings: Settings, positions: Mapping[int, int]) -> dict[int, int]:
    """Delete the deltas below ``positions`` (Kafka delete-records); the new start per partition."""
    from confluent_kafka.admin import AdminClient

    topic = settings.scoring_deltas_topic
    wanted = [TopicPartition(topic, p, off) for p, off in sorted(positions.items()) if off > 0]
    if not wanted:
        return {}
    admin = AdminClient(settings.kafka_config())
    out: dict[int, int] = {}
    try:
        for tp, fut in admin.delete_records(wanted, request_timeout=30).items():
            out[tp.partition] = fut.result().low_watermark
    except KafkaException as exc:
        raise BrokerError(f"deleting the covered deltas of {topic}: {exc}") from exc
    return out


def take(settings: Settings, *, truncate: bool = False) -> Report:
    """One snapshot: the latest one (if it fits these settings) plus the deltas since (module docstring)."""
    from stream_app.topics import ensure_topics

    t0 = time.monotonic()
    ensure_topics(settings)
    # Fence first, then read: a run still writing is stopped before this one reads what it builds on.
    producer = writer(settings)
    latest, left_over = read_latest_and_orphan(settings)
    bounds = deltas_bounds(settings)
    state = new_state(settings)
    base: Manifest | None = None  # the snapshot this one builds on
    stale = beyond_end(latest.manifest, bounds) if latest is not None else None
    if stale is not None and latest is not None:
        log.warning("snapshot %s not used: %s; rebuilding from the deltas topic", latest.manifest.id, stale)
    elif latest is not None:
        try:
            state.restore(latest.data)
            base = latest.manifest
        except SnapshotError as exc:
            # Settings changed: rebuild from the topic's start, which fold refuses if deltas were deleted.
            log.warning("snapshot %s does not fit these settings (%s): rebuilding from the deltas topic", latest.manifest.id, exc)
            state = new_state(settings)
    reached, read = fold(settings, state, base.positions if base is not None else {}, bounds=bounds)
    report = Report(manifest=latest.manifest if latest is not None else None, read=read, base=base)
    if (base is not None and reached == base.positions) or (base is None and read == 0):
        report.seconds = time.monotonic() - t0
        return report  # nothing new: the latest snapshot (if any) is this one
    data = state.snapshot()
    digest = hashlib.sha256(data).hexdigest()
    manifest = Manifest(
        id=digest[:16], sha256=digest, size=len(data), chunks=max(1, -(-len(data) // CHUNK_BYTES)),
        topic=settings.scoring_deltas_topic, positions=reached, deltas=state.applied, config=dict(state.config),
    )
    manifest = write(settings, data, manifest, latest.manifest if latest is not None else None, left_over, producer=producer)
    report.manifest, report.written = manifest, True
    if truncate and base is not None:
        report.truncated = delete_before(settings, base.positions)
    report.seconds = time.monotonic() - t0
    return report
