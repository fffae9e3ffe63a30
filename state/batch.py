"""Client batches: one record that carries a JSON array of one user's events.

Why: a worker pays Faust's per-record machinery (the fetcher's callback, the stream, the ack,
the commit bookkeeping) once per Kafka record, and that alone costs more than the whole
trivial agent that only counts records (docs/PERFORMANCE.md). Batching the *stream* (``take``)
does not help: it collects its batch from the same per-record iterator. What does help is fewer
records for the same events. Client SDKs already queue a user's events and send them together;
a batch record carries such a queue as it is, and the worker applies its events one by one.

The contract:

- the value is a JSON array of 1 to ``max_events`` event objects (``[`` is its first byte
  after any whitespace; a single event is an object, so the two never collide);
- only topics of :data:`BATCH_KINDS`: reviews go through the batching encoder stage one record
  at a time, the catalog is keyed by item, and an erasure is one act;
- every event must be valid on its own exactly as :func:`state.events.decode` checks a record,
  with the record's key as its key id: a batch holds *one user's* events, so the record lands
  on the partition each of its events would have landed on alone (co-partitioning holds, and
  the user's events stay in order);
- a record that is not such an array at all (bad UTF-8 or JSON, empty, too many events, over
  ``max_batch_bytes``) is dead-lettered whole; an element that fails on its own is
  dead-lettered alone, with its index, and the others are applied. Nothing is lost either way.

Idempotency within a record: each event is applied at (offset, index), see
:class:`state.profile.Origin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from state.errors import ContractError, DeadLetterReason, DecodeError
from state.events import MAX_AHEAD_S, DeadLetter, DecodeResult, Event, EventKind, decode, encode

#: The topics whose records may be batches.
BATCH_KINDS: Final[frozenset[EventKind]] = frozenset({"click", "purchase", "follow", "user", "impression"})
#: Events in one batch record, at most (``PERSONA_MAX_BATCH_EVENTS``).
MAX_BATCH_EVENTS: Final = 1_000
#: A batch record's value, at most (``PERSONA_MAX_BATCH_BYTES``): Kafka's default largest record.
MAX_BATCH_BYTES: Final = 1_048_576

_WHITESPACE: Final = b" \t\r\n"
_parts = msgspec.json.Decoder(list[msgspec.Raw])


@dataclass(frozen=True, slots=True)
class Element:
    """Event ``index`` of a batch: its bytes (the dead letter's value) and what they decode to."""

    index: int
    raw: bytes
    decoded: DecodeResult


def encode_events(events: Sequence[Event]) -> bytes:
    """A batch record's value: a JSON array of one user's events (what ``decode_batch`` reads)."""
    return b"[" + b",".join(encode(e) for e in events) + b"]"


def is_batch(value: bytes | None) -> bool:
    """Whether a record's value is a batch (a JSON array), by its first non-blank byte."""
    if not value:
        return False
    first = value[:1]
    if first in (b"[", b"{"):
        return first == b"["
    return value.lstrip(_WHITESPACE)[:1] == b"["


def _error(cls: type[DecodeError] | type[ContractError], reason: DeadLetterReason, message: str) -> DeadLetter:
    return DeadLetter.from_error(cls(reason, message))


def decode_batch(
    kind: EventKind,
    key: bytes | None,
    value: bytes,
    *,
    max_bytes: int = 65_536,
    max_events: int = MAX_BATCH_EVENTS,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    record_ts: float | None = None,
    max_ahead_s: float = MAX_AHEAD_S,
) -> list[Element] | DeadLetter:
    """The elements of a batch record (each decoded as a record of its own would be), or the
    dead letter of the whole record when it is not a usable batch (see the module docstring)."""
    if len(value) > max_batch_bytes:
        return _error(DecodeError, "oversized", f"batch value is {len(value)} bytes, limit {max_batch_bytes}")
    if kind not in BATCH_KINDS:
        return _error(
            ContractError,
            "schema",
            f"a batch (JSON array) on a topic of {kind!r} events, which takes one event per record; "
            f"batches are accepted on {sorted(BATCH_KINDS)}",
        )
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _error(DecodeError, "bad_utf8", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        parts = _parts.decode(value)
    except RecursionError:
        return _error(DecodeError, "bad_json", "JSON nested too deeply")
    except msgspec.DecodeError as exc:  # ValidationError included: a value that is not an array
        return _error(DecodeError, "bad_json", f"batch is not a JSON array: {exc}")
    if not parts:
        return _error(ContractError, "schema", "an empty batch: a batch holds 1 or more events")
    if len(parts) > max_events:
        return _error(ContractError, "oversized", f"a batch of {len(parts)} events, limit {max_events}")
    elements = []
    for index, part in enumerate(parts):
        raw = bytes(part)
        decoded = decode(kind, key, raw, max_bytes=max_bytes, record_ts=record_ts, max_ahead_s=max_ahead_s)
        if isinstance(decoded, DeadLetter):
            decoded = msgspec.structs.replace(decoded, message=f"batch element {index} of {len(parts)}: {decoded.message}")
        elements.append(Element(index, raw, decoded))
    return elements


def decode_events(
    kind: EventKind,
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int = 65_536,
    max_events: int = MAX_BATCH_EVENTS,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    record_ts: float | None = None,
    max_ahead_s: float = MAX_AHEAD_S,
) -> list[DecodeResult]:
    """What a record of a ``kind`` topic holds, for readers other than the worker (the
    trainer's history, ``persona tail``): its one event, or each event of a batch in order (a
    batch that is not usable at all: one dead letter)."""
    if not is_batch(value):
        return [decode(kind, key, value, max_bytes=max_bytes, record_ts=record_ts, max_ahead_s=max_ahead_s)]
    assert value is not None
    elements = decode_batch(
        kind,
        key,
        value,
        max_bytes=max_bytes,
        max_events=max_events,
        max_batch_bytes=max_batch_bytes,
        record_ts=record_ts,
        max_ahead_s=max_ahead_s,
    )
    return [elements] if isinstance(elements, DeadLetter) else [e.decoded for e in elements]
