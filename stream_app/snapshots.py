"""Snapshots of the global scoring state, so that a worker's start-up does not replay all history:
their storage format and how they are read. The job that writes them is
:mod:`stream_app.snapshot_job`; the check of how far they lag is :mod:`stream_app.snapshot_lag`.

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
``snapshot_job.CHUNK_BYTES`` each, under Kafka's default 1 MiB record) on partition 1, then the
``manifest`` record on partition 0 naming them, their SHA-256, the first chunk's offset and the
deltas offsets, all in one Kafka transaction (``snapshot_job.write``): readers see a run's records
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
from dataclasses import dataclass

import msgspec
from confluent_kafka import Consumer, KafkaError, TopicPartition

from scoring.shared import SNAPSHOT_FORMAT, SharedState, SnapshotError, decode_record, new_shared_state
from state.errors import BrokerError
from stream_app.kafka_clients import watermarks
from stream_app.settings import Settings

log = logging.getLogger(__name__)

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
    #: when the job wrote it (the manifest record's Kafka time, s)
    written_at: float | None = None


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


def reader(settings: Settings, *, lean: bool = False) -> Consumer:
    """A group-less reader of the snapshots and deltas topics. ``lean``: for a few small reads
    (``snapshot_lag.coverage``): fetch one record batch at a time and buffer nothing ahead."""
    conf = settings.kafka_config()
    conf.update({
        "group.id": f"persona-snapshot-{time.time_ns()}", "enable.auto.commit": False, "auto.offset.reset": "error",
        # A snapshot is written in a transaction (``snapshot_job.write``): read what was committed, up to
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


def partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        return []
    return sorted(meta.topics[topic].partitions)


def read(
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


def manifests(consumer: Consumer, topic: str, deadline: float) -> tuple[Manifest | None, Pending | None, float | None]:
    """The latest manifest, the latest pending record (None when there is none) and the
    manifest record's Kafka time (s; when the job wrote it)."""
    low, high = watermarks(consumer, TopicPartition(topic, MANIFESTS), 10)
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
        read(consumer, topic, MANIFESTS, low, high, deadline, keep)
    return latest[0], pending[0], written[0]


def orphan(settings: Settings) -> Pending | None:
    """The chunks a failed run left: its pending record, when no manifest of that id followed."""
    return read_latest_and_orphan(settings, chunks=False)[1]


def read_latest(settings: Settings, *, timeout_s: float = 120.0) -> Snapshot | None:
    """The latest complete snapshot, checked against its SHA-256; None when there is none.
    Reads the manifests' partition (a few small records), then only the latest snapshot's
    chunks, from the offset its manifest gives. Raises :class:`SnapshotError` when those
    chunks are missing or corrupt (never restore a partial state)."""
    return read_latest_and_orphan(settings, timeout_s=timeout_s)[0]


def read_latest_and_orphan(settings: Settings, *, chunks: bool = True, timeout_s: float = 120.0) -> tuple[Snapshot | None, Pending | None]:
    """:func:`read_latest` (when ``chunks``) and :func:`orphan`, from one read of the manifests."""
    topic = settings.scoring_snapshots_topic
    consumer = reader(settings)
    deadline = time.monotonic() + timeout_s
    try:
        if not {MANIFESTS, CHUNKS} <= set(partitions(consumer, topic)):
            return None, None
        found, pending, written_at = manifests(consumer, topic, deadline)
        left_over = pending if pending is not None and (found is None or found.id != pending.id) else None
        if found is None or not chunks:
            return None, left_over
        latest = found
        wanted = {chunk_key(latest.id, i): i for i in range(latest.chunks)}
        parts: dict[int, bytes] = {}

        def chunk(key: bytes, value: bytes | None, timestamp: float) -> bool:
            i = wanted.get(key)
            if i is not None and value is not None:
                parts[i] = value
            return len(parts) < latest.chunks

        _, chunks_high = watermarks(consumer, TopicPartition(topic, CHUNKS), 10)
        read(consumer, topic, CHUNKS, latest.chunk_offset, chunks_high, deadline, chunk)
    finally:
        consumer.close()
    if len(parts) < latest.chunks:
        raise SnapshotError(f"snapshot {latest.id} on {topic} misses {latest.chunks - len(parts)} of its {latest.chunks} chunks")
    data = b"".join(parts[i] for i in range(latest.chunks))
    if len(data) != latest.size or hashlib.sha256(data).hexdigest() != latest.sha256:
        raise SnapshotError(f"snapshot {latest.id} on {topic} does not match its SHA-256")
    return Snapshot(latest, data, written_at), left_over


def chunk_key(snapshot_id: str, i: int) -> bytes:
    return _CHUNK_PREFIX + f"{snapshot_id}:{i:06d}".encode()


def deltas_bounds(settings: Settings) -> dict[int, tuple[int, int]]:
    """Per partition of the deltas topic, its (first kept, end) offsets."""
    topic = settings.scoring_deltas_topic
    consumer = reader(settings)
    try:
        return {p: watermarks(consumer, TopicPartition(topic, p), 10) for p in partitions(consumer, topic)}
    finally:
        consumer.close()


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
    consumer = reader(settings)
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
