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

DLQ_SUFFIX = ".dlq"


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
