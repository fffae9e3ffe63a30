"""Every profile dimension reaches the ranking: content, sentiment, social, attributes, clicks.

Each test builds a small world where one dimension alone decides an outcome, computes the
expected outcome independently (numpy cosines, hand-made co-occurrence, follow sets), and
checks the ranker and the pipeline against it. Plus the shared state's contracts: deltas are
idempotent and order-free, and a profile written before the new fields existed still loads.
"""

from __future__ import annotations

import itertools
import random

import msgspec
import numpy as np
import pytest

from scoring.knn import ItemKNN
from scoring.messages import decode as decode_recs
from scoring.popularity import Popularity
from scoring.ranker import Weights, rank
from scoring.shared import ENGAGE, FOLLOW, Delta, SharedState, decode_delta, encode_delta
from state import codec
from state.catalog import Catalog
from state.events import Click, Event, Follow, Item, Purchase, Review, User, encode, key_of, kind_of
from state.interest import ItemVector
from state.profile import CLICK_MEMORY, Encoding, Origin, Params, Profile, apply, new_profile
from stream_app.pipeline import Pipeline, Record

DIM = 16
W0 = Weights(cooc=0.0, category=0.0, trending=0.0)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _catalog(n: int = 40, cats: int = 4) -> Catalog:
    catalog = Catalog()
    for i in range(n):
        catalog.upsert(Item(event_id=f"i{i}", ts=0.0, item_id=f"m{i}", title=f"Movie {i}", categories=[f"g{i % cats}"]))
    return catalog


def _shared(pop: Popularity | None = None, knn: ItemKNN | None = None) -> SharedState:
    return SharedState(popularity=pop or Popularity(14.0, refresh_s=-1.0), knn=knn, half_life_days=14.0)


def _apply(p: Profile, e: Event, n: int, **kw: object) -> Profile:
    out = apply(p, e, origin=Origin("t", 0, n), **kw)  # type: ignore[arg-type]
    assert out is not None
    return out


# --- content -----------------------------------------------------------------------------------


def test_content_candidates_are_the_nearest_item_texts_and_say_so() -> None:
    rng = np.random.default_rng(4)
    catalog = _catalog()
    shared = _shared()
    vectors = {f"m{i}": _unit(rng) for i in range(40)}
    for item, v in vectors.items():
        shared.item_vector(ItemVector(item_id=item, version="enc-1", digest="d", vector=v.tobytes()))
    # The user bought m0 and read its text vector into their interest.
    p = _apply(new_profile("u"), Purchase(event_id="e0", ts=10.0, user_id="u", item_id="m0"), 0,
               item_vector=ItemVector(item_id="m0", version="enc-1", digest="d", vector=vectors["m0"].tobytes()))
    recs = rank(p, catalog=catalog, shared=shared, params=Params(), k=5, weights=Weights(cooc=0.0, category=0.0, trending=0.0, content=1.0))
    want = sorted((i for i in vectors if i != "m0"), key=lambda i: -float(vectors[i] @ vectors["m0"]))[:5]
    assert [s.item_id for s in recs] == want
    assert recs[0].reasons[0].startswith("close in text to Movie 0")


def test_content_gives_a_new_item_exposure_before_any_engagement() -> None:
    rng = np.random.default_rng(8)
    catalog = _catalog()
    shared = _shared()
    base = _unit(rng)
    shared.item_vector(ItemVector(item_id="m1", version="v", digest="d", vector=base.tobytes()))
    pop = shared.popularity
    for i in range(2, 40):  # popular items nobody's text resembles
        pop.add(f"m{i}", 3.0, 5.0)
        shared.item_vector(ItemVector(item_id=f"m{i}", version="v", digest="d", vector=_unit(rng).tobytes()))
    catalog.upsert(Item(event_id="new", ts=9.0, item_id="fresh", title="Fresh", text="t", categories=["g0"]))
    near = base + 0.05 * _unit(rng)
    near = (near / np.linalg.norm(near)).astype(np.float32)
    shared.item_vector(ItemVector(item_id="fresh", version="v", digest="d", vector=near.tobytes()))
    p = _apply(new_profile("u"), Purchase(event_id="e", ts=10.0, user_id="u", item_id="m1"), 0,
               item_vector=ItemVector(item_id="m1", version="v", digest="d", vector=base.tobytes()))
    assert pop.value("fresh") == 0.0
    recs = rank(p, catalog=catalog, shared=shared, params=Params(), k=3, weights=Weights(content=1.0))
    assert "fresh" in [s.item_id for s in recs]


def test_review_vectors_make_item_centroids_when_there_is_no_catalog_text() -> None:
    rng = np.random.default_rng(2)
    shared = _shared()
    a, b = _unit(rng), _unit(rng)
    shared.apply(Delta(source="r:0", offset=0, kind=ENGAGE, user="u1", ts=1.0, item="x", weight=2.0, vector=a.tobytes(), version="v"))
    shared.apply(Delta(source="r:0", offset=1, kind=ENGAGE, user="u2", ts=2.0, item="x", weight=2.0, vector=b.tobytes(), version="v"))
    stored = shared.content.vector("x")
    assert stored is not None
    mean = (a + b) / np.linalg.norm(a + b)
    assert float(stored @ mean) == pytest.approx(1.0, abs=2e-3)


# --- sentiment ---------------------------------------------------------------------------------


def test_neighbours_of_a_badly_reviewed_item_are_demoted() -> None:
    catalog = _catalog()
    knn = ItemKNN()
    # m1 and m2 co-occur with the user's good item m0; m3 and m4 with the bad one m9.
    for _ in range(6):
        knn.add(["m0"], "m1")
        knn.add(["m0", "m1"], "m2")
        knn.add(["m9"], "m3")
        knn.add(["m9", "m3"], "m4")
        knn.add(["m0"], "m3")  # m3 is also close to the good item: demoted, not gone
    p = new_profile("u")
    p = _apply(p, Purchase(event_id="p0", ts=1.0, user_id="u", item_id="m0"), 0)
    p = _apply(p, Purchase(event_id="p9", ts=2.0, user_id="u", item_id="m9"), 1)
    p = _apply(p, Review(event_id="r9", ts=3.0, user_id="u", item_id="m9", text="broke in a day", rating=1.0), 2)
    assert set(p.disliked) == {"m9"}
    shared = _shared(knn=knn)
    plain = [s.item_id for s in rank(p, catalog=catalog, shared=shared, params=Params(), k=4, weights=Weights(category=0, trending=0))]
    moody = [s.item_id for s in rank(p, catalog=catalog, shared=shared, params=Params(), k=4,
                                     weights=Weights(category=0, trending=0, sentiment=1.0))]
    # Without sentiment the bad item's neighbours lead (m3 is close to both items).
    assert plain[0] == "m3" and "m4" in plain
    # With it, the good item's neighbours lead, m4 is gone and m3 fell behind them.
    assert set(moody[:2]) == {"m1", "m2"} and "m4" not in moody
    assert "m3" not in moody or moody.index("m3") >= 2


def test_a_later_good_review_lifts_the_dislike() -> None:
    p = _apply(new_profile("u"), Review(event_id="a", ts=1.0, user_id="u", item_id="x", text="", rating=1.0), 0)
    assert "x" in p.disliked
    p = _apply(p, Review(event_id="b", ts=2.0, user_id="u", item_id="x", text="", rating=5.0), 1)
    assert "x" not in p.disliked
    # An older bad review arriving late does not bring it back.
    p = _apply(p, Review(event_id="c", ts=0.5, user_id="u", item_id="x", text="", rating=1.0), 2)
    assert "x" not in p.disliked


def test_a_review_without_stars_or_encoded_text_is_remembered_and_decides_in_either_order() -> None:
    """Nothing to feel (no rating, no model): still a review of the item (a worker judges a first
    engagement by ``reviewed``), and as the latest one it says no dislike, whichever arrives first."""
    bad = Review(event_id="a", ts=1.0, user_id="u", item_id="x", text="", rating=1.0)
    plain = Review(event_id="b", ts=2.0, user_id="u", item_id="x", text="no stars")
    in_order = _apply(_apply(new_profile("u"), bad, 0), plain, 1)
    late = _apply(_apply(new_profile("u"), plain, 0), bad, 1)
    for p in (in_order, late):
        assert p.reviewed == {"x": 2.0} and p.disliked == {}
    assert in_order.sentiment == late.sentiment == _apply(new_profile("u"), bad, 0).sentiment  # the stars' only
    assert _apply(new_profile("u"), plain, 0).reviewed == {"x": 2.0}


# --- social ------------------------------------------------------------------------------------


def test_social_candidates_are_what_followees_engaged_with() -> None:
    catalog = _catalog()
    shared = _shared()
    for n, (who, item) in enumerate([("f1", "m5"), ("f2", "m5"), ("f1", "m6"), ("stranger", "m7"), ("stranger", "m7")]):
        shared.apply(Delta(source="p:0", offset=n, kind=ENGAGE, user=who, ts=10.0 + n, item=item, weight=3.0))
    p = new_profile("u")
    for n, f in enumerate(["f1", "f2"]):
        p = _apply(p, Follow(event_id=f"f{n}", ts=1.0, user_id="u", followee_id=f, action="follow"), n)
    recs = rank(p, catalog=catalog, shared=shared, params=Params(), k=2, weights=Weights(cooc=0, category=0, trending=0, social=1.0))
    assert [s.item_id for s in recs] == ["m5", "m6"]
    assert recs[0].reasons[0] == "liked by 2 people you follow"
    assert recs[1].reasons[0] == "liked by 1 person you follow"


def _pipe(sent: list[tuple[bytes, bytes]], **kw: object) -> Pipeline:
    store: dict[bytes, Profile] = {}

    class Store:
        def get(self, key: bytes, partition: int) -> Profile | None:
            return store.get(key)

        def put(self, key: bytes, profile: Profile, partition: int) -> None:
            store[key] = profile

        def touch(self, key: bytes) -> None:
            pass

        def cached(self, key: bytes) -> Profile | None:
            return store.get(key)

    class NoVectors:
        wanted = None

        def get(self, item_id: str) -> ItemVector | None:
            return None

    clock = iter(itertools.count())
    return Pipeline(
        params=Params(), store=Store(), catalog=_catalog(), vectors=NoVectors(), emit=lambda k, v: sent.append((k, v)),  # type: ignore[arg-type]
        topic_of=lambda kind: f"t.{kind}", top_k=5, emit_interval_s=0.0, popularity_half_life_days=14.0, max_payload_bytes=65_536,
        monotonic=lambda: float(next(clock)), wall=lambda: 0.0, weights=Weights(social=1.0), **kw,  # type: ignore[arg-type]
    )


def _feed(pipe: Pipeline, events: list[Event]) -> None:
    offsets: dict[str, int] = {}
    for e in events:
        kind = kind_of(e)
        off = offsets.get(kind, 0)
        offsets[kind] = off + 1
        pipe.process(kind, Record(f"t.{kind}", 0, off, key_of(e).encode(), encode(e)))


def test_a_followee_engaging_refreshes_the_followers_lists_capped() -> None:
    follows: list[Event] = [Follow(event_id=f"f{i}", ts=1.0, user_id=f"fan{i}", followee_id="star", action="follow") for i in range(5)]
    sent: list[tuple[bytes, bytes]] = []
    pipe = _pipe(sent, social_fanout=3)
    _feed(pipe, follows)
    assert len(sent) == 5 and pipe.shared.social.followers("star") == 5 and pipe.shared.social.followees("fan0") == 1
    sent.clear()
    _feed(pipe, [Purchase(event_id="s", ts=5.0, user_id="star", item_id="m7")])
    users = [k.decode() for k, _ in sent]
    # The star's own message, then three of the five fans (the earliest followers, ties by id).
    assert users == ["star", "fan0", "fan1", "fan2"]
    assert all("m7" in [s.item_id for s in decode_recs(v).items] for _, v in sent[1:])
    sent.clear()
    none = _pipe(sent, social_fanout=0)
    _feed(none, [*follows, Purchase(event_id="s", ts=5.0, user_id="star", item_id="m7")])
    assert [k.decode() for k, _ in sent] == [*(f"fan{i}" for i in range(5)), "star"]


# --- attributes and cold start -----------------------------------------------------------------


def test_cold_users_get_their_segments_priors_full_and_not_tied() -> None:
    sent: list[tuple[bytes, bytes]] = []
    pipe = _pipe(sent)
    pipe.weights = Weights(segment=1.0)
    events: list[Event] = []
    rng = random.Random(3)
    for u in range(30):
        band, job = (20, "student") if u % 2 else (60, "retired")
        events.append(User(event_id=f"a{u}", ts=1.0, user_id=f"u{u}", attributes={"age": band, "occupation": job}))
        liked = range(0, 10) if u % 2 else range(20, 30)
        for j in range(4):
            events.append(Purchase(event_id=f"p{u}-{j}", ts=2.0 + u, user_id=f"u{u}", item_id=f"m{rng.choice(liked)}"))
    _feed(pipe, events)
    young = _apply(new_profile("new1"), User(event_id="n1", ts=100.0, user_id="new1", attributes={"age": 21, "occupation": "student"}), 0)
    old = _apply(new_profile("new2"), User(event_id="n2", ts=100.0, user_id="new2", attributes={"age": 61, "occupation": "retired"}), 0)
    a = pipe.recommend(young).items
    b = pipe.recommend(old).items
    assert len(a) == len(b) == 5
    assert {s.item_id for s in a} <= {f"m{i}" for i in range(10)} and {s.item_id for s in b} <= {f"m{i}" for i in range(20, 30)}
    assert len({s.score for s in a}) > 1 and a[0].reasons[0].startswith("popular with users")
    # No attributes, no history: trending, still full and ordered per user, not by id.
    c = pipe.recommend(new_profile("nobody")).items
    assert len(c) == 5 and [s.item_id for s in c] != sorted(s.item_id for s in c) or len({s.score for s in c}) > 1


# --- clicks --------------------------------------------------------------------------------------


def test_clicked_items_are_excluded_only_when_asked_and_clicks_are_bounded() -> None:
    catalog = _catalog()
    pop = Popularity(14.0, refresh_s=-1.0)
    for i in range(40):
        pop.add(f"m{i}", float(40 - i), 1.0)
    p = _apply(new_profile("u"), Click(event_id="c", ts=2.0, user_id="u", item_id="m0"), 0)
    keep = [s.item_id for s in rank(p, catalog=catalog, shared=_shared(pop), params=Params(), k=3)]
    drop = [s.item_id for s in rank(p, catalog=catalog, shared=_shared(pop), params=Params(), k=3, weights=Weights(exclude_clicked=True))]
    assert keep[0] == "m0" and "m0" not in drop and len(drop) == 3
    for n in range(CLICK_MEMORY + 10):
        p = _apply(p, Click(event_id=f"c{n}", ts=10.0 + n, user_id="u", item_id=f"z{n}"), n + 1)
    assert len(p.clicked) == CLICK_MEMORY and "z0" not in p.clicked and f"z{CLICK_MEMORY + 9}" in p.clicked


# --- shared state --------------------------------------------------------------------------------


def _deltas(seed: int) -> list[Delta]:
    rng = random.Random(seed)
    out: list[Delta] = []
    history: dict[str, list[str]] = {}
    for n in range(300):
        u = f"u{rng.randrange(12)}"
        if rng.random() < 0.1:
            out.append(Delta(source=f"t.follows:{n % 3}", offset=n, kind=FOLLOW, user=u, ts=float(n), target=f"u{rng.randrange(12)}"))
            continue
        item = f"m{rng.randrange(25)}"
        seen = history.setdefault(u, [])
        first = item not in seen
        out.append(Delta(source=f"t.purchases:{n % 3}", offset=n, kind=ENGAGE, user=u, ts=float(n), item=item, weight=3.0,
                         first=first, recent=list(seen[-50:]) if first else [], segments=[f"age={u[-1]}"]))
        if first:
            seen.append(item)
    return out


def _fingerprint(s: SharedState) -> tuple[object, ...]:
    items = [f"m{i}" for i in range(25)]
    return (
        [round(s.popularity.value(i), 9) for i in items],
        [s.knn.cooccurrence(a, b) for a in items for b in items],
        [(u, s.social.followers(u)) for u in (f"u{i}" for i in range(12))],
        [tuple((i, round(v, 9)) for i, v, _ in s.segments.top([f"age={d}"], 10, exclude=(), now=300.0)) for d in range(10)],
    )


def test_deltas_are_idempotent_and_order_free_per_source() -> None:
    deltas = _deltas(1)
    one = _shared()
    for d in deltas:
        assert one.apply(d)
    # Replays of any prefix are skipped; nothing moves.
    before = _fingerprint(one)
    assert not any(one.apply(d) for d in deltas[:150])
    assert _fingerprint(one) == before
    # Another worker reads the sources interleaved differently (each source in order).
    by_source: dict[str, list[Delta]] = {}
    for d in deltas:
        by_source.setdefault(d.source, []).append(d)
    other = _shared()
    for group in sorted(by_source.values(), key=lambda g: g[0].source, reverse=True):
        for d in group:
            other.apply(d)
    assert _fingerprint(other) == before


def test_delta_and_profile_wire_formats() -> None:
    d = Delta(source="t.reviews:3", offset=7, kind=ENGAGE, user="u", ts=1.5, item="x", weight=2.0, first=True, recent=["a"],
              segments=["age=25-34"], vector=np.ones(4, dtype="<f4").tobytes(), version="v")
    assert decode_delta(encode_delta(d)) == d
    # A profile stored before clicked/disliked existed still loads, with them empty.
    p = _apply(new_profile("u"), Purchase(event_id="e", ts=1.0, user_id="u", item_id="x"), 0)
    data = codec.dumps(p)
    raw = msgspec.msgpack.decode(data[1:])
    assert isinstance(raw, dict)
    for field in ("clicked", "reviewed", "disliked"):
        raw.pop(field, None)
    old = codec.loads(data[:1] + msgspec.msgpack.encode(raw))
    assert old.clicked == {} and old.disliked == {} and old.reviewed == {} and old.purchased == p.purchased


def test_review_encoding_goes_into_the_delta() -> None:
    sent: list[tuple[bytes, bytes]] = []
    published: list[Delta] = []
    pipe = _pipe(sent, publish=published.append)
    vec = np.ones(DIM, dtype="<f4") / np.sqrt(DIM)
    r = Review(event_id="r", ts=3.0, user_id="u", item_id="m1", text="great", rating=5.0)
    pipe.apply_event(r, Origin("t.review", 0, 0), 0, None, encoding=Encoding(version="v1", vector=vec.tobytes(), text_sentiment=0.9))
    assert len(published) == 1 and published[0].vector == vec.tobytes() and published[0].version == "v1"
    assert pipe.shared.content.vector("m1") is not None


# --- interests across an encoder swap --------------------------------------------------------


def test_an_interest_of_the_old_encoder_is_rebuilt_from_the_engaged_items_new_vectors() -> None:
    from scoring.migrate import migrated_interest
    from scoring.ranker import interest_query
    from state.interest import Interest, add_vector

    rng = np.random.default_rng(4)
    params = Params()
    hl = params.half_life_s
    shared = _shared()
    new = {f"m{i}": _unit(rng) for i in range(6)}
    for item, v in new.items():
        shared.content.upsert(item, "v2", v)
    p = new_profile("u")
    day = 86_400.0
    engaged = [(Click, "m0", 1 * day), (Purchase, "m1", 3 * day), (Click, "m2", 5 * day), (Purchase, "m9", 6 * day)]
    for n, (cls, item, ts) in enumerate(engaged):
        p = _apply(p, cls(event_id=f"e{n}", ts=ts, user_id="u", item_id=item), n)
    p.interest = Interest(version="v1", ref_ts=6 * day, weight=1.0, sum=_unit(rng).astype("<f4").tobytes())  # the old encoder's
    # Independently: clicks weigh 0.5, purchases 1, each halved per half-life before the latest
    # event (day 6); m9 has no vector of v2 and does not count.
    want_sum = np.zeros(DIM)
    want_w = 0.0
    for cls, item, ts in engaged:
        if item in new:
            share = (0.5 if cls is Click else 1.0) * 2.0 ** (-(6 * day - ts) / hl)
            want_sum += new[item].astype(np.float16).astype(np.float64) * share  # the index keeps float16
            want_w += share
    got = migrated_interest(p, shared.content, hl)
    assert got is not None and got.version == "v2" and got.ref_ts == 6 * day
    assert got.weight == pytest.approx(want_w, rel=1e-12)
    np.testing.assert_allclose(np.frombuffer(got.sum, dtype="<f4"), want_sum, rtol=1e-6, atol=1e-7)
    query = interest_query(p, shared, hl)
    assert query is not None
    np.testing.assert_allclose(query, (want_sum / want_w).astype(np.float32), rtol=1e-5, atol=1e-6)
    assert interest_query(p, shared) is None  # without the half-life: no migration, no query

    # Written: the first event with a v2 vector continues from the rebuilt interest.
    sent: list[tuple[bytes, bytes]] = []
    pipe = _pipe(sent)
    pipe.shared = shared
    pipe.store.put(b"u", p, 0)  # type: ignore[attr-defined]
    vec = ItemVector(item_id="m3", version="v2", digest="d", vector=new["m3"].astype("<f4").tobytes())
    before = migrated_interest(p, shared.content, hl)
    pipe._migrate_interest(p, Click(event_id="e9", ts=7 * day, user_id="u", item_id="m3"), Origin("t.click", 0, 99), vec, None)
    assert p.interest is not None and p.interest.version == "v2"
    assert before is not None and p.interest.weight == before.weight
    after = add_vector(p.interest, new["m3"], "v2", 0.5, 7 * day, hl)
    assert after.weight > 0.5  # not restarted from the one new vector
