"""The profile fold: idempotency, decay against the closed form, order independence, codec."""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from functools import reduce
from typing import Any, Literal, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.codec import SCHEMA_VERSION, SchemaVersionError, dumps, loads
from state.decay import SECONDS_PER_DAY, closed_form
from state.errors import PersonaError, StateError
from state.events import AttributeValue, Click, DeadLetter, Event, Follow, Item, Purchase, Review, User, decode, encode, kind_of
from state.profile import DEFAULT_PARAMS, EVENT_WEIGHTS, Origin, Params, Profile, apply, is_duplicate, new_profile

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

USER = "u"
ITEMS = ["i0", "i1", "i2", "i3", "i4", "i5"]
CATEGORIES = ["a", "b", "c", "d"]
FOLLOWEES = ["f0", "f1", "f2"]
ATTR_KEYS = ["age", "city", "vip"]
ACTIONS: tuple[Literal["follow", "unfollow"], ...] = ("follow", "unfollow")
BEHAVIOUR = ("click", "purchase", "review")
ALL_KINDS = ("click", "purchase", "review", "follow", "user")

# Event times up to ~3 years: wide enough for heavy decay, narrow enough that nothing underflows.
times = st.floats(min_value=0.0, max_value=1e8, allow_nan=False, allow_infinity=False)
half_lives = st.floats(min_value=0.5, max_value=365.0)


class Step(NamedTuple):
    """One record as the worker sees it: the event, where it was read, its item's categories."""

    event: Event
    origin: Origin | None
    categories: tuple[str, ...]


def fold(profile: Profile, steps: list[Step], params: Params = DEFAULT_PARAMS) -> Profile:
    """Reduce over ``apply``; a duplicate (``None``) leaves the profile as it was."""

    def step(acc: Profile, s: Step) -> Profile:
        out = apply(acc, s.event, origin=s.origin, categories=s.categories, params=params)
        return acc if out is None else out

    return reduce(step, steps, profile)


def with_arrival_offsets(steps: list[Step], partition: int = 0) -> list[Step]:
    """Give each record an offset that increases per ``topic:partition`` in list order."""
    counters: dict[str, itertools.count[int]] = {}
    out = []
    for s in steps:
        topic = f"persona.{kind_of(s.event)}s"
        offset = next(counters.setdefault(topic, itertools.count()))
        out.append(s._replace(origin=Origin(topic, partition, offset)))
    return out


@st.composite
def catalogs(draw: st.DrawFn) -> dict[str, tuple[str, ...]]:
    return {
        item: tuple(draw(st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=3))) for item in ITEMS
    }


@st.composite
def histories(
    draw: st.DrawFn,
    kinds: tuple[str, ...] = ALL_KINDS,
    min_size: int = 0,
    max_size: int = 25,
    origins: bool = True,
) -> list[Step]:
    """A user's records in arrival order, with distinct event ids and per-source increasing offsets."""
    catalog = draw(catalogs())
    n = draw(st.integers(min_value=min_size, max_value=max_size))
    partition = draw(st.integers(min_value=0, max_value=3))
    last_offset: dict[str, int] = {}
    steps: list[Step] = []
    for i in range(n):
        kind = draw(st.sampled_from(kinds))
        ts = draw(times)
        eid = f"e{i}"
        item = draw(st.sampled_from(ITEMS))
        event: Event
        if kind == "click":
            event = Click(event_id=eid, ts=ts, user_id=USER, item_id=item)
        elif kind == "purchase":
            price = draw(st.none() | st.floats(min_value=0.0, max_value=1e4))
            quantity = draw(st.integers(min_value=1, max_value=5))
            event = Purchase(event_id=eid, ts=ts, user_id=USER, item_id=item, price=price, quantity=quantity)
        elif kind == "review":
            rating = draw(st.none() | st.floats(min_value=1.0, max_value=5.0))
            event = Review(event_id=eid, ts=ts, user_id=USER, item_id=item, text="t", rating=rating)
        elif kind == "follow":
            followee = draw(st.sampled_from(FOLLOWEES))
            action = draw(st.sampled_from(ACTIONS))
            event = Follow(event_id=eid, ts=ts, user_id=USER, followee_id=followee, action=action)
        else:
            attrs: dict[str, AttributeValue] = draw(st.dictionaries(st.sampled_from(ATTR_KEYS), st.integers(0, 99) | st.text(max_size=3)))
            event = User(event_id=eid, ts=ts, user_id=USER, attributes=attrs)
        categories = catalog[item] if kind in BEHAVIOUR else ()
        origin = None
        if origins:
            topic = f"persona.{kind}s"
            offset = last_offset.get(topic, -1) + draw(st.integers(min_value=1, max_value=4))
            last_offset[topic] = offset
            origin = Origin(topic, partition, offset)
        steps.append(Step(event, origin, categories))
    return steps


def assert_affinity_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for c, value in expected.items():
        assert math.isclose(got[c], value, rel_tol=1e-9, abs_tol=0.0), (c, got[c], value)


# --- (a) fold = sequential application ------------------------------------------------------


@FAST
@given(steps=histories(), split=st.integers(min_value=0, max_value=25))
def test_fold_equals_sequential_application_through_the_store(steps: list[Step], split: int) -> None:
    folded = fold(new_profile(USER), steps)
    # The worker's loop: load, apply, store - the profile crosses the codec between events.
    stored = dumps(new_profile(USER))
    for s in steps:
        out = apply(loads(stored), s.event, origin=s.origin, categories=s.categories)
        assert out is not None  # distinct ids and increasing offsets: nothing is a duplicate
        stored = dumps(out)
    assert loads(stored) == folded
    # A fold is a homomorphism over concatenation.
    k = min(split, len(steps))
    assert fold(fold(new_profile(USER), steps[:k]), steps[k:]) == folded
    # Independent bookkeeping.
    assert folded.version == len(steps)
    assert folded.counts == dict(Counter(kind_of(s.event) for s in steps))
    if steps:
        assert folded.first_event_ts == min(s.event.ts for s in steps)
        assert folded.last_event_ts == max(s.event.ts for s in steps)
    else:
        assert folded == new_profile(USER)


@FAST
@given(steps=histories())
def test_scalar_fields_match_the_raw_events(steps: list[Step]) -> None:
    p = fold(new_profile(USER), steps)
    events = [s.event for s in steps]
    purchases = [e for e in events if isinstance(e, Purchase)]
    ratings = [e.rating for e in events if isinstance(e, Review) and e.rating is not None]
    assert p.purchase_value == pytest.approx(
        math.fsum(e.price * e.quantity for e in purchases if e.price is not None), rel=1e-12, abs=1e-9
    )
    assert p.rating_count == len(ratings)
    assert p.rating_sum == pytest.approx(math.fsum(ratings), rel=1e-12)
    expected_purchased: dict[str, float] = {}
    for e in purchases:
        expected_purchased[e.item_id] = max(expected_purchased.get(e.item_id, e.ts), e.ts)
    assert p.purchased == expected_purchased
    expected_recency: dict[str, float] = {}
    for ev in events:
        kind = kind_of(ev)
        expected_recency[kind] = max(expected_recency.get(kind, ev.ts), ev.ts)
    assert p.recency == expected_recency
    expected_applied: dict[str, int] = {}
    for s in steps:
        assert s.origin is not None
        expected_applied[s.origin.source] = max(expected_applied.get(s.origin.source, -1), s.origin.offset)
    assert p.applied == expected_applied


def test_apply_rejects_catalog_events_and_other_users() -> None:
    with pytest.raises(TypeError):
        apply(new_profile(USER), Item(event_id="e", ts=1.0, item_id="i"), origin=None)
    with pytest.raises(ValueError):
        apply(new_profile(USER), Click(event_id="e", ts=1.0, user_id="other", item_id="i"), origin=None)


# --- (b) duplicates and crash replays --------------------------------------------------------


@FAST
@given(steps=histories(min_size=1), data=st.data())
def test_reapplying_an_applied_event_is_a_no_op(steps: list[Step], data: st.DataObject) -> None:
    p = fold(new_profile(USER), steps)
    s = data.draw(st.sampled_from(steps))
    assert s.origin is not None
    # The same record again (a replay).
    assert is_duplicate(p, s.event, s.origin)
    assert apply(p, s.event, origin=s.origin, categories=s.categories) is None
    # The same logical event resent by the producer as a new record (higher offset).
    bump = data.draw(st.integers(min_value=1, max_value=1000))
    resent = Origin(s.origin.topic, s.origin.partition, p.applied[s.origin.source] + bump)
    assert apply(p, s.event, origin=resent, categories=s.categories) is None
    # ... or read with no origin at all.
    assert apply(p, s.event, origin=None, categories=s.categories) is None


@FAST
@given(steps=histories(), data=st.data(), window=st.sampled_from([0, 1, 32]))
def test_replay_after_crash_converges_to_the_no_crash_profile(
    steps: list[Step], data: st.DataObject, window: int
) -> None:
    """State was stored up to record ``j``, offsets committed up to ``c <= j``; the restart replays
    from ``c``. The watermark alone must make this harmless (window 0 remembers no ids)."""
    params = Params(dedupe_window=window)
    expected = fold(new_profile(USER), steps, params)
    j = data.draw(st.integers(min_value=0, max_value=len(steps)))
    c = data.draw(st.integers(min_value=0, max_value=j))
    stored = loads(dumps(fold(new_profile(USER), steps[:j], params)))
    for s in steps[c:j]:
        assert apply(stored, s.event, origin=s.origin, categories=s.categories, params=params) is None
    assert fold(stored, steps[c:], params) == expected
    # A second crash during the replay changes nothing either.
    k = data.draw(st.integers(min_value=c, max_value=len(steps)))
    again = fold(stored, steps[c:k], params)
    assert fold(again, steps[c:], params) == expected


@FAST
@given(steps=histories(min_size=1, max_size=20), data=st.data())
def test_producer_resends_are_dropped(steps: list[Step], data: st.DataObject) -> None:
    """Resending events as new records (new offsets, same ids) leaves the profile as without them."""
    resent = data.draw(st.lists(st.sampled_from(range(len(steps))), max_size=6))
    stream: list[Step] = list(steps)
    for idx in resent:
        # Put each copy anywhere after its original.
        pos = data.draw(st.integers(min_value=idx + 1, max_value=len(stream)))
        original = steps[idx]
        at = stream.index(original) + 1
        stream.insert(max(at, pos), original)
    stream = with_arrival_offsets(stream)
    clean = fold(new_profile(USER), with_arrival_offsets(steps))
    noisy = fold(new_profile(USER), stream)
    ignore = {"applied"}  # the duplicates' offsets differ; nothing else may
    for name in Profile.__struct_fields__:
        if name not in ignore:
            assert getattr(noisy, name) == getattr(clean, name), name


# --- (c) decay against the closed form --------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=histories(kinds=BEHAVIOUR, max_size=30, origins=False), half_life=half_lives)
def test_affinity_matches_the_closed_form(steps: list[Step], half_life: float) -> None:
    params = Params(half_life_days=half_life)
    p = fold(new_profile(USER), steps, params)
    with_cats = [s for s in steps if s.categories]
    ref = max((s.event.ts for s in with_cats), default=0.0)
    assert p.affinity_ref_ts == max(ref, 0.0)
    hl = half_life * SECONDS_PER_DAY
    expected: dict[str, float] = {}
    for c in {c for s in with_cats for c in s.categories}:
        pairs = [
            (s.event.ts, EVENT_WEIGHTS[kind_of(s.event)] / len(s.categories))
            for s in with_cats
            if c in s.categories
        ]
        expected[c] = closed_form(pairs, ref, hl)
    assert_affinity_close(p.affinity, expected)
    # And decayed further: affinity_at() is the closed form at a later time.
    later = ref + 3.7 * hl
    at_later = p.affinity_at(later, params)
    for c, value in expected.items():
        assert math.isclose(at_later[c], value * 2.0 ** -3.7, rel_tol=1e-9)


def test_affinity_halves_after_one_half_life() -> None:
    params = Params(half_life_days=10.0)
    hl = 10.0 * SECONDS_PER_DAY
    p = apply(new_profile(USER), Click(event_id="a", ts=1000.0, user_id=USER, item_id="x"),
              origin=None, categories=("books",), params=params)
    assert p is not None
    assert p.affinity == {"books": 1.0}
    assert p.affinity_at(1000.0 + hl, params)["books"] == pytest.approx(0.5, rel=1e-12)
    # A purchase one half-life later: old click counts half, purchase weight 3 split over 2 categories.
    q = apply(p, Purchase(event_id="b", ts=1000.0 + hl, user_id=USER, item_id="y"),
              origin=None, categories=("books", "music"), params=params)
    assert q is not None
    assert q.affinity_ref_ts == 1000.0 + hl
    assert q.affinity["books"] == pytest.approx(0.5 + 1.5, rel=1e-12)
    assert q.affinity["music"] == pytest.approx(1.5, rel=1e-12)
    # A late review from before the first click adds its weight decayed to the reference.
    r = apply(q, Review(event_id="c", ts=1000.0 - hl, user_id=USER, item_id="z", text="t"),
              origin=None, categories=("music",), params=params)
    assert r is not None
    assert r.affinity_ref_ts == 1000.0 + hl
    assert r.affinity["music"] == pytest.approx(1.5 + 2.0 / 4, rel=1e-12)


def test_events_without_categories_leave_affinity_alone() -> None:
    p = apply(new_profile(USER), Click(event_id="a", ts=50.0, user_id=USER, item_id="x"), origin=None)
    assert p is not None
    assert p.affinity == {} and p.affinity_ref_ts == 0.0 and p.counts == {"click": 1}


# --- (d) order independence --------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=histories(kinds=BEHAVIOUR, max_size=20, origins=False),
    data=st.data(),
    use_origins=st.booleans(),
)
def test_any_arrival_order_gives_the_same_profile(steps: list[Step], data: st.DataObject, use_origins: bool) -> None:
    """Behaviour events; follows and attributes have their own tests below."""
    shuffled = data.draw(st.permutations(steps))
    if use_origins:
        a = fold(new_profile(USER), with_arrival_offsets(steps))
        b = fold(new_profile(USER), with_arrival_offsets(list(shuffled)))
        assert a.applied == b.applied
    else:
        a = fold(new_profile(USER), steps)
        b = fold(new_profile(USER), list(shuffled))
    assert a.affinity_ref_ts == b.affinity_ref_ts
    assert_affinity_close(b.affinity, a.affinity)
    assert a.counts == b.counts
    assert a.purchased == b.purchased
    assert a.recency == b.recency
    assert a.version == b.version
    assert (a.first_event_ts, a.last_event_ts) == (b.first_event_ts, b.last_event_ts)
    assert a.rating_count == b.rating_count
    assert b.rating_sum == pytest.approx(a.rating_sum, rel=1e-12)
    assert b.purchase_value == pytest.approx(a.purchase_value, rel=1e-12, abs=1e-9)
    assert sorted(a.recent_ids) == sorted(b.recent_ids)


# --- (e) follow / unfollow ---------------------------------------------------------------------


def _follow(eid: str, ts: float, action: str = "follow", who: str = "f0") -> Follow:
    return Follow(event_id=eid, ts=ts, user_id=USER, followee_id=who, action=action)  # type: ignore[arg-type]


def _run(*events: Event) -> Profile:
    return fold(new_profile(USER), [Step(e, None, ()) for e in events])


def test_follow_then_unfollow_then_follow_in_order() -> None:
    assert _run(_follow("a", 10.0)).following == {"f0": 10.0}
    assert _run(_follow("a", 10.0), _follow("b", 20.0, "unfollow")).following == {}
    assert _run(_follow("a", 10.0), _follow("b", 20.0, "unfollow"), _follow("c", 30.0)).following == {"f0": 30.0}


def test_late_unfollow_older_than_the_follow_does_not_remove_it() -> None:
    assert _run(_follow("a", 20.0), _follow("b", 10.0, "unfollow")).following == {"f0": 20.0}


def test_unfollow_at_the_same_time_removes() -> None:
    assert _run(_follow("a", 20.0), _follow("b", 20.0, "unfollow")).following == {}


def test_repeated_follows_keep_the_latest_time_and_others_are_untouched() -> None:
    p = _run(_follow("a", 20.0), _follow("b", 5.0), _follow("c", 7.0, who="f1"), _follow("d", 9.0, "unfollow", "f2"))
    assert p.following == {"f0": 20.0, "f1": 7.0}
    assert p.counts == {"follow": 4}


@pytest.mark.parametrize(
    "arrival",
    [
        ("follow@10", "unfollow@20", "follow@5"),  # late follow after the unfollow
        ("unfollow@20", "follow@10"),  # unfollow delivered before the follow it undoes
    ],
)
def test_late_follow_cannot_resurrect_a_newer_unfollow(arrival: tuple[str, ...]) -> None:
    events = []
    for i, spec in enumerate(arrival):
        action, ts = spec.split("@")
        events.append(_follow(f"e{i}", float(ts), action))
    # Event-time truth: the latest action (unfollow@20) wins.
    assert _run(*events).following == {}


# --- (f) attributes -----------------------------------------------------------------------------


def _user(eid: str, ts: float, **attrs: Any) -> User:
    return User(event_id=eid, ts=ts, user_id=USER, attributes=attrs)


def test_later_attribute_values_win_per_key() -> None:
    p = _run(_user("a", 1.0, age=30, city="Oslo"), _user("b", 2.0, age=31, vip=True))
    assert p.attributes == {"age": 31, "city": "Oslo", "vip": True}
    assert type(p.attributes["vip"]) is bool
    assert _run(_user("a", 1.0, age=30), _user("b", 2.0)).attributes == {"age": 30}


def test_late_older_attribute_does_not_overwrite_a_newer_one() -> None:
    p = _run(_user("b", 2.0, age=31), _user("a", 1.0, age=30, city="Oslo"))
    assert p.attributes == {"age": 31, "city": "Oslo"}


# --- (g) apply never mutates ----------------------------------------------------------------------


@FAST
@given(steps=histories(min_size=1), data=st.data())
def test_apply_never_mutates_its_input(steps: list[Step], data: st.DataObject) -> None:
    base = fold(new_profile(USER), steps[:-1])
    snapshot = copy.deepcopy(base)
    wire = dumps(base)
    last = steps[-1]
    # Either the new event or a duplicate of an old one.
    s = data.draw(st.sampled_from([last, steps[0]]))
    out = apply(base, s.event, origin=s.origin, categories=s.categories, params=Params(dedupe_window=3))
    assert base == snapshot
    assert dumps(base) == wire
    if out is not None:
        assert out is not base
        # The result shares no mutable container with the input.
        for name in Profile.__struct_fields__:
            value = getattr(out, name)
            if isinstance(value, (dict, list)):
                assert value is not getattr(base, name), name
                value.clear()
        assert base == snapshot


# --- (h) codec ---------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
keys = st.text(max_size=12)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
profiles = st.builds(
    Profile,
    user_id=st.text(min_size=1, max_size=24),
    version=st.integers(min_value=0, max_value=2**63 - 1),
    first_event_ts=st.none() | finite,
    last_event_ts=finite,
    counts=st.dictionaries(keys, st.integers(min_value=0, max_value=2**63 - 1), max_size=5),
    affinity_ref_ts=finite,
    affinity=st.dictionaries(keys, finite, max_size=5),
    recency=st.dictionaries(keys, finite, max_size=5),
    purchase_value=finite,
    purchased=st.dictionaries(keys, finite, max_size=5),
    rating_sum=finite,
    rating_count=st.integers(min_value=0, max_value=2**31),
    attributes=st.dictionaries(keys, st.text(max_size=8) | int64 | finite | st.booleans(), max_size=5),
    following=st.dictionaries(keys, finite, max_size=5),
    applied=st.dictionaries(keys, int64, max_size=5),
    recent_ids=st.lists(st.text(max_size=12), max_size=8),
)


@settings(max_examples=150, deadline=None)
@given(p=profiles)
def test_codec_round_trip(p: Profile) -> None:
    data = dumps(p)
    assert data[0] == SCHEMA_VERSION
    back = loads(data)
    assert back == p
    assert {k: type(v) for k, v in back.attributes.items()} == {k: type(v) for k, v in p.attributes.items()}
    assert dumps(back) == data


@FAST
@given(steps=histories())
def test_codec_round_trip_of_folded_profiles(steps: list[Step]) -> None:
    p = fold(new_profile(USER), steps)
    assert loads(dumps(p)) == p


@given(version=st.integers(min_value=0, max_value=255).filter(lambda v: v != SCHEMA_VERSION), p=profiles)
@settings(max_examples=40, deadline=None)
def test_unknown_schema_byte_raises(version: int, p: Profile) -> None:
    data = bytes((version,)) + dumps(p)[1:]
    with pytest.raises(SchemaVersionError):
        loads(data)


def test_empty_record_raises_and_schema_error_is_a_state_error() -> None:
    with pytest.raises(StateError, match="empty"):
        loads(b"")
    assert issubclass(SchemaVersionError, StateError) and issubclass(StateError, PersonaError)


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30])
def test_every_accepted_user_event_gives_a_storable_profile(big: int) -> None:
    value = b'{"type":"user","event_id":"e","ts":1,"user_id":"u","attributes":{"n":%d}}' % big
    event = decode("user", b"u", value)
    if isinstance(event, DeadLetter):
        assert event.reason == "schema"  # rejecting it at the contract is a fine fix too
        return
    p = apply(new_profile(USER), event, origin=None)
    assert p is not None
    assert loads(dumps(p)) == p


@pytest.mark.parametrize("edge", [2**63 - 1, -(2**63)])
def test_integer_attributes_at_the_msgpack_limits_are_stored(edge: int) -> None:
    event = decode("user", b"u", encode(User(event_id="e", ts=1.0, user_id=USER, attributes={"n": edge})))
    assert isinstance(event, User)
    p = apply(new_profile(USER), event, origin=None)
    assert p is not None and loads(dumps(p)).attributes == {"n": edge}


# --- (i) the dedupe window is bounded -----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(window=st.integers(min_value=1, max_value=8), n=st.integers(min_value=0, max_value=20))
def test_dedupe_window_is_bounded(window: int, n: int) -> None:
    params = Params(dedupe_window=window)
    events = [Click(event_id=f"e{i}", ts=float(i), user_id=USER, item_id="x") for i in range(n)]
    p = fold(new_profile(USER), [Step(e, None, ()) for e in events], params)
    remembered = [e.event_id for e in events[-window:]] if n else []
    assert p.recent_ids == remembered
    for i, e in enumerate(events):
        again = apply(p, e, origin=None, params=params)
        if i >= n - window:
            assert again is None, i
        else:
            # Forgotten: a resend from further back than the window is applied again.
            assert again is not None and again.counts["click"] == n + 1


def test_dedupe_window_zero_remembers_nothing() -> None:
    params = Params(dedupe_window=0)
    e = Click(event_id="e", ts=1.0, user_id=USER, item_id="x")
    p = apply(new_profile(USER), e, origin=None, params=params)
    assert p is not None and p.recent_ids == []
    assert apply(p, e, origin=None, params=params) is not None


@pytest.mark.parametrize("window", [0, 2])
def test_watermark_catches_replays_beyond_the_window(window: int) -> None:
    params = Params(dedupe_window=window)
    steps = with_arrival_offsets([Step(Click(event_id=f"e{i}", ts=float(i), user_id=USER, item_id="x"), None, ())
                                  for i in range(10)])
    p = fold(new_profile(USER), steps, params)
    assert len(p.recent_ids) == window
    for s in steps:  # ids long forgotten, offsets still at or below the watermark
        assert apply(p, s.event, origin=s.origin, params=params) is None
    # Another partition of the same topic has its own watermark.
    first = steps[0]
    assert first.origin is not None
    other = Origin(first.origin.topic, first.origin.partition + 1, 0)
    assert apply(p, first.event, origin=other, params=params) is not None


def test_default_window_is_32() -> None:
    assert Params().dedupe_window == 32
    events = [Step(Click(event_id=f"e{i}", ts=0.0, user_id=USER, item_id="x"), None, ()) for i in range(40)]
    assert len(fold(new_profile(USER), events).recent_ids) == 32


def test_event_and_rating_weights_are_settings_not_constants() -> None:
    from stream_app.settings import Settings

    params = Settings(event_weights={"click": 0.5, "purchase": 4.0, "review": 2.0}, rating_weights={1: 0.0, 2: 0.25}).params()
    p = new_profile("u")
    review_low = Review(event_id="r1", ts=100.0, user_id="u", item_id="i", text="bad", rating=1.0)
    review_two = Review(event_id="r2", ts=100.0, user_id="u", item_id="j", text="meh", rating=2.0)
    buy = Purchase(event_id="p1", ts=100.0, user_id="u", item_id="k")
    for n, (event, cat) in enumerate([(review_low, "a"), (review_two, "b"), (buy, "c")]):
        nxt = apply(p, event, origin=Origin("t", 0, n), categories=(cat,), params=params)
        assert nxt is not None
        p = nxt
    # Same event time: no decay between them, so the affinities are the weights themselves.
    assert p.affinity.get("a", 0.0) == 0.0  # a one-star review under band weight 0
    assert p.affinity["b"] == 2.0 * 0.25
    assert p.affinity["c"] == 4.0
    assert params.weight(Review(event_id="r3", ts=1.0, user_id="u", item_id="i", text="", rating=5.0)) == 2.0


@pytest.mark.parametrize(
    "bad",
    [{"event_weights": {"like": 1.0}}, {"event_weights": {"click": -1.0}}, {"rating_weights": {6: 1.0}}],
)
def test_unservable_weights_are_refused(bad: dict[str, object]) -> None:
    from pydantic import ValidationError

    from state.errors import ConfigError
    from stream_app.settings import Settings

    with pytest.raises((ConfigError, ValidationError)):
        Settings(**bad)  # type: ignore[arg-type]
