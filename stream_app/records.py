"""What the pipeline reads (:class:`Record`) and what it says it did (:class:`Result`)."""

from __future__ import annotations

from dataclasses import dataclass

from state.batch import decode_events
from state.events import DeadLetter, DecodeResult, EventKind
from state.profile import Origin
from stream_app.settings import Settings


@dataclass(frozen=True, slots=True)
class Record:
    """One input record, as the pipeline needs it (a Kafka message, minus the client)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: Kafka timestamp in seconds, when the record has one.
    timestamp: float | None = None

    @property
    def origin(self) -> Origin:
        return Origin(self.topic, self.partition, self.offset)


Outcome = str
APPLIED: Outcome = "applied"
DUPLICATE: Outcome = "duplicate"
CATALOG: Outcome = "catalog"
#: an event of an erased user from at or before their erasure (a replay): dropped
ERASED: Outcome = "erased"


@dataclass(frozen=True, slots=True)
class Result:
    """What :meth:`Pipeline.process` did with a record. ``letter`` is set when the record
    must go to the dead-letter topic (the caller sends it: sending is I/O)."""

    outcome: str
    letter: DeadLetter | None = None
    emitted: bool = False
    #: a batch record's events that failed alone: (index, the event's bytes, why)
    element_letters: tuple[tuple[int, bytes, DeadLetter], ...] = ()


def events_of(settings: Settings, kind: EventKind, key: bytes | None, value: bytes | None, record_ts: float | None) -> list[DecodeResult]:
    """What a record of a ``kind`` topic holds under ``settings``' limits, as the worker reads it:
    its one event, or each event of a batch record (``state.batch.decode_events``). For the
    readers beside the worker: the trainer's history, ``persona tail``."""
    return decode_events(
        kind,
        key,
        value,
        max_bytes=settings.max_payload_bytes,
        max_events=settings.max_batch_events,
        max_batch_bytes=settings.max_batch_bytes,
        record_ts=record_ts,
        max_ahead_s=settings.max_event_ahead_s,
    )
