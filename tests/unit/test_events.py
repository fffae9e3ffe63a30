"""Event contracts: encode/decode round trips, and every dead-letter reason from the input it names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.errors import DEAD_LETTER_REASONS, DeadLetterReason
from state.events import (
    EVENT_KINDS,
    EVENT_TYPES,
    Click,
    DeadLetter,
    Erasure,
    Event,
    EventKind,
    Follow,
    Impression,
    Item,
    Purchase,
    Review,
    User,
    decode,
    encode,
    key_of,
    kind_of,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=24)
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False, allow_infinity=False)
money = st.none() | st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
attr_values = st.one_of(
    st.text(max_size=16),
    int64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)

clicks = st.builds(Click, event_id=ids, ts=times, user_id=ids, item_id=ids)
purchases = st.builds(
    Purchase,
    event_id=ids,
    ts=times,
    user_id=ids,
    item_id=ids,
    price=money,
    quantity=st.integers(min_value=1, max_value=10_000),
)
reviews = st.builds(
    Review,
    event_id=ids,
    ts=times,
    user_id=ids,
    item_id=ids,
    text=st.text(max_size=64),
    rating=st.none() | st.floats(min_value=1.0, max_value=5.0),
    summary=st.text(max_size=16),
)
follows = st.builds(
    Follow,
    event_id=ids,
    ts=times,
    user_id=ids,
    followee_id=ids,
    action=st.sampled_from(["follow", "unfollow"]),
)
items = st.builds(
    Item,
    event_id=ids,
    ts=times,
    item_id=ids,
    title=st.text(max_size=32),
    text=st.text(max_size=64),
    categories=st.lists(st.text(min_size=1, max_size=12), max_size=4),
    price=money,
)
users = st.builds(
    User,
    event_id=ids,
    ts=times,
    user_id=ids,
    attributes=st.dictionaries(st.text(min_size=1, max_size=12), attr_values, max_size=4),
)
impressions = st.lists(ids, min_size=1, max_size=8, unique=True).flatmap(
    lambda shown: st.builds(
        Impression,
        event_id=ids,
        ts=times,
        user_id=ids,
        items=st.just(shown),
        clicked=st.lists(st.sampled_from(shown), unique=True, max_size=len(shown)),
    )
)
erasures = st.builds(Erasure, event_id=ids, ts=times, user_id=ids, reason=st.text(max_size=32))
STRATEGIES: dict[EventKind, st.SearchStrategy[Any]] = {
    "erasure": erasures,
    "impression": impressions,
    "click": clicks,
    "purchase": purchases,
    "review": reviews,
    "follow": follows,
    "item": items,
    "user": users,
}
any_event: st.SearchStrategy[Event] = st.one_of(*STRATEGIES.values())


@FAST
@given(event=any_event)
def test_kind_of_is_the_wire_tag_and_names_the_class(event: Event) -> None:
    kind = kind_of(event)
    assert kind == json.loads(encode(event))["type"]
    assert type(event) is EVENT_TYPES[kind]


def valid(kind: EventKind) -> dict[str, Any]:
    """A valid payload of ``kind``, as a plain dict written by hand (not by ``encode``)."""
    base: dict[str, Any] = {"type": kind, "event_id": "e-1", "ts": 1_000.0}
    if kind == "item":
        return base | {"item_id": "i-1", "categories": ["a", "b"]}
    base["user_id"] = "u-1"
    extra: dict[str, dict[str, Any]] = {
        "click": {"item_id": "i-1"},
        "purchase": {"item_id": "i-1", "price": 2.5, "quantity": 2},
        "review": {"item_id": "i-1", "text": "good", "rating": 4.0},
        "follow": {"followee_id": "u-2", "action": "follow"},
        "user": {"attributes": {"age": 30, "gender": "F"}},
        "impression": {"items": ["i-1", "i-2", "i-3"], "clicked": ["i-2"]},
        "erasure": {"reason": "ticket-42"},
    }
    return base | extra[kind]


def raw(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def key_for(kind: EventKind) -> bytes:
    return b"i-1" if kind == "item" else b"u-1"


def reason(result: object) -> DeadLetterReason:
    assert isinstance(result, DeadLetter), f"expected a dead letter, got {result!r}"
    return result.reason


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_hand_written_payload_of_every_kind_decodes(kind: EventKind) -> None:
    payload = valid(kind)
    event = decode(kind, key_for(kind), raw(payload))
    assert type(event) is EVENT_TYPES[kind]
    assert not isinstance(event, DeadLetter)
    for name, value in payload.items():
        if name != "type":
            assert getattr(event, name) == value
    # and back: the wire form carries the same fields and the type tag
    wire = json.loads(encode(event))
    assert {name: wire[name] for name in payload} == payload


@pytest.mark.parametrize("kind", EVENT_KINDS)
@FAST
@given(data=st.data())
def test_round_trip_every_kind(kind: EventKind, data: st.DataObject) -> None:
    event = data.draw(STRATEGIES[kind])
    wire = encode(event)
    assert json.loads(wire)["type"] == kind
    back = decode(kind, key_of(event).encode(), wire)
    assert back == event
    assert type(back) is type(event)


def test_key_of_is_item_id_for_catalog_and_user_id_otherwise() -> None:
    assert key_of(Item(event_id="e", ts=0.0, item_id="I")) == "I"
    assert key_of(Click(event_id="e", ts=0.0, user_id="U", item_id="I")) == "U"
    assert key_of(Follow(event_id="e", ts=0.0, user_id="U", followee_id="V")) == "U"


def test_defaults_fill_optional_fields() -> None:
    ev = decode("purchase", b"u", raw({"type": "purchase", "event_id": "e", "ts": 0, "user_id": "u", "item_id": "i"}))
    assert isinstance(ev, Purchase)
    assert ev.price is None and ev.quantity == 1
    fo = decode("follow", b"u", raw({"type": "follow", "event_id": "e", "ts": 0, "user_id": "u", "followee_id": "v"}))
    assert isinstance(fo, Follow) and fo.action == "follow"


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_unknown_extra_fields_are_tolerated(kind: EventKind) -> None:
    payload = valid(kind)
    expected = decode(kind, key_for(kind), raw(payload))
    assert not isinstance(expected, DeadLetter)
    noisy = {"zz_new_field": {"nested": [1, 2, {"x": None}]}, **payload, "another": None, "n": 1.5}
    assert decode(kind, key_for(kind), raw(noisy)) == expected


# --- dead letters: one test per reason ---------------------------------------------------


def test_null_value_is_a_tombstone() -> None:
    assert reason(decode("click", b"u-1", None)) == "null_value"
    # checked first: even without a key
    assert reason(decode("click", None, None)) == "null_value"


def test_oversized_is_strictly_over_max_bytes() -> None:
    body = raw(valid("click"))
    limit = 300
    exact = body[:-1] + b" " * (limit - len(body)) + b"}"
    assert len(exact) == limit
    assert isinstance(decode("click", b"u-1", exact, max_bytes=limit), Click)
    over = body[:-1] + b" " * (limit + 1 - len(body)) + b"}"
    assert len(over) == limit + 1
    letter = decode("click", b"u-1", over, max_bytes=limit)
    assert reason(letter) == "oversized"
    # checked before UTF-8 and JSON
    assert reason(decode("click", b"u-1", b"\xff" * (limit + 1), max_bytes=limit)) == "oversized"


def test_default_max_bytes_is_64_kib() -> None:
    payload = valid("review")
    payload["pad"] = "x" * 70_000  # unknown field, so only the size is wrong
    assert reason(decode("review", b"u-1", raw(payload))) == "oversized"


@pytest.mark.parametrize("value", [b"\xff\xfe{}", b'{"type":"click","event_id":"\xc3"}', b"\xed\xa0\x80"])
def test_bad_utf8(value: bytes) -> None:
    letter = decode("click", b"u-1", value)
    assert reason(letter) == "bad_utf8"
    assert isinstance(letter, DeadLetter) and letter.error == "DecodeError"


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b'{"type": "click",}', b"{'a': 1}", b'{"type": "click"'])
def test_bad_json(value: bytes) -> None:
    letter = decode("click", b"u-1", value)
    assert reason(letter) == "bad_json"
    assert isinstance(letter, DeadLetter) and letter.error == "DecodeError"


def test_unknown_type_tag() -> None:
    payload = valid("click") | {"type": "like"}
    letter = decode("click", b"u-1", raw(payload))
    assert reason(letter) == "unknown_type"
    assert isinstance(letter, DeadLetter) and letter.error == "ContractError"


def test_missing_type_tag() -> None:
    payload = valid("click")
    del payload["type"]
    assert reason(decode("click", b"u-1", raw(payload))) == "unknown_type"


def test_non_string_type_tag() -> None:
    assert reason(decode("click", b"u-1", raw(valid("click") | {"type": 3}))) == "unknown_type"


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("topic_kind", EVENT_KINDS)
def test_valid_event_on_the_wrong_topic(kind: EventKind, topic_kind: EventKind) -> None:
    result = decode(topic_kind, key_for(kind), raw(valid(kind)))
    if kind == topic_kind:
        assert type(result) is EVENT_TYPES[kind]
    else:
        assert reason(result) == "unknown_type"


def test_wrong_topic_type_is_reported_before_schema_errors() -> None:
    broken_click = {"type": "click", "event_id": "e"}  # missing ts, user_id, item_id
    assert reason(decode("purchase", b"u-1", raw(broken_click))) == "unknown_type"


@pytest.mark.parametrize("value", [b"[1, 2", b'{"type": "click", "ts": "x", '])
def test_malformed_json_is_bad_json_even_if_its_prefix_breaks_the_schema(value: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(value)
    assert reason(decode("click", b"u-1", value)) == "bad_json"


@pytest.mark.parametrize("field", ["event_id", "ts", "user_id", "item_id"])
def test_schema_missing_required_field(field: str) -> None:
    payload = valid("click")
    del payload[field]
    letter = decode("click", b"u-1", raw(payload))
    assert reason(letter) == "schema"
    assert isinstance(letter, DeadLetter) and letter.error == "ContractError" and field in letter.message


@pytest.mark.parametrize(
    ("kind", "field", "bad"),
    [
        ("click", "ts", "yesterday"),
        ("click", "user_id", 7),
        ("click", "item_id", None),
        ("purchase", "quantity", 1.5),
        ("purchase", "price", "cheap"),
        ("review", "text", ["a"]),
        ("follow", "action", "block"),
        ("item", "categories", "a,b"),
        ("user", "attributes", {"age": [30]}),
        ("user", "attributes", {"age": {"years": 30}}),
    ],
)
def test_schema_wrong_type(kind: EventKind, field: str, bad: Any) -> None:
    payload = valid(kind) | {field: bad}
    assert reason(decode(kind, key_for(kind), raw(payload))) == "schema"


@pytest.mark.parametrize("rating", [0.0, 0.999, 5.001, 6, -1])
def test_schema_rating_out_of_range(rating: float) -> None:
    assert reason(decode("review", b"u-1", raw(valid("review") | {"rating": rating}))) == "schema"


@pytest.mark.parametrize("rating", [1, 1.0, 3.5, 5])
def test_rating_bounds_inclusive(rating: float) -> None:
    ev = decode("review", b"u-1", raw(valid("review") | {"rating": rating}))
    assert isinstance(ev, Review) and ev.rating == rating


@pytest.mark.parametrize("ts", [-1, -0.001, -1e9])
def test_schema_negative_ts(ts: float) -> None:
    assert reason(decode("click", b"u-1", raw(valid("click") | {"ts": ts}))) == "schema"


def test_zero_ts_is_valid() -> None:
    ev = decode("click", b"u-1", raw(valid("click") | {"ts": 0}))
    assert isinstance(ev, Click) and ev.ts == 0.0


@pytest.mark.parametrize(("kind", "field"), [("click", "ts"), ("purchase", "price"), ("review", "rating")])
def test_schema_non_finite_numbers(kind: EventKind, field: str) -> None:
    # 1e999 is valid JSON that overflows a double: it must not become an infinite time or price.
    payload = valid(kind)
    del payload[field]
    body = raw(payload)[:-1] + f', "{field}": 1e999}}'.encode()
    assert json.loads(body)[field] == float("inf")
    # Out of a double's range: rejected (as a contract or a JSON error), never an infinite value.
    assert reason(decode(kind, b"u-1", body)) in ("schema", "bad_json")


@pytest.mark.parametrize(("kind", "field"), [("click", "event_id"), ("click", "item_id"), ("follow", "followee_id"), ("item", "item_id")])
def test_schema_empty_id(kind: EventKind, field: str) -> None:
    payload = valid(kind) | {field: ""}
    assert reason(decode(kind, key_for(kind), raw(payload))) == "schema"


def test_empty_user_id_is_a_schema_error_not_a_key_mismatch() -> None:
    assert reason(decode("click", b"", raw(valid("click") | {"user_id": ""}))) == "schema"


def test_schema_id_too_long() -> None:
    assert reason(decode("click", b"u-1", raw(valid("click") | {"item_id": "x" * 257}))) == "schema"
    assert isinstance(decode("click", b"u-1", raw(valid("click") | {"item_id": "x" * 256})), Click)


@pytest.mark.parametrize("value", [b"[]", b"null", b"42", b'"click"'])
def test_json_that_is_not_an_object_is_a_contract_error(value: bytes) -> None:
    assert reason(decode("click", b"u-1", value)) == "schema"


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_key_mismatch(kind: EventKind) -> None:
    payload = raw(valid(kind))
    assert reason(decode(kind, b"someone-else", payload)) == "key_mismatch"
    assert reason(decode(kind, None, payload)) == "key_mismatch"
    assert reason(decode(kind, b"\xff\xfe", payload)) == "key_mismatch"
    assert reason(decode(kind, b"", payload)) == "key_mismatch"


def test_catalog_key_is_the_item_id_not_a_user() -> None:
    assert isinstance(decode("item", b"i-1", raw(valid("item"))), Item)
    assert reason(decode("item", b"u-1", raw(valid("item") | {"user_id": "u-1"}))) == "key_mismatch"


def test_non_ascii_key_matches_when_utf8() -> None:
    payload = valid("click") | {"user_id": "Zoë-用户"}
    assert isinstance(decode("click", "Zoë-用户".encode(), raw(payload)), Click)


def test_key_must_be_utf8_even_if_another_codec_would_match() -> None:
    payload = raw(valid("click") | {"user_id": "\u00ff"})  # "ÿ"
    assert isinstance(decode("click", "\u00ff".encode(), payload), Click)
    letter = decode("click", b"\xff", payload)  # "ÿ" in Latin-1, invalid UTF-8
    assert reason(letter) == "key_mismatch"
    assert isinstance(letter, DeadLetter) and "UTF-8" in letter.message


def test_every_reason_is_reachable() -> None:
    """The closed set of reasons is exactly the set the inputs above produce."""
    produced = {
        reason(decode("click", b"u-1", None)),
        reason(decode("click", b"u-1", b"x" * 10, max_bytes=5)),
        reason(decode("click", b"u-1", b"\xff")),
        reason(decode("click", b"u-1", b"{")),
        reason(decode("click", b"u-1", raw(valid("click") | {"type": "zzz"}))),
        reason(decode("click", b"u-1", raw(valid("click") | {"ts": -5}))),
        reason(decode("click", b"nope", raw(valid("click")))),
        reason(decode("click", b"u-1", raw(valid("click") | {"v": "2.0"}))),
        reason(decode("click", b"u-1", raw(valid("click") | {"ts": 1e12}), record_ts=1e9)),
    }
    # "internal" is the one reason no input produces: a record whose processing raised (stream_app.poison).
    assert produced == set(DEAD_LETTER_REASONS) - {"internal"}


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_an_event_time_past_its_records_timestamp_by_more_than_the_limit_is_future_time(kind: EventKind) -> None:
    at = 1_733_000_000.0
    payload = valid(kind) | {"ts": at}
    key = key_for(kind)
    limit = 3_600.0
    assert not isinstance(decode(kind, key, raw(payload), record_ts=at - limit, max_ahead_s=limit), DeadLetter)  # at the limit
    letter = decode(kind, key, raw(payload), record_ts=at - limit - 1.0, max_ahead_s=limit)
    assert reason(letter) == "future_time"
    assert isinstance(letter, DeadLetter) and letter.error == "ContractError" and "3601 s after" in letter.message
    # Without a record timestamp (or with none recorded: Kafka's -1, 0) nothing is compared.
    for none in (None, 0.0, -1.0):
        assert not isinstance(decode(kind, key, raw(payload), record_ts=none, max_ahead_s=limit), DeadLetter)


def test_milliseconds_sent_as_seconds_are_future_time_at_the_default_limit() -> None:
    produced = 1_733_000_000.0
    in_ms = raw(valid("purchase") | {"ts": produced * 1000})
    assert reason(decode("purchase", b"u-1", in_ms, record_ts=produced)) == "future_time"
    a_day_late_clock = raw(valid("purchase") | {"ts": produced + 86_000})
    assert isinstance(decode("purchase", b"u-1", a_day_late_clock, record_ts=produced), Purchase)
    old = raw(valid("purchase") | {"ts": 876_000_000.0})  # replayed history: long before its record
    assert isinstance(decode("purchase", b"u-1", old, record_ts=produced), Purchase)


# --- decode never raises ----------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _check_result(kind: EventKind, key: bytes | None, result: Event | DeadLetter) -> None:
    if isinstance(result, DeadLetter):
        assert result.reason in DEAD_LETTER_REASONS
        assert result.error in ("DecodeError", "ContractError")
    else:
        assert type(result) is EVENT_TYPES[kind]
        assert key is not None and key.decode() == key_of(result)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(EVENT_KINDS),
    key=st.one_of(st.none(), st.binary(max_size=16)),
    value=st.one_of(st.none(), st.binary(max_size=256)),
    max_bytes=st.integers(min_value=0, max_value=512),
)
def test_decode_never_raises_on_arbitrary_bytes(
    kind: EventKind, key: bytes | None, value: bytes | None, max_bytes: int
) -> None:
    _check_result(kind, key, decode(kind, key, value, max_bytes=max_bytes))


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(EVENT_KINDS),
    base=st.sampled_from(EVENT_KINDS),
    key=st.one_of(st.none(), st.sampled_from([b"u-1", b"i-1", b"\xff"]), st.binary(max_size=4)),
    edits=st.dictionaries(
        st.sampled_from(["type", "event_id", "ts", "user_id", "item_id", "price", "quantity", "rating",
                         "text", "action", "attributes", "categories", "followee_id", "x"]),
        json_values,
        max_size=3,
    ),
    drop=st.sets(st.sampled_from(["type", "event_id", "ts", "user_id", "item_id"]), max_size=2),
)
def test_decode_never_raises_on_json_like_payloads(
    kind: EventKind, base: EventKind, key: bytes | None, edits: dict[str, Any], drop: set[str]
) -> None:
    payload = valid(base) | edits
    for name in drop:
        payload.pop(name, None)
    _check_result(kind, key, decode(kind, key, raw(payload)))


@settings(max_examples=100, deadline=None)
@given(event=any_event, cut=st.integers(min_value=0, max_value=400))
def test_decode_never_raises_on_truncated_events(event: Event, cut: int) -> None:
    wire = encode(event)
    kind = kind_of(event)
    key = key_of(event).encode()
    result = decode(kind, key, wire[: min(cut, len(wire))])
    if cut >= len(wire):
        assert result == event
    else:
        _check_result(kind, key, result)


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_decode_does_not_raise_on_deeply_nested_json(opener: bytes, closer: bytes) -> None:
    depth = 5_000
    value = raw(valid("click"))[:-1] + b', "extra": ' + opener * depth + b"1" + closer * depth + b"}"
    assert len(value) < 65_536
    result = decode("click", b"u-1", value)
    assert isinstance(result, DeadLetter)


def test_an_impression_whose_clicks_were_not_shown_is_dead_lettered() -> None:
    payload = valid("impression") | {"clicked": ["i-2", "i-9"]}
    result = decode("impression", b"u-1", raw(payload))
    assert reason(result) == "schema"
    assert isinstance(result, DeadLetter) and "i-9" in result.message
    assert reason(decode("impression", b"u-1", raw(valid("impression") | {"items": []}))) == "schema"


# --- contract evolution (module docstring of state.events) --------------------------------


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_a_newer_minor_producer_is_read_by_this_worker(kind: EventKind) -> None:
    """v2 producer, v1 worker: new optional fields are ignored, the event is the same one."""
    plain = decode(kind, key_for(kind), raw(valid(kind)))
    assert not isinstance(plain, DeadLetter) and plain.v == "1.0"  # no `v`: written before versions
    newer = valid(kind) | {"v": "1.7", "device": "ios", "session": {"id": "s-9", "depth": [1, 2]}}
    got = decode(kind, key_for(kind), raw(newer))
    assert not isinstance(got, DeadLetter) and got.v == "1.7"
    assert msgspec_fields(got) == msgspec_fields(plain) | {"v": "1.7"}


def msgspec_fields(event: Event) -> dict[str, Any]:
    return {f: getattr(event, f) for f in event.__struct_fields__}


def test_an_older_producer_is_read_by_a_newer_worker() -> None:
    """v1 producer, v2 worker: the v2 contract's new optional field takes its default. The
    reader below is this build's Click plus one field, as the next minor revision would add it."""
    import msgspec

    class ClickV11(msgspec.Struct, frozen=True, tag_field="type", tag="click", kw_only=True):
        event_id: str
        ts: float
        v: str = "1.1"
        user_id: str
        item_id: str
        surface: str = "unknown"  # new in 1.1

    written = encode(Click(event_id="e", ts=5.0, user_id="u", item_id="i"))
    read = msgspec.json.decode(written, type=ClickV11)
    assert (read.event_id, read.user_id, read.item_id, read.v, read.surface) == ("e", "u", "i", "1.0", "unknown")


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("version", ["2.0", "0.9", "13.1"])
def test_another_major_is_dead_lettered_with_the_version_this_worker_reads(kind: EventKind, version: str) -> None:
    letter = decode(kind, key_for(kind), raw(valid(kind) | {"v": version}))
    assert reason(letter) == "incompatible_version"
    assert isinstance(letter, DeadLetter) and f"contract version {version}" in letter.message and "reads 1.x" in letter.message
    # A major revision may rename fields: the version is checked before the fields are.
    reshaped = {"type": kind, "v": version, "event_id": "e-1", "ts": 1.0, "actor": {"id": "u-1"}}
    assert reason(decode(kind, key_for(kind), raw(reshaped))) == "incompatible_version"


@pytest.mark.parametrize("version", [2, "two", "1", "1.0.3", "", None])
def test_a_malformed_version_is_a_schema_error(version: object) -> None:
    assert reason(decode("click", b"u-1", raw(valid("click") | {"v": version}))) == "schema"


def test_this_build_writes_its_contract_version() -> None:
    from state.events import CONTRACT_MAJOR, CONTRACT_VERSION

    doc = json.loads(encode(Click(event_id="e", ts=1.0, user_id="u", item_id="i")))
    assert doc["v"] == CONTRACT_VERSION and int(doc["v"].split(".")[0]) == CONTRACT_MAJOR
