"""What the pipeline reads (:class:`Record`) and what it says it did (:class:`Result`)."""

from __future__ import annotations

from dataclasses import dataclass

from state.events import DeadLetter
from state.profile import Origin


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
