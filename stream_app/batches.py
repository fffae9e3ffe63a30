"""A batch record (``state.batch``: one user's events in one record) through the pipeline.

Each element is applied as a record of its own would be, at its own place in the record
(``Origin(offset, index, of)``), so the profile's and the shared state's watermarks skip the
part of a batch a crash had already applied, and apply the rest. Elements that fail alone are
returned as dead letters (their own bytes, their index); the others are applied.

The user's list is offered to the coalescer once, after the batch, not after each event: a
list ranked on the first of a batch's events is stale before it is sent, and an emission at
the first change of an interval would leave the rest pending for a second ranking. The trigger
is the batch's latest event time, as the coalescer keeps for a pending user; the followers'
refreshes (fan-out) follow the user's own message, as for records of one event.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from scoring.shared import Delta
from state.batch import decode_batch
from state.events import DeadLetter, EventKind
from state.profile import Origin
from stream_app import metrics
from stream_app.records import ERASED, Record, Result

if TYPE_CHECKING:
    from stream_app.pipeline import Pipeline

#: The outcome of a batch record (its events are counted one by one under their own outcomes).
BATCH = "batch"


def process_batch(pipeline: Pipeline, kind: EventKind, record: Record) -> Result:
    """Decode a batch record of a ``kind`` topic and apply its events in order."""
    started = time.perf_counter()
    assert record.value is not None  # state.batch.is_batch said so
    elements = decode_batch(
        kind,
        record.key,
        record.value,
        max_bytes=pipeline.max_payload_bytes,
        max_events=pipeline.max_batch_events,
        max_batch_bytes=pipeline.max_batch_bytes,
        record_ts=record.timestamp,
        max_ahead_s=pipeline.max_event_ahead_s,
    )
    if isinstance(elements, DeadLetter):
        pipeline.count_dead_letter(record.topic, elements)
        return Result("dead_letter", letter=elements)
    letters: list[tuple[int, bytes, DeadLetter]] = []
    deferred: list[Delta] = []
    latest: float | None = None
    of = len(elements)
    for element in elements:
        if isinstance(element.decoded, DeadLetter):
            pipeline.count_dead_letter(record.topic, element.decoded)
            letters.append((element.index, element.raw, element.decoded))
            continue
        event = element.decoded
        origin = Origin(record.topic, record.partition, record.offset, element.index, of)
        if pipeline.apply_event(event, origin, record.partition, record.timestamp, deferred=deferred).outcome != ERASED:
            latest = event.ts if latest is None else max(latest, event.ts)
    emitted = False
    profile = pipeline.store.get(record.key, record.partition) if latest is not None and record.key is not None else None
    if latest is not None and profile is not None:
        emitted = pipeline.settle(profile.user_id, profile, pipeline.trigger(latest, record.timestamp), deferred, record.timestamp)
    metrics.BATCH_EVENTS.observe(of)
    # Each event observes its share of the record's time: the histogram stays per event.
    share = (time.perf_counter() - started) / of
    for _ in range(of):
        metrics.PROCESSING.observe(share)
    return Result(BATCH, emitted=emitted, element_letters=tuple(letters))
