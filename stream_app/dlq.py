"""Dead-letter records: the original key and value, and headers that say where and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from state.events import DeadLetter

#: Header names on every dead-letter record.
H_TOPIC = "persona.source.topic"
H_PARTITION = "persona.source.partition"
H_OFFSET = "persona.source.offset"
H_TIMESTAMP = "persona.source.timestamp"
H_REASON = "persona.error.reason"
H_CLASS = "persona.error.class"
H_MESSAGE = "persona.error.message"

#: On a record re-published by ``persona dlq redrive``: the original record's
#: ``topic:partition:offset``, its identity across redrives (stream_app.dlq_ops). A dead
#: letter of such a copy carries it on, so a copy that fails again is not redriven again.
H_REDRIVE_OF = "persona.redrive.of"
#: An event of a batch record (state.batch) dead-lettered alone: its index in the batch. The
#: letter's value is that event's own bytes, so a redrive sends it as a record of one event.
H_BATCH_INDEX = "persona.source.batch.index"

#: On a dead letter whose original key or value was cut (:func:`bounded`): the original's
#: length in bytes. The whole original stays on the source topic, at the letter's coordinates.
H_KEY_BYTES = "persona.truncated.key.bytes"
H_VALUE_BYTES = "persona.truncated.value.bytes"

#: Most bytes of the original key and value a dead letter carries. The broker takes records up
#: to its ~1 MiB ``message.max.bytes``; Faust's producer and librdkafka refuse any over 1,000,000
#: bytes. A letter of such a record, headers added, could never be sent: the worker restarted
#: into the same record forever, its partition stuck (seen with a 1,000,077-byte purchase).
MAX_LETTER_KEY_BYTES = 16 * 1024
MAX_LETTER_VALUE_BYTES = 512 * 1024

DLQ_SUFFIX = ".dlq"


def bounded(key: bytes | None, value: bytes | None) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``key`` and ``value`` as a dead letter carries them: cut to :data:`MAX_LETTER_KEY_BYTES`
    and :data:`MAX_LETTER_VALUE_BYTES`, with a header giving each cut one's original length."""
    cut: list[tuple[str, bytes]] = []
    if key is not None and len(key) > MAX_LETTER_KEY_BYTES:
        cut.append((H_KEY_BYTES, str(len(key)).encode()))
        key = key[:MAX_LETTER_KEY_BYTES]
    if value is not None and len(value) > MAX_LETTER_VALUE_BYTES:
        cut.append((H_VALUE_BYTES, str(len(value)).encode()))
        value = value[:MAX_LETTER_VALUE_BYTES]
    return key, value, cut


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def redrive_of(source_headers: object) -> bytes | None:
    """The ``persona.redrive.of`` header among a record's headers (Faust gives a list of
    pairs or a mapping; confluent-kafka a list of pairs)."""
    pairs: Iterable[Any] = source_headers.items() if isinstance(source_headers, Mapping) else (source_headers or [])  # type: ignore[assignment]
    for name, value in pairs:
        if name == H_REDRIVE_OF and value is not None:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


def headers(
    letter: DeadLetter,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    redriven_from: bytes | None = None,
) -> list[tuple[str, bytes]]:
    """Headers for the dead-letter copy of the record at ``topic:partition@offset``."""
    carried = [(H_REDRIVE_OF, redriven_from)] if redriven_from is not None else []
    return carried + [
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_TIMESTAMP, str(timestamp_ms if timestamp_ms is not None else -1).encode()),
        (H_REASON, letter.reason.encode()),
        (H_CLASS, letter.error.encode()),
        # Bounded: a message quoting a huge payload must not make the DLQ record oversized.
        (H_MESSAGE, letter.message[:1000].encode("utf-8", "replace")),
    ]


def message_headers(letter: DeadLetter, message: Any) -> list[tuple[str, bytes]]:
    """:func:`headers` for a consumed message (Faust's: ``topic``, ``partition``, ``offset``,
    ``timestamp`` in seconds, ``headers``), the one place both dead-letter paths build them."""
    return headers(
        letter,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        redriven_from=redrive_of(getattr(message, "headers", None)),
    )
