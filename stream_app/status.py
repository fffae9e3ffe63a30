"""``persona status``: what an operator asks first, read from Kafka and the registries only
(no worker needs to answer): the group's lag per input topic, when the last recommendation
was emitted, which model versions are published, dead letters in the last hour, how far
the latest shared-state snapshot lags the deltas topic, and the group's members."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from encoders.registry import Registry
from state.errors import BrokerError
from state.events import EVENT_KINDS
from stream_app.dlq_ops import recent_counts
from stream_app.kafka_clients import preflight, watermarks
from stream_app.membership import describe
from stream_app.settings import Settings
from stream_app.snapshot_lag import coverage


@dataclass(frozen=True, slots=True)
class TopicLag:
    topic: str
    #: records on the topic (sum of end offsets minus start offsets)
    records: int
    #: records the group has not committed yet (partitions without a commit count whole)
    lag: int
    committed_partitions: int
    partitions: int


@dataclass(frozen=True, slots=True)
class Status:
    group: str
    lags: list[TopicLag]
    #: unix time (s) of the newest record on the recommendations topic; None: none
    last_emit: float | None
    recommendations: int
    models: dict[str, str | None]
    dead_letters_last_hour: dict[str, int]
    checked_at: float
    notes: list[str] = field(default_factory=list)
    #: the latest shared-state snapshot (``snapshot_lag.coverage``): id, written_at, deltas,
    #: behind_records, oldest_behind_at, differs; None when it could not be read
    shared_snapshot: dict[str, Any] | None = None
    #: the group as its coordinator sees it (``membership.describe``): state and members, a static
    #: member stopped for good included until its session ends; None when it could not be read
    group_members: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _consumer(settings: Settings) -> Consumer:
    # The group's committed offsets are read with the group's id; this consumer never
    # subscribes, so it never joins the group nor moves a partition.
    return Consumer(settings.kafka_config() | {"group.id": settings.app_id, "enable.auto.commit": False})


def _committed(consumer: Consumer, tps: list[TopicPartition], timeout_s: float = 20.0) -> list[TopicPartition]:
    """The group's committed offsets. A broker that just started answers NOT_COORDINATOR (or
    "load in progress") until it has loaded the offsets topic: retried, then a clear error."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return list(consumer.committed(tps, timeout=10))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = isinstance(err, KafkaError) and err.code() in (
                KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
            )
            if not retriable or time.monotonic() > deadline:
                raise BrokerError(f"cannot read the group's committed offsets: {err or exc}") from exc
            time.sleep(0.5)


def group_lags(settings: Settings, topics: list[str]) -> list[TopicLag]:
    consumer = _consumer(settings)
    out: list[TopicLag] = []
    try:
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10)
            if topic not in meta.topics or meta.topics[topic].error is not None:
                continue
            tps = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
            records = lag = committed_n = 0
            for tp in _committed(consumer, tps):
                low, high = watermarks(consumer, tp, 10)
                records += high - low
                if tp.offset >= 0:
                    committed_n += 1
                    lag += max(0, high - max(tp.offset, low))
                else:
                    lag += high - low
            out.append(TopicLag(topic, records, lag, committed_n, len(tps)))
    finally:
        consumer.close()
    return out


def last_record_time(settings: Settings, topic: str) -> tuple[float | None, int]:
    """Unix time of the newest record of ``topic`` (the last of each partition, the latest of
    those) and the topic's record count."""
    consumer = Consumer(settings.kafka_config() | {"group.id": f"persona-status-{time.time_ns()}", "enable.auto.commit": False})
    newest: float | None = None
    total = 0
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return None, 0
        for p in sorted(meta.topics[topic].partitions):
            low, high = watermarks(consumer, TopicPartition(topic, p), 10)
            total += high - low
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, high - 1)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                ts_type, ts = msg.timestamp()
                if ts_type:
                    newest = max(newest or 0.0, ts / 1000)
                break
            consumer.unassign()
    finally:
        consumer.close()
    return newest, total


def published_models(settings: Settings) -> dict[str, str | None]:
    """The CURRENT version of each registry (None: nothing published; the worker then serves
    no encoder, or the hand-set ranker weights)."""
    out: dict[str, str | None] = {}
    for name, root in (("encoder", settings.model_registry), ("ranker", settings.ranker_registry)):
        current = Registry(root).current()
        out[name] = current.name if current is not None else None
    return out


def status(settings: Settings, *, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    admin = preflight(settings)
    inputs = [settings.topic(kind) for kind in EVENT_KINDS] + [settings.encoded_reviews_topic]
    last, count = last_record_time(settings, settings.recommendations_topic)
    notes: list[str] = []
    snapshot: dict[str, Any] | None = None
    try:
        found = coverage(settings)
        m = found.manifest
        snapshot = {
            "id": m.id if m else None, "written_at": found.written_at, "deltas": m.deltas if m else 0,
            "behind_records": found.behind, "oldest_behind_at": found.oldest_behind_at, "differs": found.differs,
        }
    except (BrokerError, KafkaException) as exc:
        notes.append(f"the shared-state snapshot could not be read: {exc}")
    members: dict[str, Any] | None = None
    try:
        view = describe(settings, admin=admin)
        members = {"state": view.state, "members": [asdict(m) for m in view.members]}
    except BrokerError as exc:
        notes.append(f"the group's members could not be read: {exc}")
    return Status(
        group=settings.app_id,
        lags=group_lags(settings, inputs),
        last_emit=last,
        recommendations=count,
        models=published_models(settings),
        dead_letters_last_hour=recent_counts(settings, since_ms=int((now - 3600) * 1000)),
        checked_at=now,
        notes=notes,
        shared_snapshot=snapshot,
        group_members=members,
    )
