"""Decayed popularity and the baseline recommender, against expectations computed from the data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.baseline import POOL_FACTOR, Scored, recommend, tie_key
from scoring.popularity import Popularity
from state.catalog import Catalog
from state.decay import SECONDS_PER_DAY, closed_form
from state.events import Click, Item, Purchase
from state.profile import Params, Profile, apply, new_profile

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USER = "u"

times = st.floats(min_value=0.0, max_value=1e8, allow_nan=False, allow_infinity=False)
weights = st.sampled_from([1.0, 2.0, 3.0]) | st.floats(min_value=0.01, max_value=10.0)
adds = st.lists(st.tuples(st.sampled_from([f"i{n}" for n in range(6)]), weights, times), max_size=30)


def fresh(half_life_days: float = 14.0) -> Popularity:
    # A negative refresh makes every read after an add recompute (no wall-clock caching).
    return Popularity(half_life_days, refresh_s=-1.0)


def expected_values(events: list[tuple[str, float, float]], half_life_days: float) -> dict[str, float]:
    now = max((t for _, _, t in events), default=0.0)
    hl = half_life_days * SECONDS_PER_DAY
    out: dict[str, float] = {}
    for item in {i for i, _, _ in events}:
        out[item] = closed_form([(t, w) for i, w, t in events if i == item], now, hl)
    return out


# --- popularity ------------------------------------------------------------------------------------


def test_popularity_halves_after_one_half_life() -> None:
    pop = fresh(14.0)
    pop.add("a", 3.0, 1_000.0)
    assert pop.value("a") == 3.0
    # Time moves on through another item's event, one half-life later.
    pop.add("b", 1.0, 1_000.0 + 14 * SECONDS_PER_DAY)
    assert pop.value("a") == pytest.approx(1.5, rel=1e-12)
    pop.add("b", 1.0, 1_000.0 + 28 * SECONDS_PER_DAY)
    assert pop.value("a") == pytest.approx(0.75, rel=1e-12)
    assert pop.value("b") == pytest.approx(1.0 + 0.5, rel=1e-12)
    assert pop.value("never-seen") == 0.0
    assert len(pop) == 2


def test_late_event_adds_its_decayed_weight() -> None:
    pop = fresh(1.0)
    pop.add("a", 1.0, 10 * SECONDS_PER_DAY)
    pop.add("a", 4.0, 8 * SECONDS_PER_DAY)  # two half-lives old
    assert pop.now == 10 * SECONDS_PER_DAY
    assert pop.value("a") == pytest.approx(1.0 + 1.0, rel=1e-12)


@FAST
@given(events=adds, half_life=st.floats(min_value=0.5, max_value=365.0), data=st.data())
def test_popularity_matches_closed_form_in_any_order(
    events: list[tuple[str, float, float]], half_life: float, data: st.DataObject
) -> None:
    expected = expected_values(events, half_life)
    a, b = fresh(half_life), fresh(half_life)
    for item, w, t in events:
        a.add(item, w, t)
    for item, w, t in data.draw(st.permutations(events)):
        b.add(item, w, t)
    assert a.now == b.now == max((t for _, _, t in events), default=0.0)
    # Relative precision only above the subnormal range: a value decayed over 90M half-lives
    # to 2.5e-316 keeps a few significant bits, however it is computed (found by hypothesis).
    for item, value in expected.items():
        assert math.isclose(a.value(item), value, rel_tol=1e-9, abs_tol=1e-300)
        assert math.isclose(b.value(item), value, rel_tol=1e-9, abs_tol=1e-300)


@FAST
@given(events=adds, n=st.integers(min_value=0, max_value=8))
def test_top_is_the_n_most_popular(events: list[tuple[str, float, float]], n: int) -> None:
    pop = fresh()
    for item, w, t in events:
        pop.add(item, w, t)
    expected = expected_values(events, 14.0)
    top = pop.top(None, n)
    assert len(top) == min(n, len(expected))
    scores = [s for s, _ in top]
    assert scores == sorted(scores, reverse=True)
    if top:
        cutoff = top[-1][0]
        chosen = {i for _, i in top}
        for item, value in expected.items():
            if item not in chosen:
                assert value <= cutoff * (1 + 1e-9)
    # Restricted to candidates.
    some = {i for i in list(expected)[:2]}
    assert {i for _, i in pop.top(some, 10, key="some")} <= some


# --- recommend ---------------------------------------------------------------------------------------


def build_catalog(spec: dict[str, tuple[str, ...]]) -> Catalog:
    catalog = Catalog()
    for item, cats in spec.items():
        catalog.upsert(Item(event_id=f"item-{item}", ts=0.0, item_id=item, categories=list(cats)))
    return catalog


def build_popularity(counts: dict[str, int], ts: float = 1_000.0) -> Popularity:
    pop = fresh()
    for item, n in counts.items():
        for _ in range(n):
            pop.add(item, 1.0, ts)
    return pop


def profile_from(clicks: list[str], purchases: list[str], catalog: Catalog, params: Params) -> Profile:
    p = new_profile(USER)
    n = 0
    for kind, ids in (("click", clicks), ("purchase", purchases)):
        for item in ids:
            n += 1
            ev = (Click if kind == "click" else Purchase)(event_id=f"e{n}", ts=1_000.0, user_id=USER, item_id=item)
            out = apply(p, ev, origin=None, categories=catalog.categories(item), params=params)
            assert out is not None
            p = out
    return p


ITEM_IDS = [f"i{n:02d}" for n in range(15)]
CATS = ["a", "b", "c"]


@st.composite
def worlds(draw: st.DrawFn, single_category: bool = False) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    size = 1 if single_category else 3
    spec = {
        i: tuple(draw(st.lists(st.sampled_from(CATS), min_size=1, max_size=size, unique=True))) for i in ITEM_IDS
    }
    # Distinct popularity counts: no ties to argue about.
    counts = draw(st.permutations(range(1, len(ITEM_IDS) + 1)))
    return spec, dict(zip(ITEM_IDS, counts, strict=True))


def check_shape(recs: list[Scored], k: int, purchased: set[str]) -> None:
    assert len(recs) <= k
    assert not {r.item_id for r in recs} & purchased
    assert len({r.item_id for r in recs}) == len(recs)
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s <= 1.0 + 1e-12 for s in scores)


@FAST
@given(
    world=worlds(),
    clicks=st.lists(st.sampled_from(ITEM_IDS), max_size=8),
    purchases=st.lists(st.sampled_from(ITEM_IDS), max_size=8),
    k=st.integers(min_value=1, max_value=20),
)
def test_recommend_shape(
    world: tuple[dict[str, tuple[str, ...]], dict[str, int]], clicks: list[str], purchases: list[str], k: int
) -> None:
    spec, counts = world
    params = Params()
    catalog = build_catalog(spec)
    p = profile_from(clicks, purchases, catalog, params)
    recs = recommend(p, catalog, build_popularity(counts), k=k, params=params)
    check_shape(recs, k, set(purchases))
    # Enough unpurchased items exist in the user's categories to fill k (or all of them).
    engaged = {c for i in clicks + purchases for c in spec[i]}
    if engaged:
        eligible = {i for i, cats in spec.items() if set(cats) & engaged} - set(purchases)
    else:  # cold start: popular overall
        eligible = set(ITEM_IDS) - set(purchases)
    assert len(recs) == min(k, len(eligible))


@FAST
@given(world=worlds(), purchases=st.lists(st.sampled_from(ITEM_IDS), max_size=6), k=st.integers(1, 20))
def test_cold_start_gets_popularity_order(
    world: tuple[dict[str, tuple[str, ...]], dict[str, int]], purchases: list[str], k: int
) -> None:
    spec, counts = world
    params = Params()
    catalog = build_catalog(spec)
    # Purchases of items the catalog does not know: no affinity, but they are still excluded.
    p = profile_from([], purchases, Catalog(), params)
    assert sum(p.affinity.values()) == 0.0
    recs = recommend(p, catalog, build_popularity(counts), k=k, params=params)
    check_shape(recs, k, set(purchases))
    expected = sorted((i for i in ITEM_IDS if i not in purchases), key=lambda i: -counts[i])[:k]
    assert [r.item_id for r in recs] == expected
    # One pseudo-event per item (the +1) keeps unknown popularity rankable.
    assert recs[0].score == pytest.approx((counts[expected[0]] + 1) / (max(counts.values()) + 1))


def test_cold_start_with_empty_catalog_is_empty() -> None:
    assert recommend(new_profile(USER), Catalog(), fresh(), k=5, params=Params()) == []


def test_regression_empty_popularity_after_restart_still_recommends_catalog_items() -> None:
    """Popularity lives in memory: right after a worker restart it is empty, and a
    re-emitted message must still carry items, not an empty list (seen in the chaos test)."""
    catalog = build_catalog({"i00": ("a",), "i01": ("a",), "i02": ("b",)})
    bought = ["i00"]
    p = profile_from(["i01"], bought, catalog, Params())
    recs = recommend(p, catalog, fresh(), k=5, params=Params())
    assert recs and all(r.item_id not in bought for r in recs)
    cold = recommend(new_profile(USER), catalog, fresh(), k=2, params=Params())
    # All tie at popularity 0: the user's hash order picks them, not the id string.
    assert [r.item_id for r in cold] == sorted(catalog.ids(), key=lambda i: tie_key(USER, i))[:2]


@FAST
@given(
    world=worlds(single_category=True),
    target=st.sampled_from(CATS),
    purchases=st.lists(st.sampled_from(ITEM_IDS), max_size=5),
    k=st.integers(1, 10),
)
def test_top_item_is_most_popular_unpurchased_of_the_only_category(
    world: tuple[dict[str, tuple[str, ...]], dict[str, int]], target: str, purchases: list[str], k: int
) -> None:
    spec, counts = world
    in_target = [i for i, cats in spec.items() if cats == (target,)]
    clickable = in_target[:1]
    if not clickable:
        return
    params = Params()
    catalog = build_catalog(spec)
    bought = [i for i in purchases if i in in_target]  # purchases in the same category keep affinity pure
    p = profile_from(clickable, bought, catalog, params)
    assert set(p.affinity) == {target}
    recs = recommend(p, catalog, build_popularity(counts), k=k, params=params)
    check_shape(recs, k, set(bought))
    remaining = sorted((i for i in in_target if i not in bought), key=lambda i: -counts[i])
    assert [r.item_id for r in recs] == remaining[:k]
    if remaining:
        assert recs[0].score == pytest.approx(1.0)


@FAST
@given(world=worlds(), target=st.sampled_from(CATS), k=st.integers(1, 10))
def test_multi_category_items_follow_the_documented_score(
    world: tuple[dict[str, tuple[str, ...]], dict[str, int]], target: str, k: int
) -> None:
    """score = mean over the item's categories of the user's share x (pop + 1) / (max pop + 1),
    over the category's most popular unseen items."""
    spec, counts = world
    only = [i for i, cats in spec.items() if cats == (target,)]
    if not only:
        return
    params = Params()
    catalog = build_catalog(spec)
    p = profile_from(only[:1], [], catalog, params)
    assert set(p.affinity) == {target}
    recs = recommend(p, catalog, build_popularity(counts), k=k, params=params)
    # The pool (module docstring): the max(2k, 10) most popular items of the category,
    # with everything tied with the last one. A less popular single-category item can outscore a
    # pooled multi-category one and still not be a candidate (found by hypothesis: k=4, 15 items).
    unseen = sorted((i for i, cats in spec.items() if target in cats), key=lambda i: -counts[i])  # clicked, not bought: still a candidate
    if not unseen:
        return
    floor = counts[unseen[min(len(unseen), max(POOL_FACTOR * k, 10)) - 1]]
    candidates = [i for i in unseen if counts[i] >= floor]
    best = max(counts[i] for i in candidates)
    expected = {i: (1.0 / len(spec[i])) * (counts[i] + 1) / (best + 1) for i in candidates}
    # Near-ties (e.g. 1/3 x 9 vs 1 x 3) may order either way by one ulp: compare scores, not names.
    assert len(recs) == min(k, len(candidates))
    assert [r.score for r in recs] == pytest.approx(sorted(expected.values(), reverse=True)[:k], rel=1e-12)
    for r in recs:
        assert r.score == pytest.approx(expected[r.item_id], rel=1e-12)
        assert r.reasons and target in r.reasons[0]


def test_two_categories_weighted_by_affinity() -> None:
    # Hand-made: user affinity a:b = 3:1 (three clicks on a, one on b), popularity 10 vs 8.
    spec = {"x": ("a",), "y": ("b",), "z": ("a", "b"), "seen": ("a",), "seen_b": ("b",)}
    catalog = build_catalog(spec)
    params = Params()
    p = profile_from(["seen", "seen", "seen", "seen_b"], [], catalog, params)
    pop = build_popularity({"x": 4, "y": 10, "z": 8})
    recs = recommend(p, catalog, pop, k=3, params=params)
    # shares: a = 0.75, b = 0.25; scores = share * (pop + 1) / (10 + 1)
    expected = {"x": 0.75 * 5 / 11, "y": 0.25 * 11 / 11, "z": 0.5 * 9 / 11}
    assert [r.item_id for r in recs] == sorted(expected, key=lambda i: -expected[i])
    for r in recs:
        assert r.score == pytest.approx(expected[r.item_id], rel=1e-12)


# --- ties: a per-user hash, never the id string (issue 8) ---------------------------------------


def _tied_world(n: int = 12) -> tuple[Catalog, Popularity]:
    """n items of one category, all equally popular."""
    items = [f"i{j:02d}" for j in range(n)]
    return build_catalog({i: ("a",) for i in items + ["seen"]}), build_popularity({i: 3 for i in items})


def _affine(user: str, catalog: Catalog) -> Profile:
    ev = Click(event_id=f"{user}-c", ts=1_000.0, user_id=user, item_id="seen")
    out = apply(new_profile(user), ev, origin=None, categories=catalog.categories("seen"), params=Params())
    assert out is not None
    return out


def test_ties_are_broken_by_the_user_hash_not_the_id_string() -> None:
    catalog, pop = _tied_world()
    recs = recommend(_affine("alice", catalog), catalog, pop, k=5, params=Params())
    ids = [r.item_id for r in recs]
    assert len({r.score for r in recs}) == 1  # a real tie
    tied = sorted(catalog.items_in("a") - {"seen"}, key=lambda i: tie_key("alice", i))
    assert ids == tied[:5]
    assert ids != sorted(ids) and ids != sorted(catalog.ids())[:5]  # not alphabetical


def test_ties_differ_between_users_but_not_between_calls() -> None:
    catalog, pop = _tied_world()
    orders = {}
    for user in ("alice", "bob", "carol"):
        first = [r.item_id for r in recommend(_affine(user, catalog), catalog, pop, k=12, params=Params())]
        again = [r.item_id for r in recommend(_affine(user, catalog), catalog, pop, k=12, params=Params())]
        assert first == again
        orders[user] = first
    assert len({tuple(o) for o in orders.values()}) == 3
    assert {frozenset(o) for o in orders.values()} == {frozenset(catalog.ids() - {"seen"})}  # same items


def test_tie_order_is_the_same_in_another_process() -> None:
    """Stable across runs: not Python's salted ``hash()``."""
    import os
    import subprocess
    import sys

    code = (
        "from tests.unit.test_scoring import _tied_world, _affine\n"
        "from scoring.baseline import recommend\n"
        "from state.profile import Params\n"
        "c, p = _tied_world()\n"
        "print(','.join(r.item_id for r in recommend(_affine('alice', c), c, p, k=12, params=Params())))\n"
    )
    catalog, pop = _tied_world()
    here = [r.item_id for r in recommend(_affine("alice", catalog), catalog, pop, k=12, params=Params())]
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
        assert out.stdout.strip().split(",") == here


def test_strictly_better_items_always_beat_the_tie_window() -> None:
    """The pool is cut after the items that tie at its edge: more popular items are always in,
    and which tied ones follow is the user's hash order over *all* tied items (not the first by id)."""
    tied = [f"t{j:02d}" for j in range(40)]
    catalog = build_catalog({i: ("a",) for i in tied + ["top1", "top2", "seen"]})
    pop = build_popularity({"top1": 9, "top2": 7} | {i: 1 for i in tied})
    for user in ("alice", "bob"):
        recs = recommend(_affine(user, catalog), catalog, pop, k=4, params=Params())
        ids = [r.item_id for r in recs]
        assert ids[:2] == ["top1", "top2"]
        assert ids[2:] == sorted(tied, key=lambda i: tie_key(user, i))[:2]


def test_cold_start_on_empty_popularity_differs_per_user_and_says_so() -> None:
    """Right after a restart nothing is popular: users still get different catalog picks, and
    the reason does not claim popularity."""
    catalog = build_catalog({f"i{j:02d}": ("a",) for j in range(30)})
    lists = {u: recommend(new_profile(u), catalog, fresh(), k=5, params=Params()) for u in ("u1", "u2", "u3")}
    assert len({tuple(r.item_id for r in recs) for recs in lists.values()}) == 3
    for recs in lists.values():
        assert all(r.reasons == ["from the catalog: no activity on it yet"] for r in recs)
    warm = recommend(new_profile("u1"), catalog, build_popularity({"i07": 2}), k=2, params=Params())
    assert warm[0].item_id == "i07" and warm[0].reasons == ["popular overall (popularity 2.00)"]


def test_popularity_ties_are_not_in_id_order() -> None:
    pop = build_popularity({f"i{j:02d}": 1 for j in range(10)})
    ids = [i for _, i in pop.ranked(None)]
    assert sorted(ids) == [f"i{j:02d}" for j in range(10)] and ids != sorted(ids)
    assert ids == [i for _, i in build_popularity({f"i{j:02d}": 1 for j in reversed(range(10))}).ranked(None)]


def test_popularity_order_is_kept_incrementally_and_equals_a_full_sort() -> None:
    """Popularity.order moves only the items added to; at every step it must equal sorting all
    items by their value decayed to now (out-of-order event times included)."""
    import random

    from scoring.popularity import Popularity, tie_hash

    rng = random.Random(9)
    pop = Popularity(3.0)
    ts = 1_700_000_000.0
    for step in range(600):
        ts += rng.choice([0.0, 600.0, 86_400.0])
        pop.add(f"i{rng.randrange(80)}", rng.choice([1.0, 2.0, 3.0]), ts - rng.choice([0.0, 0.0, 3 * 86_400.0]))
        if step % 25 == 0:
            items = [i for _, _, i in pop.order()]
            values = {i: pop.value(i) for i in items}
            # Equal up to float noise in the values: compare orders where values differ clearly.
            for a, b in zip(items, items[1:], strict=False):
                assert values[a] >= values[b] * (1 - 1e-9), (a, b, values[a], values[b])
                if abs(values[a] - values[b]) <= 1e-12 * max(values[a], 1e-300):
                    assert (tie_hash(a), a) <= (tie_hash(b), b)
            assert set(items) == {i for i in (f"i{n}" for n in range(80)) if pop.value(i) > 0}


def test_popularity_values_are_each_items_value_bit_for_bit() -> None:
    """``values`` (the ranker's one call per ranking) inlines the decay: it must equal ``value``
    exactly, unknown items 0, at a "now" past every reference time."""
    import random

    from state.decay import weight_at

    rng = random.Random(3)
    pop = Popularity(2.5)
    events = [(f"i{rng.randrange(50)}", rng.random() * 4.0, 1e9 + rng.random() * 5e6) for _ in range(2_000)]
    for item, w, ts in events:
        pop.add(item, w, ts)
    items = [f"i{j}" for j in range(55)]
    assert pop.values(items) == [pop.value(i) for i in items]
    assert pop.values(["i999"]) == [0.0]
    # And value itself is the documented decayed sum (to rounding): independent of the class.
    hl = 2.5 * 86_400.0
    for item in ("i1", "i7"):
        expected = math.fsum(weight_at(w, ts, pop.now, hl) for i, w, ts in events if i == item)
        assert pop.value(item) == pytest.approx(expected, rel=1e-9)
