"""Erasure in the pure pipeline: what ``Pipeline.erase`` removes, what a replay may not bring
back, and that every worker's shared state agrees whatever order the deltas arrive in."""

from __future__ import annotations

import random

from scoring.messages import decode as decode_recs
from scoring.popularity import Popularity
from scoring.shared import ERASE, Delta, SharedState
from state.events import DeadLetter, Erasure, Event, Follow, Purchase, decode, encode
from state.profile import Origin, Params, apply, new_profile
from stream_app.history import without_erased
from stream_app.pipeline import APPLIED, ERASED, Pipeline
from tests.unit.test_pipeline import DictStore, FakeVectors, _catalog, _record


def _blend() -> tuple[Pipeline, DictStore, list[tuple[bytes, bytes | None]], list[Delta]]:
    store = DictStore()
    sent: list[tuple[bytes, bytes | None]] = []
    published: list[Delta] = []
    pipe = Pipeline(
        params=Params(),
        store=store,
        catalog=_catalog(),
        vectors=FakeVectors(),
        emit=lambda k, v: sent.append((k, v)),
        topic_of=lambda kind: f"t.{kind}s",
        top_k=5,
        emit_interval_s=0.0,
        popularity_half_life_days=14.0,
        max_payload_bytes=65_536,
        wall=lambda: 1_800_000_000.0,
        ranker="blend",
        publish=published.append,
    )
    return pipe, store, sent, published


def _history() -> list[Event]:
    """bob and carol follow alice; alice and everyone else buy things (event times 100..)."""
    rng = random.Random(3)
    events: list[Event] = [
        Follow(event_id="f1", ts=100.0, user_id="bob", followee_id="alice"),
        Follow(event_id="f2", ts=101.0, user_id="carol", followee_id="alice"),
        Follow(event_id="f3", ts=102.0, user_id="alice", followee_id="dave"),
        Follow(event_id="f4", ts=103.0, user_id="erin", followee_id="alice"),
        Follow(event_id="f5", ts=104.0, user_id="erin", followee_id="alice", action="unfollow"),
    ]
    for j in range(60):
        user = ["alice", "bob", "carol", "dave"][j % 4]
        events.append(Purchase(event_id=f"p{j}", ts=200.0 + j, user_id=user, item_id=f"m{rng.randrange(30)}"))
    return events


def _run(pipe: Pipeline, events: list[Event], start: int = 0) -> list[str]:
    return [pipe.process(e.__struct_config__.tag, _record(e, start + n)).outcome for n, e in enumerate(events)]  # type: ignore[arg-type]


def test_erase_removes_the_profile_caches_social_state_and_emits_a_tombstone() -> None:
    pipe, store, sent, published = _blend()
    _run(pipe, _history())
    assert b"alice" in store.profiles and "alice" in store.profiles[b"bob"].following
    assert "alice" in store.profiles[b"erin"].unfollowed
    assert pipe.shared.social.knows("alice") and pipe.shared.social.recent_items("alice", 300.0)
    assert any(k == b"alice" for k, _ in sent)
    sent.clear()

    erasure = Erasure(event_id="e1", ts=500.0, user_id="alice", reason="ticket-1")
    assert pipe.process("erasure", _record(erasure, 0)).outcome == APPLIED

    assert b"alice" not in store.profiles
    assert (b"alice", None) in sent
    assert not pipe.shared.social.knows("alice")
    assert pipe.shared.erased == {"alice": 500.0}
    assert "alice" not in pipe.live and "alice" not in pipe.coalescer._last_emit
    # Her followers lose her, and get a fresh list that no longer draws on her.
    for follower in ("bob", "carol"):
        assert "alice" not in store.profiles[follower.encode()].following
        fresh = [v for k, v in sent if k == follower.encode()]
        assert fresh and fresh[-1] is not None and decode_recs(fresh[-1]).user_id == follower
    # erin unfollowed her: the tombstone named her, and goes too.
    assert "alice" in pipe.shared.erased and "alice" not in store.profiles[b"erin"].unfollowed
    # dave (whom she followed) keeps his profile, with no follower left in the graph.
    assert pipe.shared.social.followers("dave") == 0 and b"dave" in store.profiles
    # The erasure travels to the other workers as one delta naming only the erased user.
    assert published[-1].kind == ERASE and published[-1].user == "alice" and published[-1].ts == 500.0


def test_replay_of_old_input_does_not_bring_the_user_back_and_later_events_start_over() -> None:
    pipe, store, sent, _ = _blend()
    history = _history()
    _run(pipe, history)
    pipe.process("erasure", _record(Erasure(event_id="e1", ts=500.0, user_id="alice"), 0))
    sent.clear()
    # The same input again (a replay from offset 0, new offsets so no watermark skips it).
    outcomes = _run(pipe, history, start=1_000)
    assert [o for e, o in zip(history, outcomes, strict=True) if e.user_id == "alice"] == [ERASED] * 16
    # A follow *of* alice from before the erasure is dropped too; bob's own purchases are not.
    assert outcomes[0] == ERASED and outcomes[1] == ERASED
    assert b"alice" not in store.profiles and all(k != b"alice" for k, _ in sent)
    assert "alice" not in store.profiles[b"bob"].following and not pipe.shared.social.knows("alice")

    later = Purchase(event_id="p-new", ts=600.0, user_id="alice", item_id="m3")
    assert pipe.process("purchase", _record(later, 5_000)).outcome == APPLIED
    fresh = apply(new_profile("alice"), later, origin=Origin("t.purchases", 0, 5_000), categories=("g0",), params=Params())
    assert store.profiles[b"alice"] == fresh


def test_a_redelivered_erasure_deletes_again_and_publishes_once() -> None:
    pipe, store, sent, published = _blend()
    _run(pipe, _history())
    record = _record(Erasure(event_id="e1", ts=500.0, user_id="alice"), 7)
    pipe.process("erasure", record)
    pipe.process("erasure", record)
    assert b"alice" not in store.profiles
    assert sent.count((b"alice", None)) == 2
    assert sum(d.kind == ERASE for d in published) == 1


def _social_view(shared: SharedState) -> tuple[object, ...]:
    s = shared.social
    windows = {**s._quiet, **s._recent}  # which of the two holds a window depends on arrival order
    return (dict(s._edges), {u: dict(r) for u, r in s._out.items()}, {u: sorted(r) for u, r in windows.items()}, shared.erased)


def test_shared_state_agrees_whichever_order_a_replay_meets_the_erasure_in() -> None:
    pipe, _, _, published = _blend()
    _run(pipe, _history())
    pipe.process("erasure", _record(Erasure(event_id="e1", ts=500.0, user_id="alice"), 0))
    assert published[-1].kind == ERASE
    erase, rest = published[-1], published[:-1]

    def rebuilt(order: list[Delta]) -> SharedState:
        shared = SharedState(popularity=Popularity(14.0), half_life_days=14.0)
        for d in order:
            shared.apply(d)
        return shared

    first, last = rebuilt([erase, *rest]), rebuilt([*rest, erase])
    assert _social_view(first) == _social_view(last) == _social_view(pipe.shared)
    assert not first.social.knows("alice") and first.social.knows("bob")
    # The anonymous aggregates keep her engagements, the same everywhere.
    items = [f"m{i}" for i in range(30)]
    assert [first.popularity.value(i) for i in items] == [last.popularity.value(i) for i in items]
    assert sum(first.popularity.value(i) for i in items) > 0


def test_history_for_the_trainer_leaves_erased_users_out() -> None:
    history = _history()
    later = Purchase(event_id="p-new", ts=600.0, user_id="alice", item_id="m3")
    kept = without_erased([*history, Erasure(event_id="e1", ts=500.0, user_id="alice"), later])
    expected = [e for e in history if e.user_id != "alice" and not (isinstance(e, Follow) and e.followee_id == "alice")]
    assert kept == [*expected, later]


def test_erasure_contract_decodes_and_a_wrong_key_is_dead_lettered() -> None:
    erasure = Erasure(event_id="e1", ts=500.0, user_id="alice", reason="ticket-1")
    assert decode("erasure", b"alice", encode(erasure)) == erasure
    letter = decode("erasure", b"bob", encode(erasure))
    assert isinstance(letter, DeadLetter) and letter.reason == "key_mismatch"
    letter = decode("purchase", b"alice", encode(erasure))
    assert isinstance(letter, DeadLetter) and letter.reason == "unknown_type"
