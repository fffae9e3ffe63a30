"""Event contracts: what producers put on the input topics, and how we read it back.

JSON on the wire, one object per record, with a ``type`` tag. Every event carries
``event_id`` (unique per event, used for de-duplication), its key id (``user_id``, or
``item_id`` for the catalog) and ``ts``, the event time in seconds since the epoch (UTC).
Decoding never raises: it returns the event or a :class:`DeadLetter` describing why not.

Evolution
---------
Every event may carry ``v``, the contract version it was written to, ``"MAJOR.MINOR"``
(absent: ``"1.0"``, what producers wrote before the field existed). A *minor* revision only
adds optional fields: a reader ignores fields it does not know and defaults the ones a writer
did not send, so a newer producer works with an older worker and an older producer with a
newer worker, with no coordination. A *major* revision changes or removes something; a worker
reads only its own major (:data:`CONTRACT_MAJOR`) and dead-letters any other as
``incompatible_version``, saying which version it reads, rather than guessing at the fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, Literal, TypeAlias, Union

import msgspec

from state.errors import ContractError, DeadLetterReason, DecodeError, InputError

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
EventTime = Annotated[float, msgspec.Meta(ge=0.0)]
Rating = Annotated[float, msgspec.Meta(ge=1.0, le=5.0)]
Money = Annotated[float, msgspec.Meta(ge=0.0)]
# MessagePack (the profile store) holds integers in int64.
AttributeValue: TypeAlias = Union[str, Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)], float, bool]


#: The contract version this build writes (the minor is the newest it knows of).
CONTRACT_VERSION: Final = "1.0"
#: The one major version this build reads.
CONTRACT_MAJOR: Final = int(CONTRACT_VERSION.split(".")[0])
ContractVersion = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,4}\.[0-9]{1,4}$")]


class _Event(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    event_id: Id
    ts: EventTime
    v: ContractVersion = CONTRACT_VERSION


class Click(_Event, tag="click", frozen=True):
    """A user opened or clicked an item."""

    user_id: Id
    item_id: Id


class Purchase(_Event, tag="purchase", frozen=True):
    """A user bought ``quantity`` of an item at ``price`` each (price unknown: ``None``)."""

    user_id: Id
    item_id: Id
    price: Money | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1)] = 1


class Review(_Event, tag="review", frozen=True):
    """A user wrote about an item; ``rating`` is 1-5 stars when the source has one."""

    user_id: Id
    item_id: Id
    text: Annotated[str, msgspec.Meta(max_length=20_000)]
    rating: Rating | None = None
    summary: Annotated[str, msgspec.Meta(max_length=2_000)] = ""


def encoder_text(summary: str, text: str) -> str:
    """What the text encoder sees of a review: the title, then the body. Shared by the
    worker and the exporter (which trains the sentiment head on the same strings)."""
    return f"{summary}. {text}" if summary else text


#: Item text kept for the encoder. The encoder truncates at its max length anyway (256
#: tokens, roughly 1,300 characters of English), and every worker holds these in memory.
ITEM_TEXT_CHARS = 2_000


def item_text(title: str, categories: Sequence[str], text: str) -> str:
    """What the text encoder sees of a catalog item: title, categories, then the
    description ("" when the item has none of them, and then it gets no vector)."""
    parts = [p.strip() for p in (title, ", ".join(categories), text)]
    return ". ".join(p for p in parts if p)[:ITEM_TEXT_CHARS]


class Follow(_Event, tag="follow", frozen=True):
    """``user_id`` starts (``follow``) or stops (``unfollow``) following ``followee_id``."""

    user_id: Id
    followee_id: Id
    action: Literal["follow", "unfollow"] = "follow"


class Item(_Event, tag="item", frozen=True):
    """A catalog entry (insert or full replace); keyed by ``item_id``."""

    item_id: Id
    title: Annotated[str, msgspec.Meta(max_length=2_000)] = ""
    text: Annotated[str, msgspec.Meta(max_length=20_000)] = ""
    categories: list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]] = []
    price: Money | None = None


class User(_Event, tag="user", frozen=True):
    """Declared user attributes (age, gender, occupation, ...); later values win per key."""

    user_id: Id
    attributes: dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], AttributeValue] = {}


class Erasure(_Event, tag="erasure", frozen=True):
    """Erase ``user_id`` everywhere (the right to erasure): their profile, their place in the
    social graph, every cache and their recommendations. ``ts`` is the event time the erasure
    covers: the user's events at or before it are dropped if they are ever read again (a
    replay); later ones start a new profile. ``reason`` is free text for the audit trail
    (a ticket id, never personal data)."""

    user_id: Id
    reason: Annotated[str, msgspec.Meta(max_length=256)] = ""


#: Items one impression may list (MIND's longest impressions list about 300).
MAX_SHOWN = 1_000


class Impression(_Event, tag="impression", frozen=True):
    """The items a client actually showed ``user_id``, in display order, and which of them
    were clicked (a subset; each click also arrives as its own ``click`` event). Shown but
    not clicked is what the trainer learns negatives from."""

    user_id: Id
    items: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=MAX_SHOWN)]
    clicked: Annotated[list[Id], msgspec.Meta(max_length=MAX_SHOWN)] = []


Event: TypeAlias = Union[Click, Purchase, Review, Follow, Item, User, Impression, Erasure]
EventKind = Literal["click", "purchase", "review", "follow", "item", "user", "impression", "erasure"]
EVENT_KINDS: Final[tuple[EventKind, ...]] = ("click", "purchase", "review", "follow", "item", "user", "impression", "erasure")
EVENT_TYPES: Final[dict[EventKind, type[Event]]] = {
    "click": Click,
    "purchase": Purchase,
    "review": Review,
    "follow": Follow,
    "item": Item,
    "user": User,
    "impression": Impression,
    "erasure": Erasure,
}
_KINDS: Final[dict[type[Event], EventKind]] = {cls: kind for kind, cls in EVENT_TYPES.items()}


def kind_of(event: Event) -> EventKind:
    """The kind of an event (its ``type`` tag on the wire; ``settings.topic(kind)`` names
    its topic). The one place that maps event classes to kinds."""
    return _KINDS[type(event)]


def key_of(event: Event) -> str:
    """The Kafka key of an event: the item id for the catalog, the user id for the rest."""
    return event.item_id if isinstance(event, Item) else event.user_id


class DeadLetter(msgspec.Struct, frozen=True):
    """Why a record could not be used: the value the decoder returns instead of an event."""

    reason: DeadLetterReason
    error: str  #: the error class, e.g. ``ContractError``
    message: str

    @classmethod
    def from_error(cls, error: InputError) -> DeadLetter:
        """The dead letter of an input error: its reason, class name and message."""
        return cls(reason=error.reason, error=type(error).__name__, message=error.message)


DecodeResult: TypeAlias = Union[Event, DeadLetter]

_encoder = msgspec.json.Encoder()
# One decoder for the tagged union, so a missing ``type`` is an error rather than a default.
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


class _Envelope(msgspec.Struct):
    type: str


class _Versioned(msgspec.Struct):
    v: object = None


_any_decoder = msgspec.json.Decoder()
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_version_decoder = msgspec.json.Decoder(_Versioned)


def _incompatible(version: object) -> DeadLetter | None:
    """The dead letter of a well-formed version of another major, else None (a malformed
    version is the contract's ``schema`` error)."""
    if not isinstance(version, str):
        return None
    major, dot, minor = version.partition(".")
    if not (dot and major.isdigit() and minor.isdigit()) or int(major) == CONTRACT_MAJOR:
        return None
    return _contract_error(
        "incompatible_version",
        f"contract version {version}: this worker reads {CONTRACT_MAJOR}.x (writes {CONTRACT_VERSION}); "
        f"upgrade the worker before producing {major}.x, or produce {CONTRACT_MAJOR}.x",
    )


def encode(event: Event) -> bytes:
    """The wire form of an event (compact JSON with its ``type`` tag)."""
    return _encoder.encode(event)


def _decode_error(reason: DeadLetterReason, message: str) -> DeadLetter:
    return DeadLetter.from_error(DecodeError(reason, message))


def _contract_error(reason: DeadLetterReason, message: str) -> DeadLetter:
    return DeadLetter.from_error(ContractError(reason, message))


#: How far an event's time may be after its record's Kafka timestamp, by default (a day).
MAX_AHEAD_S: Final = 86_400.0


def decode(
    kind: EventKind,
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int = 65_536,
    record_ts: float | None = None,
    max_ahead_s: float = MAX_AHEAD_S,
) -> DecodeResult:
    """Decode and validate one record of a topic that carries ``kind`` events.

    Checks, in order: a value is present, it is not over ``max_bytes``, it is UTF-8,
    it is JSON, its contract major version is this build's, its ``type`` is ``kind``, its
    fields honour the contract, the record key equals the payload's key id, and, given the
    record's Kafka timestamp ``record_ts`` (seconds), the event time is at most
    ``max_ahead_s`` after it (``future_time``).

    Why the last: every decayed value is kept at its latest event time, so one event from the
    far future (milliseconds sent as seconds, a device with a wrong clock) made every other
    event weigh 2^-(years / half-life), zero: the global popularity of every item but that one
    read 0 from then on, on every worker, and the deltas topic (kept forever) replayed it at
    every start. The record's timestamp is the reference because it is part of the record: a
    replay decides the same way, which a wall clock would not.
    """
    if value is None:
        return _decode_error("null_value", "record has no value (tombstone)")
    if len(value) > max_bytes:
        return _decode_error("oversized", f"value is {len(value)} bytes, limit {max_bytes}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _decode_error("bad_utf8", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        event = _decoder.decode(value)
    except RecursionError:
        return _decode_error("bad_json", "JSON nested too deeply")
    except msgspec.ValidationError as exc:
        text = str(exc)
        # The typed decoder stops at the first contract error: establish the documented
        # order (JSON, then type, then fields) on this slow path only.
        try:
            document = _any_decoder.decode(value)
        except RecursionError:
            return _decode_error("bad_json", "JSON nested too deeply")
        except msgspec.DecodeError as exc2:
            return _decode_error("bad_json", str(exc2))
        if isinstance(document, list):
            return _contract_error(
                "schema", f"a JSON array (a batch record, state.batch) where one {kind!r} event was expected: {text}"
            )
        try:
            other_major = _incompatible(_version_decoder.decode(value).v)
        except (msgspec.DecodeError, RecursionError):  # not an object: the checks below say why
            other_major = None
        if other_major is not None:
            return other_major
        try:
            tag = _envelope_decoder.decode(value).type
        except (msgspec.DecodeError, RecursionError):
            tag = None
        if tag is not None and tag in EVENT_TYPES and tag != kind:
            return _contract_error("unknown_type", f"a {tag!r} event on a topic of {kind!r} events")
        # msgspec names the tag field when the tag is missing or not the one expected.
        if "`$.type`" in text or "field `type`" in text:
            return _contract_error("unknown_type", f"expected type {kind!r}: {text}")
        return _contract_error("schema", text)
    except msgspec.DecodeError as exc:
        return _decode_error("bad_json", str(exc))
    if event.v != CONTRACT_VERSION:
        other_major = _incompatible(event.v)
        if other_major is not None:
            return other_major
    if not isinstance(event, EVENT_TYPES[kind]):
        return _contract_error("unknown_type", f"a {kind_of(event)!r} event on a topic of {kind!r} events")
    expected = key_of(event)
    if key is None:
        return _contract_error("key_mismatch", f"record has no key; payload key is {expected!r}")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return _contract_error("key_mismatch", "record key is not UTF-8")
    if key_text != expected:
        return _contract_error(
            "key_mismatch", f"record key {key_text!r} != payload key {expected!r}"
        )
    if isinstance(event, Impression) and not set(event.clicked) <= set(event.items):
        stray = sorted(set(event.clicked) - set(event.items))[:3]
        return _contract_error("schema", f"impression clicked items not among those shown: {stray}")
    if record_ts is not None and record_ts > 0.0 and event.ts > record_ts + max_ahead_s:
        return _contract_error(
            "future_time",
            f"event time {event.ts:.0f} is {event.ts - record_ts:.0f} s after its record's timestamp {record_ts:.0f} "
            f"(at most {max_ahead_s:.0f} s accepted): milliseconds instead of seconds, or a wrong clock?",
        )
    return event
