"""Operators' dead-letter tools: list a dead-letter topic, and redrive it after a fix.

**Redrive** re-publishes dead-lettered records (their original key and value) to the topic they
came from, after the cause was fixed (a decoder bug, a limit set too low). Each copy carries
the header ``persona.redrive.of`` = ``topic:partition:offset`` of the *original* record, its
identity across redrives, and the worker copies that header onto any dead letter the copy
earns again. Redrive is idempotent without any state of its own: before sending, it reads the
source topic from the oldest selected dead letter's time on and skips every record whose
identity already appears there. So a record is redriven at most once, running redrive twice
sends nothing the second time, and a copy that fails again is not redriven in a loop.

Two redrives of one topic at the same moment could both send a record (each reads before the
other writes): run one at a time (the CLI is an operator's command, not a daemon).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from state.errors import BrokerError, PersonaError
from state.events import EVENT_KINDS
from stream_app import dlq
from stream_app.kafka_clients import watermarks
from stream_app.producer import make_producer
from stream_app.settings import Settings

#: Header on a redriven copy: the original record's ``topic:partition:offset``.
REDRIVE_OF = dlq.H_REDRIVE_OF
#: Header on a redriven copy: when it was redriven (unix seconds).
REDRIVE_AT = "persona.redrive.at"


class UnknownTopic(PersonaError):
    """The topic named is neither an event kind, an input topic nor its dead-letter topic."""


@dataclass(frozen=True, slots=True)
class Letter:
    """One record of a dead-letter topic."""

    dlq_topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def source(self) -> str:
        """``topic:partition:offset`` of the record that was dead-lettered (``:index`` after it
        for one event of a batch record: each event of a batch is redriven on its own)."""
        h = self.headers
        coordinates = f"{h.get(dlq.H_TOPIC, '?')}:{h.get(dlq.H_PARTITION, '?')}:{h.get(dlq.H_OFFSET, '?')}"
        index = h.get(dlq.H_BATCH_INDEX)
        return coordinates if index is None else f"{coordinates}:{index}"

    @property
    def origin(self) -> str:
        """The identity redrive uses: the original record's coordinates, carried over redrives."""
        return self.headers.get(REDRIVE_OF) or self.source

    @property
    def reason(self) -> str:
        return self.headers.get(dlq.H_REASON, "?")

    @property
    def message(self) -> str:
        return self.headers.get(dlq.H_MESSAGE, "")


def resolve(settings: Settings, name: str) -> tuple[str, str]:
    """``(source topic, dead-letter topic)`` for an event kind (``purchase``), an input topic
    (``persona.purchase``) or a dead-letter topic (``persona.purchase.dlq``)."""
    sources = {settings.topic(kind): kind for kind in EVENT_KINDS}
    if name in EVENT_KINDS:
        source = settings.topic(name)
    elif name in sources:
        source = name
    elif name.endswith(dlq.DLQ_SUFFIX) and name[: -len(dlq.DLQ_SUFFIX)] in sources:
        source = name[: -len(dlq.DLQ_SUFFIX)]
    else:
        raise UnknownTopic(f"{name!r} is not an event kind ({', '.join(EVENT_KINDS)}), an input topic or its .dlq topic")
    return source, dlq.dlq_topic(source)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _consumer(settings: Settings) -> Consumer:
    # Group-less reads (assign, never subscribe): a throwaway id, nothing committed.
    return Consumer(settings.kafka_config() | {"group.id": f"persona-dlq-{time.time_ns()}", "enable.auto.commit": False})


def _read(settings: Settings, topic: str, since_ms: int | None, *, deadline_s: float = 120.0) -> Iterator[Message]:
    """Every record of ``topic`` at or after ``since_ms`` (record time; all without it) up to
    the end offsets seen when the read starts, partition by partition, in offset order."""
    consumer = _consumer(settings)
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return
        for partition in sorted(meta.topics[topic].partitions):
            offset = _start_offset(consumer, topic, partition, since_ms)
            if offset is None:
                continue
            end = watermarks(consumer, TopicPartition(topic, partition), 10)[1]
            consumer.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + deadline_s
            while offset < end:
                if time.monotonic() > deadline:
                    raise BrokerError(f"{topic}[{partition}]: read stopped at offset {offset} of {end}")
                for msg in consumer.consume(num_messages=1000, timeout=0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise BrokerError(f"{topic}[{partition}]: {err}")
                    offset = (msg.offset() or 0) + 1
                    yield msg
            consumer.unassign()
    finally:
        consumer.close()


def read_letters(settings: Settings, dlq_topic: str, *, since_ms: int | None = None) -> list[Letter]:
    """Every record of ``dlq_topic`` (at or after ``since_ms``, by record time), in partition and offset order."""
    return [_letter(msg) for msg in _read(settings, dlq_topic, since_ms)]


def _start_offset(consumer: Consumer, topic: str, partition: int, since_ms: int | None) -> int | None:
    """The first offset at or after ``since_ms`` (the beginning without it); None: nothing there."""
    low, high = watermarks(consumer, TopicPartition(topic, partition), 10)
    if high <= low:
        return None
    if since_ms is None:
        return int(low)
    found = consumer.offsets_for_times([TopicPartition(topic, partition, since_ms)], timeout=10)[0]
    if found.offset < 0:  # every record is older
        return None
    return max(int(found.offset), int(low))


def _headers(msg: Message) -> list[tuple[str, bytes]]:
    raw: list[Any] = list(msg.headers() or [])
    return [(str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in raw]


def _letter(msg: Message) -> Letter:
    headers = {k: _text(v) for k, v in _headers(msg)}
    ts_type, ts = msg.timestamp()
    return Letter(
        dlq_topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        timestamp_ms=int(ts) if ts_type else 0,
        key=msg.key(),
        value=msg.value(),
        headers=headers,
    )


def redriven(settings: Settings, source_topic: str, *, since_ms: int) -> set[str]:
    """Identities (``persona.redrive.of``) of the copies already on ``source_topic`` from ``since_ms`` on."""
    return {_text(v) for msg in _read(settings, source_topic, since_ms) for k, v in _headers(msg) if k == REDRIVE_OF}


@dataclass(frozen=True, slots=True)
class RedriveReport:
    source_topic: str
    dlq_topic: str
    #: dead letters selected (by time and reason)
    selected: int
    #: of those, already redriven earlier (their identity is on the source topic)
    already: int
    #: sent now
    sent: int
    #: duplicates within the selection (a copy that failed again has the same identity)
    repeated: int
    dry_run: bool
    #: letters whose key or value was cut to fit (dlq.bounded): not sent, the original is on the
    #: source topic at the letter's coordinates
    truncated: int = 0


def redrive(
    settings: Settings,
    name: str,
    *,
    since_ms: int | None = None,
    reasons: Iterable[str] | None = None,
    dry_run: bool = False,
) -> RedriveReport:
    """Re-publish the dead letters of ``name`` (module docstring); each original record at most once."""
    source, dlq_topic = resolve(settings, name)
    wanted = set(reasons) if reasons else None
    letters = [x for x in read_letters(settings, dlq_topic, since_ms=since_ms) if wanted is None or x.reason in wanted]
    if not letters:
        return RedriveReport(source, dlq_topic, 0, 0, 0, 0, dry_run)
    # A copy is written after its dead letter, so the oldest selected letter bounds the scan.
    done = redriven(settings, source, since_ms=min(x.timestamp_ms for x in letters))
    todo: list[Letter] = []
    chosen: set[str] = set()
    repeated = 0
    truncated = 0
    for letter in letters:
        if dlq.H_KEY_BYTES in letter.headers or dlq.H_VALUE_BYTES in letter.headers:
            truncated += 1  # a cut copy would only fail again; the original is on the source topic
            continue
        if letter.origin in done:
            continue
        if letter.origin in chosen:
            repeated += 1
            continue
        chosen.add(letter.origin)
        todo.append(letter)
    already = len(letters) - len(todo) - repeated - truncated
    if dry_run or not todo:
        return RedriveReport(source, dlq_topic, len(letters), already, 0, repeated, dry_run, truncated)
    producer = make_producer(settings)
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    now = str(time.time()).encode()
    for letter in todo:
        headers: list[tuple[str, Any]] = [(REDRIVE_OF, letter.origin.encode()), (REDRIVE_AT, now)]
        while True:
            try:
                producer.produce(source, key=letter.key, value=letter.value, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        raise BrokerError(f"redrive of {dlq_topic}: {remaining} records undelivered; {failures[:1]}")
    return RedriveReport(source, dlq_topic, len(letters), already, len(todo), repeated, dry_run, truncated)


def recent_counts(settings: Settings, *, since_ms: int) -> dict[str, int]:
    """Dead letters per dead-letter topic written at or after ``since_ms`` (offsets, no read)."""
    out: dict[str, int] = {}
    consumer = _consumer(settings)
    try:
        for kind in EVENT_KINDS:
            topic = dlq.dlq_topic(settings.topic(kind))
            meta = consumer.list_topics(topic, timeout=10)
            if topic not in meta.topics or meta.topics[topic].error is not None:
                continue
            n = 0
            for partition in meta.topics[topic].partitions:
                start = _start_offset(consumer, topic, partition, since_ms)
                if start is not None:
                    n += watermarks(consumer, TopicPartition(topic, partition), 10)[1] - start
            out[topic] = n
    finally:
        consumer.close()
    return out


