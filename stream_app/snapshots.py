"""Snapshots of the global scoring state, so that a worker's start-up does not replay all history.

Every worker rebuilds :class:`scoring.shared.SharedState` from the ``scoring.deltas`` topic
(``stream_app.shared_replica``). That topic keeps every delta, so a restart's catch-up grew with
the history. ``persona shared snapshot`` (a periodic job, like the model export) reads the
deltas from where the previous snapshot stopped to the topic's end, folds them into that
snapshot's state and stores the result on the ``scoring.snapshots`` topic with the deltas
topic's offsets it covers. A worker restores the latest snapshot and reads the deltas from
those offsets on.

Why the job and not a worker: a worker's state also holds its *own* deltas from the moment it
makes them, before the broker has them; a snapshot of that state could cover a delta that
never reached the topic. The job's state is built from the topic alone, so a snapshot covers
exactly the deltas below its offsets.

Storage: a compacted topic of two partitions. A snapshot is chunks (``chunk:{id}:{i}``, at most
:data:`CHUNK_BYTES` each, under Kafka's default 1 MiB record) on partition 1, then the
``manifest`` record on partition 0 naming them, their SHA-256, the first chunk's offset and the
deltas offsets, all in one Kafka transaction (:func:`write`): readers see a run's records
all at once or not at all, and a run fences any other run still writing. (A ``pending`` record
on partition 0 comes first: the chunks that no manifest followed, left by a failed run of a
version before transactions, are deleted by the next run.) A reader reads the
manifests (a few small records) and then only the latest snapshot's chunks, from that offset:
the older snapshots still on the topic before compaction are never read. The previous
snapshot's chunks are deleted (tombstones) only after the new manifest is written, so the
latest manifest's chunks are always there; compaction (segments rolled hourly) then keeps the
topic at about one snapshot.

``--truncate`` then deletes the deltas that the *previous* snapshot covers (Kafka's
delete-records). Not the new one's: a worker still catching up from the previous snapshot must
find its deltas there. A worker that falls behind the deleted range anyway restarts and loads
the latest snapshot (``stream_app.shared_replica``). Deleting also removes the old deltas that
name erased users; the snapshot itself holds no user of theirs (``SharedState.apply``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from msgspec.structs import replace

from scoring.shared import SNAPSHOT_FORMAT, SharedState, SnapshotError, config_differences, decode_record, new_shared_state
from state.errors import BrokerError
from stream_app.settings import Settings

log = logging.getLogger(__name__)

#: Largest chunk of a snapshot, in bytes (under Kafka's default 1 MiB ``max.message.bytes``).
CHUNK_BYTES = 512 * 1024
MANIFEST_KEY = b"manifest"
PENDING_KEY = b"pending"
_CHUNK_PREFIX = b"chunk:"
#: The snapshots topic's partitions: the manifests (small: a reader reads them all) and the chunks
#: (a reader seeks to the latest manifest's first chunk and reads only that snapshot).
MANIFESTS, CHUNKS = 0, 1


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What one snapshot is and covers (the ``manifest`` record, MessagePack)."""

    #: the first 16 hex digits of ``sha256``: the chunks' key part
    id: str
    sha256: str
    size: int
    chunks: int
    #: the deltas topic and, per partition, the first offset *not* in the snapshot
    topic: str
    positions: dict[int, int]
    #: deltas the snapshot's state applied in all
    deltas: int
    #: offset of the first chunk on the chunks partition (where a reader seeks)
    chunk_offset: int = 0
    format: int = SNAPSHOT_FORMAT
    #: the scoring settings the state was built with (``SharedState.config``): a worker checks
    #: them without reading the chunks (empty in manifests of the first version)
    config: dict[str, float] = msgspec.field(default_factory=dict)


class Pending(msgspec.Struct, frozen=True, array_like=True):
    """A snapshot being written (the ``pending`` record, before its chunks): if no manifest of
    that id follows, the run failed and the next one deletes the chunks it left."""

    id: str
    chunks: int


@dataclass(frozen=True)
class Snapshot:
    manifest: Manifest
    data: bytes


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


_manifest_encoder = msgspec.msgpack.Encoder()
_manifest_decoder = msgspec.msgpack.Decoder(Manifest)
_pending_decoder = msgspec.msgpack.Decoder(Pending)


def new_state(settings: Settings) -> SharedState:
    """An empty shared state configured exactly as the worker's (``Pipeline.from_settings``)."""
    return new_shared_state(
        popularity_half_life_days=settings.popularity_half_life_days,
        cooc_neighbours=settings.cooc_neighbours,
        social_fanout=settings.social_fanout,
        social_quiet_bytes=settings.social_quiet_bytes,
    )


def _consumer(settings: Settings, *, lean: bool = False) -> Consumer:
    """A group-less reader of the snapshots and deltas topics. ``lean``: for a few small reads
    (:func:`coverage`): fetch one record batch at a time and buffer nothing ahead."""
    conf = settings.kafka_config()
    conf.update({
        "group.id": f"persona-snapshot-{time.time_ns()}", "enable.auto.commit": False, "auto.offset.reset": "error",
        # A snapshot is written in a transaction (:func:`write`): read what was committed, up to
        # the last stable offset (an open transaction's records are neither read nor waited for).
        "isolation.level": "read_committed",
        # A snapshot is read in one go: whole chunks per fetch, not librdkafka's 1 MiB per partition.
        "max.partition.fetch.bytes": 16 * 1024 * 1024, "fetch.max.bytes": 64 * 1024 * 1024,
        # Everything read is already there: a fetch left waiting at a partition's end (500 ms by
        # default) held up the next partition's by that much (measured: 0.53 s of a 0.6 s read).
        "fetch.wait.max.ms": 10,
    })
    if lean:
        # Reading one record's time pulled 30 MB from a 30 MB deltas partition: librdkafka
        # fetches ahead until its queue holds queued.max.messages.kbytes (64 MB). A fetch
        # returns at least one whole record batch whatever these say (fetch.max.bytes may not be
        # below message.max.bytes: the one partition read at a time bounds it anyway).
        conf.update({"max.partition.fetch.bytes": 1024, "fetch.max.bytes": 1_000_000, "queued.max.messages.kbytes": 1})
    return Consumer(conf)


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        return []
    return sorted(meta.topics[topic].partitions)


def _read(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int,
    high: int,
    deadline: float,
    keep: Callable[[bytes, bytes | None, float], bool],
) -> None:
    """Feed ``keep(key, value, timestamp)`` (the record's Kafka time, in seconds) every record of
    one partition from ``start`` until it returns False or the consumer's position reaches
    ``high`` (compaction leaves holes in the offsets)."""
    tp = TopicPartition(topic, partition)
    consumer.assign([TopicPartition(topic, partition, start)])
    position = start
    while position < high:
        if time.monotonic() > deadline:
            raise BrokerError(f"reading {topic}:{partition} did not reach offset {high} in time")
        # consume() waits for num_messages or the timeout: never ask for more than can be there.
        for msg in consumer.consume(num_messages=max(1, min(100, high - position)), timeout=0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise BrokerError(f"reading {topic}:{partition}: {err}")
            position = max(position, (msg.offset() or 0) + 1)
            if not keep(msg.key() or b"", msg.value(), msg.timestamp()[1] / 1000.0):
                return
        got = consumer.position([tp])[0].offset
        if got is not None and got >= 0:
            position = max(position, got)


def _manifests(consumer: Consumer, topic: str, deadline: float) -> tuple[Manifest | None, Pending | None, float | None]:
    """The latest manifest, the latest pending record (None when there is none) and the
    manifest record's Kafka time (s; when the job wrote it)."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, MANIFESTS), timeout=10)
    latest: list[Manifest | None] = [None]
    pending: list[Pending | None] = [None]
    written: list[float | None] = [None]

    def keep(key: bytes, value: bytes | None, timestamp: float) -> bool:
        if key == MANIFEST_KEY and value is not None:
            latest[0], written[0] = _manifest_decoder.decode(value), timestamp
        elif key == PENDING_KEY and value is not None:
            pending[0] = _pending_decoder.decode(value)
        return True

    if high > low:
        _read(consumer, topic, MANIFESTS, low, high, deadline, keep)
    return latest[0], pending[0], written[0]


def orphan(settings: Settings) -> Pending | None:
    """The chunks a failed run left: its pending record, when no manifest of that id followed."""
    return _read_latest(settings, chunks=False)[1]


def read_latest(settings: Settings, *, timeout_s: float = 120.0) -> Snapshot | None:
    """The latest complete snapshot, checked against its SHA-256; None when there is none.
    Reads the manifests' partition (a few small records), then only the latest snapshot's
    chunks, from the offset its manifest gives. Raises :class:`SnapshotError` when those
    chunks are missing or corrupt (never restore a partial state)."""
    return _read_latest(settings, timeout_s=timeout_s)[0]


def _read_latest(settings: Settings, *, chunks: bool = True, timeout_s: float = 120.0) -> tuple[Snapshot | None, Pending | None]:
    """:func:`read_latest` (when ``chunks``) and :func:`orphan`, from one read of the manifests."""
    topic = settings.scoring_snapshots_topic
    consumer = _consumer(settings)
    deadline = time.monotonic() + timeout_s
    try:
        if not {MANIFESTS, CHUNKS} <= set(_partitions(consumer, topic)):
            return None, None
        found, pending, _ = _manifests(consumer, topic, deadline)
        left_over = pending if pending is not None and (found is None or found.id != pending.id) else None
        if found is None or not chunks:
            return None, left_over
        latest = found
        wanted = {_chunk_key(latest.id, i): i for i in range(latest.chunks)}
        parts: dict[int, bytes] = {}

        def chunk(key: bytes, value: bytes | None, timestamp: float) -> bool:
            i = wanted.get(key)
            if i is not None and value is not None:
                parts[i] = value
            return len(parts) < latest.chunks

        _, chunks_high = consumer.get_watermark_offsets(TopicPartition(topic, CHUNKS), timeout=10)
        _read(consumer, topic, CHUNKS, latest.chunk_offset, chunks_high, deadline, chunk)
    finally:
        consumer.close()
    if len(parts) < latest.chunks:
        raise SnapshotError(f"snapshot {latest.id} on {topic} misses {latest.chunks - len(parts)} of its {latest.chunks} chunks")
    data = b"".join(parts[i] for i in range(latest.chunks))
    if len(data) != latest.size or hashlib.sha256(data).hexdigest() != latest.sha256:
        raise SnapshotError(f"snapshot {latest.id} on {topic} does not match its SHA-256")
    return Snapshot(latest, data), left_over


def _chunk_key(snapshot_id: str, i: int) -> bytes:
    return _CHUNK_PREFIX + f"{snapshot_id}:{i:06d}".encode()


def deltas_bounds(settings: Settings) -> dict[int, tuple[int, int]]:
    """Per partition of the deltas topic, its (first kept, end) offsets."""
    topic = settings.scoring_deltas_topic
    consumer = _consumer(settings)
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in _partitions(consumer, topic)}
    finally:
        consumer.close()


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


def coverage(settings: Settings, *, timeout_s: float = 30.0) -> Coverage:
    """The latest manifest (not its chunks), the deltas topic's offsets, and the first record
    after the manifest's offsets on each partition that has one: a few small reads."""
    consumer = _consumer(settings, lean=True)
    deadline = time.monotonic() + timeout_s
    try:
        latest, written = None, None
        snapshots_topic = settings.scoring_snapshots_topic
        if {MANIFESTS, CHUNKS} <= set(_partitions(consumer, snapshots_topic)):
            latest, _, written = _manifests(consumer, snapshots_topic, deadline)
        topic = settings.scoring_deltas_topic
        positions = latest.positions if latest is not None else {}
        behind, oldest = 0, None
        for p in _partitions(consumer, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start = max(low, positions.get(p, 0))
            if start >= high:
                continue
            behind += high - start
            first: list[float] = []

            def keep(key: bytes, value: bytes | None, timestamp: float, first: list[float] = first) -> bool:
                first.append(timestamp)
                return False

            _read(consumer, topic, p, start, start + 1, deadline, keep)
            if first and (oldest is None or first[0] < oldest):
                oldest = first[0]
    finally:
        consumer.close()
    differs = config_differences(latest.config, new_state(settings).config) if latest is not None and latest.config else None
    return Coverage(manifest=latest, written_at=written, behind=behind, oldest_behind_at=oldest, differs=differs)


def truncated(bounds: Mapping[int, tuple[int, int]]) -> dict[int, int]:
    """The partitions whose oldest deltas were deleted, and from where they start now."""
    return {p: low for p, (low, _) in bounds.items() if low > 0}


def check_covers(topic: str, bounds: Mapping[int, tuple[int, int]], positions: Mapping[int, int]) -> None:
    """Raise :class:`SnapshotError` when deltas between a snapshot's offsets (0: none) and
    what the topic still holds were deleted: a state built that way would miss them."""
    gaps = {p: (positions.get(p, 0), low) for p, (low, _) in bounds.items() if low > positions.get(p, 0)}
    if gaps:
        where = ", ".join(f"partition {p}: needs offset {need}, the topic starts at {low}" for p, (need, low) in sorted(gaps.items()))
        raise SnapshotError(
            f"deltas this state needs were deleted from {topic} ({where}): it can only be built from the latest "
            "snapshot, with the scoring settings that snapshot was taken with"
        )


def beyond_end(manifest: Manifest, bounds: Mapping[int, tuple[int, int]]) -> str | None:
    """Why ``manifest`` cannot belong to the deltas topic as it is now (offsets past its end or
    partitions it lacks: the topic was deleted and created again), or None when it can."""
    wrong = {p: (off, bounds[p][1] if p in bounds else None) for p, off in manifest.positions.items()
             if p not in bounds or off > bounds[p][1]}
    if not wrong:
        return None
    return "it covers offsets the deltas topic never reached (" + ", ".join(
        f"partition {p}: {off}, the topic ends at {end}" for p, (off, end) in sorted(wrong.items())
    ) + "): the topic was created again after it"


def fold(
    settings: Settings,
    state: SharedState,
    positions: Mapping[int, int],
    *,
    bounds: Mapping[int, tuple[int, int]] | None = None,
    timeout_s: float = 600.0,
) -> tuple[dict[int, int], int]:
    """Apply the deltas topic from ``positions`` (absent: its start) to its end offsets as of
    now (or in ``bounds``, :func:`deltas_bounds` just read), to ``state``. Returns the offsets
    reached and the deltas read."""
    topic = settings.scoring_deltas_topic
    if bounds is None:
        bounds = deltas_bounds(settings)
    if not bounds:
        raise BrokerError(f"topic {topic} does not exist (start a worker, or `persona topics`, first)")
    check_covers(topic, bounds, positions)
    start = {p: max(positions.get(p, 0), low) for p, (low, _) in bounds.items()}
    end = {p: high for p, (_, high) in bounds.items()}
    todo = {p for p in bounds if start[p] < end[p]}
    reached = dict(start)
    n = 0
    if not todo:
        return end, 0
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, p, start[p]) for p in sorted(todo)])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} did not reach its end offsets {end} in {timeout_s:.0f} s")
            left = sum(end[p] - reached[p] for p in todo)
            for msg in consumer.consume(num_messages=max(1, min(1000, left)), timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise BrokerError(f"reading {topic}: {err}")
                p, off = msg.partition() or 0, msg.offset() or 0
                if off >= end[p]:
                    continue  # written after we looked: the next snapshot's
                value = msg.value()
                if value is not None:
                    try:
                        deltas = decode_record(value)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        # As the replica does: only workers write the topic; a bad record is a bug.
                        log.error("unreadable scoring delta at %s:%d@%d: %s", topic, p, off, exc)
                        deltas = []
                    for delta in deltas:
                        state.apply(delta)
                    n += len(deltas)
                reached[p] = off + 1
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset is not None and tp.offset >= 0:
                    reached[tp.partition] = max(reached[tp.partition], tp.offset)
            todo = {p for p in todo if reached[p] < end[p]}
    finally:
        consumer.close()
    return end, n


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

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            failed.append(err)
        elif msg.partition() == CHUNKS and msg.value() is not None:
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
            producer.produce(topic, key=_chunk_key(manifest.id, i), value=data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES],
                             partition=CHUNKS, on_delivery=on_delivery)
            producer.poll(0)
        flush("chunks")
        manifest = replace(manifest, chunk_offset=min(offsets))
        producer.produce(topic, key=MANIFEST_KEY, value=_manifest_encoder.encode(manifest), partition=MANIFESTS, on_delivery=on_delivery)
        # Never the chunks just written: an earlier snapshot (or failed run) of the same state has the same id.
        stale = {(p.id, p.chunks) for p in (previous, left_over) if p is not None and p.id != manifest.id}
        for snapshot_id, chunks in sorted(stale):
            for i in range(chunks):
                producer.produce(topic, key=_chunk_key(snapshot_id, i), value=None, partition=CHUNKS, on_delivery=on_delivery)
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
    return manifest


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
    latest, left_over = _read_latest(settings)
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
