"""Dead-letter records: the original key and value, and headers that say where and why."""

from __future__ import annotations

from state.events import DeadLetter

#: Header names on every dead-letter record.
H_TOPIC = "persona.source.topic"
H_PARTITION = "persona.source.partition"
H_OFFSET = "persona.source.offset"
H_TIMESTAMP = "persona.source.timestamp"
H_REASON = "persona.error.reason"
H_CLASS = "persona.error.class"
H_MESSAGE = "persona.error.message"

DLQ_SUFFIX = ".dlq"


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def headers(
    letter: DeadLetter, *, topic: str, partition: int, offset: int, timestamp_ms: int | None
) -> list[tuple[str, bytes]]:
    """Headers for the dead-letter copy of the record at ``topic:partition@offset``."""
    return [
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_TIMESTAMP, str(timestamp_ms if timestamp_ms is not None else -1).encode()),
        (H_REASON, letter.reason.encode()),
        (H_CLASS, letter.error.encode()),
        # Bounded: a message quoting a huge payload must not make the DLQ record oversized.
        (H_MESSAGE, letter.message[:1000].encode("utf-8", "replace")),
    ]
