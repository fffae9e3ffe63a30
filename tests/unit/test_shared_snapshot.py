"""A shared-state snapshot restores exactly what the deltas it covers built.

The expectation is always computed independently: a fresh state that applied *every* delta
from the first, against a state restored from a snapshot taken part-way and then given the
rest. Both must answer every read (popularity, co-occurrence, segments, social, content) and
rank every user the same, and snapshot to the same bytes.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from scoring.knn import ItemKNN
from scoring.popularity import Popularity
from scoring.ranker import rank
from scoring.shared import ENGAGE, ERASE, FOLLOW, UNFOLLOW, Delta, SharedState, SnapshotError
from state.catalog import Catalog
from state.events import Event, Follow, Purchase, Review, User, kind_of
from state.profile import Params
from stream_app.pipeline import Pipeline
from tests.unit.test_pipeline import Clock, DictStore, FakeVectors, _catalog, _record


def _fresh(neighbours: int = 3, recent: int = 3, quiet_bytes: int = 4_000, half_life: float = 14.0) -> SharedState:
    return SharedState(
        popularity=Popularity(half_life),
        knn=ItemKNN(max_neighbours=neighbours),
        half_life_days=half_life,
        social_recent=recent,
        fanout_cap=50,
        social_quiet_bytes=quiet_bytes,
    )


def _deltas(n: int, seed: int) -> list[Delta]:
    """Every kind of delta, from 40 users over 25 items, some out of event-time order."""
    rng = random.Random(seed)
    users, items = [f"u{i}" for i in range(40)], [f"m{i}" for i in range(25)]
    segments = ["age=25-34", "gender=f", "gender=m", "occupation=doctor"]
    out: list[Delta] = []
    for off in range(n):
        source = f"t.events:{off % 3}"
        ts = 1_000_000.0 + 600.0 * off + rng.uniform(-20_000, 20_000)
        user = rng.choice(users)
        roll = rng.random()
        if roll < 0.70:
            vector = b""
            if rng.random() < 0.2:
                vector = np.asarray([rng.gauss(0, 1) for _ in range(8)], dtype="<f4").tobytes()
            out.append(Delta(
                source=source, offset=off, kind=ENGAGE, user=user, ts=ts, item=rng.choice(items),
                weight=rng.choice([1.0, 3.0, -1.0]), first=rng.random() < 0.6, recent=rng.sample(items, rng.randrange(6)),
                segments=rng.sample(segments, rng.randrange(3)), vector=vector, version="enc-1" if vector else "",
            ))
        elif roll < 0.90:
            out.append(Delta(source=source, offset=off, kind=FOLLOW, user=user, ts=ts, target=rng.choice(users)))
        elif roll < 0.98:
            out.append(Delta(source=source, offset=off, kind=UNFOLLOW, user=user, ts=ts, target=rng.choice(users)))
        else:
            out.append(Delta(source=source, offset=off, kind=ERASE, user=user, ts=ts))
    return out


def _reads(state: SharedState) -> dict[str, Any]:
    """What the ranker can read from a state, through the public methods only."""
    items = [f"m{i}" for i in range(25)]
    users = [f"u{i}" for i in range(40)]
    now = state.popularity.now
    segs = ["age=25-34", "gender=f", "gender=m", "occupation=doctor"]
    return {
        "popularity": [state.popularity.value(i) for i in items],
        "order": list(state.popularity.order()),
        "ranked": state.popularity.ranked(None),
        "cooc": [[state.knn.cooccurrence(a, b) for b in items] for a in items],
        "counts": [state.knn.count(i) for i in items],
        "knn_score": state.knn.score(items[:5], items),
        "segments": [state.segments.top(segs[:k], 10, exclude=(), now=now) for k in range(1, 5)],
        "shares": [[state.segments.share(s, i) for i in items] for s in segs],
        "edges": state.social.edges(),
        "following": [state.social.following_of(u) for u in users],
        "followers": [state.social.followers_of(u) for u in users],
        "windows": [state.social.recent_items(u, now) for u in users],
        "social_top": [state.social.top(users[k : k + 8], 5, exclude=(), now=now) for k in range(0, 40, 8)],
        "quiet": (state.social.quiet_nbytes, state.social.quiet_evictions),
        "content": [None if (v := state.content.vector(i)) is None else v.tolist() for i in items],
        "content_search": state.content.search(np.ones(8, dtype=np.float32), 5, version="enc-1")
        if state.content.version == "enc-1" else [],
        "erased": [state.is_erased(u, now) for u in users],
        "summary": dict(state.summary()),
    }


@pytest.mark.parametrize("cut", [0, 1, 137, 300, 599, 600])
def test_a_state_restored_part_way_then_fed_the_rest_equals_one_fed_everything(cut: int) -> None:
    deltas = _deltas(600, seed=cut + 3)
    full = _fresh()
    for d in deltas:
        full.apply(d)
    first = _fresh()
    for d in deltas[:cut]:
        first.apply(d)
    restored = _fresh()
    restored.restore(first.snapshot())
    for d in deltas[cut:]:
        restored.apply(d)
    # The bounds were reached, so the parts that depend on arrival order are exercised.
    assert full.knn.cuts > 0 and full.social.quiet_evictions > 0 and full.erased
    assert _reads(restored) == _reads(full)
    assert restored.snapshot() == full.snapshot()


def test_replayed_deltas_the_snapshot_covers_are_skipped_after_a_restore() -> None:
    deltas = _deltas(300, seed=11)
    state = _fresh()
    for d in deltas:
        state.apply(d)
    restored = _fresh()
    restored.restore(state.snapshot())
    before = _reads(restored)
    assert not any(restored.apply(d) for d in deltas)  # a worker reading the topic from before the snapshot
    after = _reads(restored)
    assert after.pop("summary")["deltas_skipped"] == before.pop("summary")["deltas_skipped"] + 300
    assert after == before


def _events(n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    out: list[Event] = []
    for j in range(n):
        user, ts = f"u{rng.randrange(12)}", 10_000.0 + 60 * j
        roll = rng.random()
        if roll < 0.65:
            out.append(Purchase(event_id=f"e{j}", ts=ts, user_id=user, item_id=f"m{rng.randrange(30)}"))
        elif roll < 0.8:
            item = f"m{rng.randrange(30)}"
            out.append(Review(event_id=f"e{j}", ts=ts, user_id=user, item_id=item, text="fine", rating=rng.choice([1, 5])))
        elif roll < 0.92:
            out.append(Follow(event_id=f"e{j}", ts=ts, user_id=user, followee_id=f"u{rng.randrange(12)}"))
        else:
            attrs: dict[str, str | int | float | bool] = {"age": rng.choice([19, 30, 41]), "gender": rng.choice(["f", "m"])}
            out.append(User(event_id=f"e{j}", ts=ts, user_id=user, attributes=attrs))
    return out


def test_every_user_ranks_the_same_on_a_restored_state() -> None:
    """The pipeline's own deltas (its users' profiles, real candidate sources): the blend ranker
    gives every user the same list on a restored state as on one that applied everything."""
    published: list[Delta] = []
    store = DictStore()
    catalog: Catalog = _catalog()
    pipe = Pipeline(
        params=Params(), store=store, catalog=catalog, vectors=FakeVectors(), emit=lambda k, v: None,
        topic_of=lambda kind: f"t.{kind}s", top_k=5, emit_interval_s=0.0, popularity_half_life_days=14.0,
        max_payload_bytes=65_536, monotonic=Clock(), wall=lambda: 1_800_000_000.0, ranker="blend",
        publish=published.append,
    )

    for offset, e in enumerate(_events(500, seed=2)):
        pipe.process(kind_of(e), _record(e, offset))
    assert len(published) > 300 and any(d.segments for d in published) and any(d.kind == FOLLOW for d in published)

    def state() -> SharedState:
        return _fresh(neighbours=0, recent=20, quiet_bytes=1 << 20)

    full = state()
    for d in published:
        full.apply(d)
    first = state()
    for d in published[:250]:
        first.apply(d)
    restored = state()
    restored.restore(first.snapshot())
    for d in published[250:]:
        restored.apply(d)
    profiles = list(store.profiles.values())
    assert len(profiles) == 12
    want = [[(s.item_id, s.score, s.reasons) for s in rank(p, catalog=catalog, shared=full, params=Params(), k=10)] for p in profiles]
    got = [[(s.item_id, s.score, s.reasons) for s in rank(p, catalog=catalog, shared=restored, params=Params(), k=10)] for p in profiles]
    assert got == want
    assert len({tuple(i for i, _, _ in w) for w in want}) > 3  # real, differing lists


def test_a_snapshot_of_other_settings_is_refused_with_the_settings_named() -> None:
    state = _fresh()
    for d in _deltas(50, seed=1):
        state.apply(d)
    data = state.snapshot()
    with pytest.raises(SnapshotError, match=r"cooc_neighbours 3\.?0? \(here 5"):
        _fresh(neighbours=5).restore(data)
    with pytest.raises(SnapshotError, match="half_life_days"):
        _fresh(half_life=7.0).restore(data)


def test_a_snapshot_is_only_restored_into_a_new_state() -> None:
    state = _fresh()
    deltas = _deltas(50, seed=1)
    for d in deltas:
        state.apply(d)
    used = _fresh()
    used.apply(deltas[0])
    with pytest.raises(SnapshotError, match="new shared state"):
        used.restore(state.snapshot())


def test_unreadable_or_future_snapshots_are_refused() -> None:
    import msgspec

    with pytest.raises(SnapshotError, match="unreadable"):
        _fresh().restore(b"\x00not msgpack")
    with pytest.raises(SnapshotError, match="format 99"):
        _fresh().restore(msgspec.msgpack.encode({"format": 99, "something": "new"}))


def test_a_catalog_vector_that_arrived_before_the_restore_wins_over_the_items_review_centroid() -> None:
    """The worker's item-vectors replica may run before the snapshot is restored: as in a replay
    of the deltas after the catalog vector, the item keeps its catalog text's vector."""
    from state.interest import ItemVector, item_vector_bytes

    deltas = [d for d in _deltas(600, seed=4) if d.vector]
    assert deltas
    item = deltas[0].item
    catalog = ItemVector(item_id=item, version="enc-1", digest="d", vector=item_vector_bytes(np.arange(1, 9, dtype=np.float32)))
    first = _fresh()
    for d in deltas:
        first.apply(d)
    replayed = _fresh()
    replayed.item_vector(catalog)
    for d in deltas:
        replayed.apply(d)
    restored = _fresh()
    restored.item_vector(catalog)
    restored.restore(first.snapshot())
    want = replayed.content.vector(item)
    unit = catalog.array() / np.linalg.norm(catalog.array())
    assert want is not None and np.allclose(want, unit, atol=1e-3)
    got = restored.content.vector(item)
    assert got is not None and np.array_equal(got, want)
    others = sorted({d.item for d in deltas} - {item})
    for i in others:
        a, b = restored.content.vector(i), replayed.content.vector(i)
        assert a is not None and b is not None and np.array_equal(a, b), i
    assert others


def test_an_erased_user_is_named_only_on_the_suppression_list_of_a_snapshot() -> None:
    """What --truncate relies on for erasure: once the deltas naming a user are deleted, the
    snapshot names them in one place only, the suppression list (which keeps them erased)."""
    user = "u-erase-me-7f3a"
    src = "t.events:0"
    deltas = [d for d in _deltas(400, seed=9) if d.kind != ERASE]
    deltas += [
        Delta(source=src, offset=10_000 + i, kind=ENGAGE, user=user, ts=2_000_000.0 + i, item=f"m{i}", weight=1.0, first=True,
              recent=[f"m{j}" for j in range(i)], segments=["gender=f"])
        for i in range(5)
    ]
    deltas += [
        Delta(source=src, offset=10_010, kind=FOLLOW, user=user, ts=2_000_010.0, target="u1"),
        Delta(source=src, offset=10_011, kind=FOLLOW, user="u2", ts=2_000_011.0, target=user),
    ]
    state = _fresh(quiet_bytes=1 << 20)
    for d in deltas:
        state.apply(d)
    assert user.encode() in state.snapshot()
    state.apply(Delta(source=src, offset=10_012, kind=ERASE, user=user, ts=2_000_012.0))
    data = state.snapshot()
    assert data.count(user.encode()) == 1
    restored = _fresh(quiet_bytes=1 << 20)
    restored.restore(data)
    assert restored.is_erased(user, 2_000_000.0) and not restored.social.knows(user)
    # A replayed delta of theirs from before the erasure leaves no trace after the restore either.
    restored.apply(Delta(source="t.events:1", offset=0, kind=FOLLOW, user="u3", ts=2_000_005.0, target=user))
    assert not restored.social.knows(user)


def test_a_snapshot_staged_off_the_loop_changes_nothing_until_adopted_and_a_vector_arriving_meanwhile_wins() -> None:
    """The worker stages (decodes and builds) a snapshot in a thread while its item-vectors
    replica may write a catalog vector into the state; adopting it on the loop must give what a
    replay of every delta after that vector gives, and staging must leave the state as it was."""
    from state.interest import ItemVector, item_vector_bytes

    deltas = _deltas(600, seed=4)
    item = next(d.item for d in deltas if d.vector)
    catalog = ItemVector(item_id=item, version="enc-1", digest="d", vector=item_vector_bytes(np.arange(1, 9, dtype=np.float32)))
    first = _fresh()
    for d in deltas:
        first.apply(d)
    data = first.snapshot()
    replayed = _fresh()
    replayed.item_vector(catalog)
    for d in deltas:
        replayed.apply(d)

    live = _fresh()
    parts = (live.popularity, live.knn, live.segments, live.social)
    staged = live.stage(data)
    assert live.snapshot() == _fresh().snapshot() and dict(live.summary()) == dict(_fresh().summary())
    assert all(a is not b for a, b in zip(parts, (staged.popularity, staged.knn, staged.segments, staged.social), strict=True))
    live.item_vector(catalog)  # the item-vectors replica, while the snapshot was being staged
    live.adopt(staged)
    assert _reads(live) == _reads(replayed)
    restored = _fresh()  # restore() in one go, after the vector: the same state, to the byte
    restored.item_vector(catalog)
    restored.restore(data)
    assert live.snapshot() == restored.snapshot()
    for later in _deltas(700, seed=4)[600:]:
        live.apply(later)
        replayed.apply(later)
    assert _reads(live) == _reads(replayed)

    used = _fresh()
    staged = used.stage(data)
    used.apply(deltas[0])  # a delta applied between the two halves: the state is not new any more
    with pytest.raises(SnapshotError, match="new shared state"):
        used.adopt(staged)


def test_empty_like_keeps_every_setting_of_the_parts() -> None:
    """The staged parts must behave as the live ones would: a half-life, bound or window lost
    on the way would change every score after the restore."""
    state = SharedState(
        popularity=Popularity(3.5, refresh_s=7.0, clock=lambda: 42.0),
        knn=ItemKNN(window=7, max_neighbours=11),
        half_life_days=9.25,
        social_recent=4,
        fanout_cap=13,
        social_quiet_bytes=1234,
    )
    pop = state.popularity.empty_like()
    assert (pop.half_life_days, pop._refresh_s, pop._clock()) == (3.5, 7.0, 42.0)
    default = Popularity(2.0).empty_like()
    assert default._clock == default._event_time  # its own event-time clock, not the original's
    knn = state.knn.empty_like()
    assert (knn.window, knn.max_neighbours) == (7, 11)
    assert state.segments.empty_like()._hl == state.segments._hl
    social = state.social.empty_like()
    assert (social._hl, social.recent, social.fanout_cap, social.quiet_bytes) == (state.social._hl, 4, 13, 1234)


def test_settings_differences_name_each_setting_exactly() -> None:
    """MessagePack brings int settings back as floats: 3.0 and 3 are the same setting, and a
    large byte budget must not be rounded into looking like its neighbour."""
    from scoring.shared import config_differences

    ours = {"cooc_neighbours": 3, "social_quiet_bytes": 4_194_305, "half_life_days": 30.0, "new": 1}
    theirs = {"cooc_neighbours": 3.0, "social_quiet_bytes": 4_194_304.0, "half_life_days": 14.5, "gone": 2.0}
    assert config_differences(theirs, ours) == [
        "gone 2 (here unset)",
        "half_life_days 14.5 (here 30)",
        "new unset (here 1)",
        "social_quiet_bytes 4194304 (here 4194305)",
    ]
    assert config_differences(dict(ours), ours) == []
