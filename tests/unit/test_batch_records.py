"""Batch records (``state.batch``): one user's events in one record, applied event by event.

Expectations are computed independently: profiles by ``state.profile.apply`` over each user's
events one at a time, the shared state by the same events sent as records of one event, the
dead-letter reasons by the contract (``state.events.decode`` of each event alone).
"""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from scoring.messages import decode as decode_recs
from scoring.shared import Delta, SharedState, decode_record
from state.batch import BATCH_KINDS, decode_batch, decode_events, encode_events, is_batch
from state.codec import dumps, loads
from state.events import DeadLetter, Event, Follow, Purchase, Review, User, decode, encode
from state.profile import Origin, Params, Profile, apply, new_profile
from stream_app import metrics
from stream_app.batches import BATCH
from stream_app.dlq_ops import Letter
from stream_app.pipeline import APPLIED, Record
from stream_app.producer import UserBatches
from tests.unit.test_pipeline import _catalog, _pipeline, _purchases
from tests.unit.test_shared_snapshot import _deltas, _fresh, _reads

TOPIC = "t.purchases"


def _batch_record(events: list[Event], offset: int, partition: int = 0, key: str | None = None) -> Record:
    user = key if key is not None else events[0].user_id  # type: ignore[union-attr]
    return Record(TOPIC, partition, offset, user.encode(), encode_events(events), timestamp=max(e.ts for e in events) + 1)


def _without_watermarks(profile: Profile) -> Profile:
    return msgspec.structs.replace(profile, applied={}, applied_index={})


# --- the contract -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "reason", "says"),
    [
        (b"[" + b"1," * 600_000 + b"1]", "purchase", "oversized", "limit 1048576"),
        (b"[\xff]", "purchase", "bad_utf8", "not UTF-8"),
        (b"[{", "purchase", "bad_json", "not a JSON array"),
        (b"[]", "purchase", "schema", "empty batch"),
        (b" [ ] ", "purchase", "schema", "empty batch"),
        (b"[" + b",".join([b"{}"] * 1_001) + b"]", "purchase", "oversized", "1001 events, limit 1000"),
        (b"[{}]", "review", "schema", "one event per record"),
        (b"[{}]", "item", "schema", "one event per record"),
        (b"[{}]", "erasure", "schema", "one event per record"),
    ],
)
def test_a_record_that_is_no_usable_batch_is_one_dead_letter(value: bytes, kind: str, reason: str, says: str) -> None:
    assert is_batch(value)
    letter = decode_batch(kind, b"u1", value)  # type: ignore[arg-type]
    assert isinstance(letter, DeadLetter)
    assert letter.reason == reason and says in letter.message


def test_each_event_of_a_batch_is_checked_as_a_record_of_its_own_would_be() -> None:
    good = Purchase(event_id="a", ts=100.0, user_id="u1", item_id="m1")
    other_user = Purchase(event_id="b", ts=101.0, user_id="u2", item_id="m1")  # lands on u2's partition alone
    future = Purchase(event_id="c", ts=10_000_000.0, user_id="u1", item_id="m2")
    parts = [encode(good), b'{"type":"purchase","user_id":"u1"}', encode(other_user), b'{"type":"click"}', encode(future), b"[1]"]
    value = b"[" + b",".join(parts) + b"]"
    elements = decode_batch("purchase", b"u1", value, record_ts=200.0)
    assert not isinstance(elements, DeadLetter)
    assert [e.index for e in elements] == list(range(6))
    assert [e.raw for e in elements] == parts
    for element in elements:
        alone = decode("purchase", b"u1", element.raw, record_ts=200.0)
        if isinstance(alone, DeadLetter):
            assert isinstance(element.decoded, DeadLetter)
            assert element.decoded.reason == alone.reason
            assert element.decoded.message == f"batch element {element.index} of 6: {alone.message}"
        else:
            assert element.decoded == alone
    reasons = [getattr(e.decoded, "reason", "ok") for e in elements]
    assert reasons == ["ok", "schema", "key_mismatch", "unknown_type", "future_time", "schema"]


def test_a_batch_is_told_apart_from_one_event_by_its_first_non_blank_byte() -> None:
    e = Purchase(event_id="a", ts=1.0, user_id="u1", item_id="m1")
    assert not is_batch(encode(e)) and not is_batch(b"  \n" + encode(e)) and not is_batch(None) and not is_batch(b"")
    assert is_batch(encode_events([e])) and is_batch(b"\t\r\n [" + encode(e) + b"]")
    assert decode_events("purchase", b"u1", encode(e)) == [e]
    assert decode_events("purchase", b"u1", b"\n" + encode_events([e, e])) == [e, e]
    # A reader that takes one event per record says what a batch is on a topic without them.
    assert {"review", "item", "erasure"}.isdisjoint(BATCH_KINDS)


# --- the producer's batches ------------------------------------------------------------------


def test_user_batches_keep_each_users_order_and_bound_size_and_delay() -> None:
    rng = random.Random(5)
    events: list[Event] = []
    for j in range(3_000):
        user = f"u{rng.randrange(10)}"
        roll = rng.random()
        if roll < 0.6:
            events.append(Purchase(event_id=f"p{j}", ts=float(j), user_id=user, item_id=f"m{rng.randrange(50)}"))
        elif roll < 0.8:
            events.append(Follow(event_id=f"f{j}", ts=float(j), user_id=user, followee_id=f"u{rng.randrange(10)}"))
        else:
            events.append(Review(event_id=f"r{j}", ts=float(j), user_id=user, item_id="m1", text="fine"))
    batcher = UserBatches(size=8, linger=40)
    arrival = {e.event_id: n for n, e in enumerate(events, 1)}
    out: list[tuple[str, str, list[Event], int]] = []
    for n, e in enumerate(events, 1):
        out += [(k, u, g, n) for k, u, g in batcher.add(e)]
    out += [(k, u, g, len(events)) for k, u, g in batcher.drain()]
    sent = [e.event_id for _, _, g, _ in out for e in g]
    assert sorted(sent) == sorted(arrival) and len(sent) == len(set(sent))  # each event once
    for kind, user, group, at in out:
        assert 1 <= len(group) <= 8
        assert all(e.user_id == user for e in group)  # type: ignore[union-attr]
        if kind == "review":
            assert len(group) == 1  # reviews take one event per record
        assert at - arrival[group[0].event_id] <= 40  # no event waited longer than the linger
    # Per user and kind, the records' events in sending order are the stream's order.
    per: dict[tuple[str, str], list[str]] = {}
    for kind, user, group, _ in out:
        per.setdefault((kind, user), []).extend(e.event_id for e in group)
    for (kind, user), ids in per.items():
        want = [e.event_id for e in events if e.user_id == user and type(e).__name__.lower() == kind]  # type: ignore[union-attr]
        assert ids == want
    sizes = Counter(len(g) for k, _, g, _ in out if k != "review")
    assert sizes[8] > 0 and sum(n for size, n in sizes.items() if size < 8) > 0  # both the size and the linger cut


# --- the pipeline ---------------------------------------------------------------------------


def _grouped(events: list[Purchase], size: int) -> list[list[Purchase]]:
    batcher = UserBatches(size)
    groups: list[list[Purchase]] = []
    for e in events:
        groups += [g for _, _, g in batcher.add(e)]  # type: ignore[misc]
    return groups + [g for _, _, g in batcher.drain()]  # type: ignore[misc]


def test_batch_records_build_the_profiles_and_shared_state_of_the_same_events_one_per_record() -> None:
    events = _purchases(400, seed=3)
    groups = _grouped(events, 5)
    assert max(len(g) for g in groups) == 5 and len(groups) < len(events) / 2
    batched, store, _, _ = _pipeline(ranker="blend")
    for offset, group in enumerate(groups):
        result = batched.process("purchase", _batch_record(group, offset))  # type: ignore[arg-type]
        assert result.outcome == BATCH and not result.element_letters
    # Independently: each user's events through apply, in the order the batches carried them.
    catalog = _catalog()
    truth: dict[str, Profile] = {}
    for group in groups:
        for e in group:
            p = truth.get(e.user_id) or new_profile(e.user_id)
            nxt = apply(p, e, origin=None, categories=catalog.categories(e.item_id), params=Params())
            assert nxt is not None
            truth[e.user_id] = nxt
    assert {k.decode(): _without_watermarks(v) for k, v in store.profiles.items()} == truth
    # Watermarks: the last record of each user, applied to its end (no index left).
    last = {g[0].user_id: offset for offset, g in enumerate(groups)}
    assert {k.decode(): v.applied for k, v in store.profiles.items()} == {u: {f"{TOPIC}:0": o} for u, o in last.items()}
    assert all(not v.applied_index for v in store.profiles.values())
    # The shared state equals one fed the same events one per record, in the same order.
    single, _, _, _ = _pipeline(ranker="blend")
    for offset, e in enumerate(e for g in groups for e in g):
        assert single.process("purchase", Record(TOPIC, 0, offset, e.user_id.encode(), encode(e), e.ts + 1)).outcome == APPLIED
    ours, theirs = _reads(batched.shared), _reads(single.shared)
    ours.pop("summary"), theirs.pop("summary")
    assert ours == theirs


def test_a_batch_half_applied_before_a_crash_applies_only_its_rest_when_read_again() -> None:
    published: list[Delta] = []
    pipe, store, _, _ = _pipeline(published=published)
    group = [Purchase(event_id=f"p{j}", ts=10_000.0 + j, user_id="u1", item_id=f"m{j}") for j in range(4)]
    record = _batch_record(group, offset=7)  # type: ignore[arg-type]
    # What a crash after two of the four events leaves: those two applied at (7, 0) and (7, 1).
    for j in range(2):
        pipe.apply_event(group[j], Origin(TOPIC, 0, 7, j, 4), 0, record.timestamp)
    assert store.profiles[b"u1"].applied_index == {f"{TOPIC}:0": 1}
    assert pipe.shared.applied == 2
    result = pipe.process("purchase", record)
    assert result.outcome == BATCH
    profile = store.profiles[b"u1"]
    want = new_profile("u1")
    for e in group:
        nxt = apply(want, e, origin=None, categories=_catalog().categories(e.item_id), params=Params())
        assert nxt is not None
        want = nxt
    assert _without_watermarks(profile) == want and profile.version == 4
    assert profile.applied == {f"{TOPIC}:0": 7} and profile.applied_index == {}
    # The shared state took m0 and m1 before the crash and m2, m3 now: as one that read the
    # record once.
    assert pipe.shared.applied == 4 and pipe.shared.skipped == 0
    once, _, _, _ = _pipeline()
    once.process("purchase", record)
    assert [pipe.popularity.value(f"m{j}") for j in range(4)] == [once.popularity.value(f"m{j}") for j in range(4)]
    assert [pipe.knn.count(f"m{j}") for j in range(4)] == [1, 1, 1, 1]
    assert [(d.offset, d.index, d.of) for d in published] == [(7, j, 4) for j in range(4)]
    # The whole record again: nothing moves.
    versions = profile.version
    pipe.process("purchase", record)
    assert store.profiles[b"u1"].version == versions


def test_an_event_that_fails_alone_is_dead_lettered_with_its_index_and_the_others_are_applied() -> None:
    pipe, store, _, _ = _pipeline()
    good = [Purchase(event_id=f"p{j}", ts=10_000.0 + j, user_id="u1", item_id=f"m{j}") for j in range(3)]
    stray = Purchase(event_id="x", ts=10_000.5, user_id="u2", item_id="m9")
    parts = [encode(good[0]), encode(stray), encode(good[1]), b'{"type":"purchase","user_id":"u1","item_id":"m5"}', encode(good[2])]
    record = Record(TOPIC, 0, 3, b"u1", b"[" + b",".join(parts) + b"]", timestamp=20_000.0)
    before = metrics.DEAD_LETTERS.labels("key_mismatch")._value.get()
    result = pipe.process("purchase", record)
    letters = [(i, raw, letter.reason) for i, raw, letter in result.element_letters]
    assert letters == [(1, parts[1], "key_mismatch"), (3, parts[3], "schema")]
    assert metrics.DEAD_LETTERS.labels("key_mismatch")._value.get() == before + 1
    assert set(store.profiles) == {b"u1"} and set(store.profiles[b"u1"].purchased) == {"m0", "m1", "m2"}
    # A record of a topic without batches is one dead letter, whole.
    whole = pipe.process("review", Record("t.reviews", 0, 4, b"u1", b"[" + encode(good[0]) + b"]", timestamp=20_000.0))
    assert whole.letter is not None and whole.letter.reason == "schema" and not whole.element_letters


def test_mixed_kinds_of_batch_apply_follows_and_attributes_too() -> None:
    pipe, store, _, _ = _pipeline()
    follows = [Follow(event_id=f"f{j}", ts=100.0 + j, user_id="u1", followee_id=f"u{j + 2}") for j in range(3)]
    attrs = [
        User(event_id="a1", ts=100.0, user_id="u1", attributes={"age": 30}),
        User(event_id="a2", ts=101.0, user_id="u1", attributes={"age": 31}),
    ]
    pipe.process("follow", Record("t.follows", 0, 0, b"u1", encode_events(follows), 200.0))
    pipe.process("user", Record("t.users", 0, 0, b"u1", encode_events(attrs), 200.0))
    profile = store.profiles[b"u1"]
    assert set(profile.following) == {"u2", "u3", "u4"} and profile.attributes == {"age": 31}
    assert profile.applied == {"t.follows:0": 0, "t.users:0": 0} and profile.version == 5


# --- watermarks: profiles written before batches, and the shared state -------------------------


def test_a_profile_written_before_batch_records_reads_its_watermark_as_whole_records() -> None:
    old = bytes((1,)) + msgspec.msgpack.encode({"user_id": "u1", "version": 1, "applied": {f"{TOPIC}:0": 9}})
    profile = loads(old)
    assert profile.applied_index == {}
    e = Purchase(event_id="p", ts=1.0, user_id="u1", item_id="m1")
    assert apply(profile, e, origin=Origin(TOPIC, 0, 9), categories=(), params=Params()) is None  # a replay
    assert apply(profile, e, origin=Origin(TOPIC, 0, 10, 0, 3), categories=(), params=Params()) is not None
    half = apply(profile, e, origin=Origin(TOPIC, 0, 10, 0, 3), categories=(), params=Params())
    assert half is not None and loads(dumps(half)).applied_index == {f"{TOPIC}:0": 0}


def _batched_deltas(n: int, seed: int) -> list[Delta]:
    """``_deltas`` regrouped as batch records: runs of 1 to 6 deltas of one source share an offset."""
    rng = random.Random(seed)
    out: list[Delta] = []
    offsets: dict[str, int] = {}
    pending = _deltas(n, seed)
    while pending:
        size = min(rng.randint(1, 6), len(pending))
        group, pending = pending[:size], pending[size:]
        source = group[0].source
        offset = offsets[source] = offsets.get(source, -1) + 1
        out += [msgspec.structs.replace(d, source=source, offset=offset, index=j, of=size) for j, d in enumerate(group)]
    return out


@pytest.mark.parametrize("cut", [1, 137, 301, 599])
def test_a_shared_state_restored_inside_a_batch_then_fed_from_the_batchs_start_equals_one_fed_everything(cut: int) -> None:
    deltas = _batched_deltas(600, seed=cut)
    assert any(d.index > 0 for d in deltas)
    full = _fresh()
    assert all(full.apply(d) for d in deltas)
    first = _fresh()
    for d in deltas[:cut]:
        first.apply(d)
    restored = _fresh()
    restored.restore(first.snapshot())
    # A reader starts again at the record of the delta the snapshot stopped inside.
    start = cut - deltas[cut].index
    for d in deltas[start:]:
        restored.apply(d)
    ours, theirs = _reads(restored), _reads(full)
    ours.pop("summary"), theirs.pop("summary")
    assert ours == theirs


def test_dead_letters_of_two_events_of_one_batch_are_two_redrive_identities() -> None:
    def letter(index: str | None) -> Letter:
        headers = {"persona.source.topic": TOPIC, "persona.source.partition": "0", "persona.source.offset": "5"}
        if index is not None:
            headers["persona.source.batch.index"] = index
        return Letter(dlq_topic=TOPIC + ".dlq", partition=0, offset=0, timestamp_ms=0, key=b"u1", value=b"{}", headers=headers)

    assert letter(None).origin == f"{TOPIC}:0:5"
    assert letter("1").origin == f"{TOPIC}:0:5:1" != letter("3").origin


def test_deltas_of_a_batch_round_trip_with_their_place_and_old_deltas_read_as_whole_records() -> None:
    from scoring.shared import encode_delta

    d = Delta(source="s:0", offset=4, index=2, of=5, kind="engage", user="u1", ts=1.0, item="m1")
    assert decode_record(encode_delta(d)) == [d]
    old = msgspec.msgpack.encode({"source": "s:0", "offset": 4, "kind": "engage", "user": "u1", "ts": 1.0, "item": "m1"})
    (read,) = decode_record(old)
    assert (read.index, read.of) == (0, 1)
    state: SharedState = _fresh()
    assert state.apply(read) and not state.apply(read)


def test_a_batch_is_ranked_once_after_its_last_event_not_after_each() -> None:
    """A list ranked on the first of a batch's events is stale before it is sent: the user's
    change is offered to the coalescer once, with the batch's latest event time."""
    group = [Purchase(event_id=f"p{j}", ts=10_000.0 + (j * 7) % 5, user_id="u1", item_id=f"m{j}") for j in range(5)]
    batched, store, sent, _ = _pipeline()  # interval 0: every offer emits
    assert batched.process("purchase", _batch_record(group, 0)).emitted  # type: ignore[arg-type]
    assert len(sent) == 1
    msg = decode_recs(sent[0][1])
    assert msg.profile_version == 5 == store.profiles[b"u1"].version
    assert msg.trigger_event_ts == max(e.ts for e in group)
    assert not {s.item_id for s in msg.items} & {e.item_id for e in group}
    single, _, one_each, _ = _pipeline()
    for offset, e in enumerate(group):
        single.process("purchase", Record(TOPIC, 0, offset, b"u1", encode(e), e.ts + 1))
    assert len(one_each) == 5 and decode_recs(one_each[-1][1]).items == msg.items
