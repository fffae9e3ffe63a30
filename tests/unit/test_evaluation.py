"""Prequential evaluation: metrics, positive labels, baselines and item-kNN on hand-made streams.

Expected figures are worked out by hand in the comments (or by a brute-force recount of the
events for item-kNN), never by the code under test.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from scoring.baseline import tie_key
from scoring.evaluation import (
    Accumulator,
    CountPopularity,
    DecayedPopularity,
    Interactions,
    Label,
    RankIndex,
    jaccard,
    ndcg,
    paired_rating,
)
from scoring.knn import ItemKNN
from state.events import Click, Event, Follow, Item, Purchase, Review, User
from stream_app.evaluate import LAST_EMITTED, REQUIRED, VARIANTS, evaluate, selected_variants
from stream_app.settings import Settings
from stream_app.sources import read_events

SETTINGS = Settings()
LOG2_3 = math.log2(3)


def buy(n: int, user: str, item: str, ts: float | None = None) -> Purchase:
    return Purchase(event_id=f"p{n}", ts=float(n if ts is None else ts), user_id=user, item_id=item)


def review(n: int, user: str, item: str, rating: float | None, ts: float | None = None) -> Review:
    return Review(event_id=f"r{n}", ts=float(n if ts is None else ts), user_id=user, item_id=item, text="", rating=rating)


# --- metrics -----------------------------------------------------------------------------------------


def test_ndcg_is_one_over_log2_of_rank_plus_one_within_k() -> None:
    assert ndcg(1, 10) == 1.0
    assert ndcg(2, 10) == pytest.approx(1 / LOG2_3)
    assert ndcg(3, 10) == pytest.approx(0.5)
    assert ndcg(11, 10) == 0.0 and ndcg(None, 10) == 0.0


def test_accumulator_by_hand() -> None:
    acc = Accumulator((1, 3))
    cats = {"a": {"x"}, "b": {"x", "y"}, "c": {"z"}, "p": {"x"}, "q": {"x"}}

    def sim(i: str, j: str) -> float | None:
        return jaccard(frozenset(cats.get(i, ())), frozenset(cats.get(j, ())))

    acc.add(["a", "b", "c"], "b", cold=True, similarity=sim)  # rank 2
    acc.add(["p", "q"], "p", cold=False, similarity=sim)  # rank 1
    acc.add([], "z", cold=False, similarity=sim)  # nothing to rank
    out = acc.result(items_seen=10)
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert out["ndcg@3"] == pytest.approx((1 / LOG2_3 + 1) / 3)
    assert out["coverage@1"] == pytest.approx(2 / 10)  # a, p
    assert out["coverage@3"] == pytest.approx(5 / 10)  # a, b, c, p, q
    # @3, list 1: pairs ab (J 1/2), ac (0), bc (0) -> mean(1/2, 1, 1) = 5/6; list 2: pq J 1 -> 0.
    assert out["diversity@3"] == pytest.approx((5 / 6 + 0.0) / 2)
    assert out["diversity@1"] == 0.0  # one item: no pair
    assert out["cold_share"] == pytest.approx(1 / 3)
    assert out["evaluated"] == 3 and out["empty_share"] == pytest.approx(1 / 3)


def test_jaccard_leaves_out_items_it_cannot_compare() -> None:
    assert jaccard(frozenset({"a"}), frozenset()) is None
    assert jaccard(frozenset({"a", "b"}), frozenset({"b", "c"})) == pytest.approx(1 / 3)


# --- labels ------------------------------------------------------------------------------------------


def test_positive_rules() -> None:
    inter = Interactions()
    p = buy(1, "u", "a")
    r = review(1, "u", "a", 3.0, ts=1.0)
    # A purchase takes the rating of the review emitted with it (next event, same user/item/ts).
    assert paired_rating(p, r) == 3.0
    assert paired_rating(p, review(2, "u", "a", 5.0)) is None  # another time: not the same line
    assert paired_rating(p, review(1, "v", "a", 5.0, ts=1.0)) is None  # another user
    assert paired_rating(p, None) is None
    first = inter.label(p, r)
    assert first is not None and not first.positive  # rating 3 < 4
    assert not first.evaluated and first.earlier == 0 and first.cold
    inter.record(p)
    again = inter.label(r)
    assert again is not None and not again.first and not again.positive  # not a first interaction
    inter.record(r)
    # Rating 4 counts; so does a purchase with no rating (MovieLens).
    lab = inter.label(review(5, "u", "b", 4.0))
    assert lab is not None and lab.positive and lab.evaluated and lab.earlier == 1 and lab.cold
    assert (inter.label(buy(6, "u", "c")) or pytest.fail()).positive
    # A click is an interaction but never a positive.
    click = Click(event_id="c1", ts=7.0, user_id="u", item_id="d")
    assert not (inter.label(click) or pytest.fail()).positive
    # Only interactions get labels.
    assert inter.label(User(event_id="x", ts=1.0, user_id="u")) is None
    assert inter.label(Item(event_id="i", ts=1.0, item_id="a")) is None
    warm = Label(user_id="u", item_id="z", kind_counts=True, first=True, rating=None, earlier=3)
    assert warm.evaluated and not warm.cold


def _stream() -> list[Event]:
    """The hand-worked stream of the tests below (no catalog: candidates are interacted items)."""
    return [
        User(event_id="ua", ts=0.0, user_id="a"),  # not an interaction: does not make a history
        buy(1, "a", "I1"),
        buy(2, "b", "I1"),
        buy(3, "c", "I1"),
        buy(4, "b", "I2"),  # eval: b {I1}; popularity [] -> miss
        buy(5, "c", "I2"),  # eval: c {I1}; [I2] -> rank 1
        buy(6, "a", "I3"),  # eval: a {I1}; [I2] -> miss
        buy(7, "d", "I2"),  # d has no history: not evaluated
        buy(8, "a", "I2"),  # eval: a {I1,I3}; [I2] -> rank 1
        buy(9, "b", "I3"),  # eval: b {I1,I2}; [I3] -> rank 1
        buy(10, "d", "I3"),  # eval: d {I2}; [I1 (3), I3 (2)] -> rank 2
        buy(11, "d", "I1"),  # eval: d {I2,I3}; [I1] -> rank 1
        buy(12, "d", "I1"),  # repeat: not a first interaction
        buy(13, "a", "I4"),  # eval: a {I1,I3,I2} (warm); nothing left -> miss
        buy(14, "c", "I3"),
        review(14, "c", "I3", 5.0, ts=14.0),  # the line's review: not a first interaction
        buy(15, "b", "I5"),
        review(15, "b", "I5", 2.0, ts=15.0),  # rating 2: the purchase is not a positive
        review(16, "c", "I4", None),  # review without rating or purchase: positive; c {I1,I2,I3}
    ]


def test_hand_worked_stream_popularity_figures() -> None:
    rep = evaluate(_stream(), SETTINGS, ks=(1, 10))
    assert rep.events == 19
    # Positives: every first purchase except b/I5 (rating 2): 16 first interactions... of
    # which a/I1, b/I1, c/I1, d/I2 have no earlier interaction: 8 + c/I3 + c/I4 evaluated.
    assert rep.evaluated == 10
    assert rep.counts["skipped_no_history"] == 4
    pop = rep.variants["popularity"]
    # t14 c/I3: c {I1,I2}: counts I3 3 (a,b,d), I4 1 -> [I3, I4], rank 1.
    # t16 c/I4: c {I1,I2,I3}: [I4 (1), I5 (1)] tie broken by tie_key(c, .).
    i4_first = tie_key("c", "I4") < tie_key("c", "I5")
    hits10 = 5 + 1 + 1
    gain10 = 4 + 1 / LOG2_3 + 1 + (1.0 if i4_first else 1 / LOG2_3)
    assert pop["recall@10"] == pytest.approx(hits10 / 10)
    assert pop["ndcg@10"] == pytest.approx(gain10 / 10)
    assert pop["recall@1"] == pytest.approx((4 + 1 + i4_first) / 10)
    # Cold (< 3 earlier items): all but a/I4, c/I4 -> 8 of 10.
    assert pop["cold_share"] == pytest.approx(8 / 10)
    # Seconds apart with a 14-day half-life: decayed popularity orders like the counts here.
    dec = rep.variants["decayed_popularity"]
    assert dec["recall@10"] == pytest.approx(hits10 / 10)
    # Coverage@10 of popularity: I1, I2, I3, I4, I5 were recommended of 5 seen.
    assert pop["coverage@10"] == pytest.approx(5 / 5)
    # No catalog: the blend ranker still has co-occurrence and trending candidates, so every
    # evaluated user gets a list; the baseline ranker (categories only) had nothing to rank.
    # (the 2 empty lists are positives where every item seen so far was already the user's)
    assert rep.variants["all"]["empty_share"] == pytest.approx(0.2) and rep.variants["all"]["recall@10"] > 0.0
    base = evaluate(_stream(), SETTINGS.model_copy(update={"ranker": "baseline"}), ks=(1, 10))
    assert base.variants["all"]["recall@10"] == 0.0 and base.variants["all"]["empty_share"] == 1.0
    assert set(REQUIRED) <= set(rep.variants) and LAST_EMITTED in rep.variants["all"]


def test_lists_exclude_interacted_items_and_the_target_is_new_to_the_user() -> None:
    events = list(read_events("synthetic", None))
    # Each user's distinct items in order of first interaction, from the stream itself: a
    # positive is a first interaction, so what the user had before is the prefix before it.
    order: dict[str, list[str]] = {}
    for e in events:
        if isinstance(e, (Click, Purchase, Review)) and e.item_id not in order.setdefault(e.user_id, []):
            order[e.user_id].append(e.item_id)
    checked = 0

    def trace(label: Label, lists: dict[str, list[str]]) -> None:
        nonlocal checked
        history = order[label.user_id]
        before = set(history[: history.index(label.item_id)])
        assert len(before) == label.earlier >= 1
        assert set(lists) == {*VARIANTS, LAST_EMITTED}
        for name, ranked in lists.items():
            assert not set(ranked) & before, name
            assert len(ranked) == len(set(ranked)) <= 10, name
        checked += 1

    rep = evaluate(events, SETTINGS, ks=(10,), trace=trace)
    assert checked == rep.evaluated > 300
    # With a catalog and emit interval 0 the pipeline has lists in both readings (50 items, 8
    # categories: the ranker's candidates from a user's strongest categories run short).
    assert rep.variants["all"]["mean_length"] > 5
    assert rep.variants["all"][LAST_EMITTED]["mean_length"] > 5


def test_two_runs_give_identical_reports() -> None:
    events = list(read_events("synthetic", None))
    a = evaluate(events, SETTINGS, ks=(5, 10)).to_json()
    b = evaluate(events, SETTINGS, ks=(5, 10)).to_json()
    assert a == b
    assert set(a["variants"]) == set(VARIANTS)
    for key in ("recall@10", "ndcg@10", "coverage@10", "diversity@10", "cold_share"):
        assert key in a["variants"]["all"][LAST_EMITTED]
        for figures in a["variants"].values():
            assert 0.0 <= figures[key] <= 1.0


def test_required_variants_are_always_reported() -> None:
    assert selected_variants(["decayed_popularity"]) == ("all", "popularity", "decayed_popularity", "item_knn")
    assert selected_variants([]) == ("all", "popularity", "item_knn")
    with pytest.raises(ValueError):
        selected_variants(["nope"])


def test_follows_and_users_do_not_make_a_history() -> None:
    events: list[Event] = [
        Follow(event_id="f", ts=0.0, user_id="u", followee_id="v"),
        User(event_id="x", ts=0.0, user_id="u"),
        buy(1, "v", "a"),
        buy(2, "u", "a"),  # u's first interaction: not evaluated
        buy(3, "u", "b"),  # evaluated
    ]
    rep = evaluate(events, SETTINGS)
    assert rep.evaluated == 1 and rep.counts["skipped_no_history"] == 2


# --- baselines ---------------------------------------------------------------------------------------


def test_rank_index_matches_a_full_sort() -> None:
    rng = random.Random(3)
    index = RankIndex()
    keys: dict[str, float] = {}
    for step in range(400):
        item = f"i{rng.randrange(60)}"
        key = float(rng.randrange(8))  # many ties
        index.set(item, key)
        keys[item] = key
        if step % 20 == 0:
            user = f"u{step}"
            exclude = {f"i{rng.randrange(60)}" for _ in range(10)}
            want = sorted((i for i in keys if i not in exclude), key=lambda i: (-keys[i], tie_key(user, i)))[:7]
            assert [i for i, _ in index.top(user, 7, exclude)] == want


def test_decayed_popularity_orders_like_the_popularity_values() -> None:
    rng = random.Random(5)
    dec = DecayedPopularity(14.0)
    ts = 1_000_000.0
    for _ in range(300):
        ts += rng.choice([0.0, 3_600.0, 86_400.0 * 3])
        dec.add(f"i{rng.randrange(40)}", rng.choice([1.0, 2.0, 3.0]), ts)
    dec.see("never")
    values = {f"i{n}": dec.popularity.value(f"i{n}") for n in range(40)} | {"never": 0.0}
    want = sorted(values, key=lambda i: (-values[i], tie_key("u", i)))
    assert [i for i, _ in dec.top("u", 41, ())] == want


def test_count_popularity_counts_and_candidates() -> None:
    pop = CountPopularity()
    pop.see("cat-only")
    for item in ["a", "b", "a", "c", "a", "b"]:
        pop.add(item)
    assert [i for i, _ in pop.top("u", 3, {"b"})] == ["a", "c", "cat-only"]


# --- item-kNN ----------------------------------------------------------------------------------------


def _brute(stream: list[tuple[str, str]], window: int) -> tuple[Counter[tuple[str, str]], Counter[str], dict[str, list[str]]]:
    """Co-occurrence recounted from scratch: each user's distinct items in order; an item
    co-occurs with the ``window`` distinct items before it."""
    histories: dict[str, list[str]] = {}
    for user, item in stream:
        h = histories.setdefault(user, [])
        if item not in h:
            h.append(item)
    pairs: Counter[tuple[str, str]] = Counter()
    users: Counter[str] = Counter()
    for h in histories.values():
        for p, item in enumerate(h):
            users[item] += 1
            for other in h[max(0, p - window) : p]:
                pairs[(item, other)] += 1
                pairs[(other, item)] += 1
    return pairs, users, histories


def test_item_knn_counts_and_scores_match_a_brute_force_recount() -> None:
    rng = random.Random(11)
    window = 4
    stream = [(f"u{rng.randrange(12)}", f"i{min(rng.randrange(30), rng.randrange(30))}") for _ in range(400)]
    knn = ItemKNN(window)
    for user, item in stream:
        knn.observe(user, item)
    pairs, users, histories = _brute(stream, window)
    items = sorted(users)
    for a in items:
        assert knn.count(a) == users[a]
        for b in items:
            assert knn.cooccurrence(a, b) == pairs[(a, b)], (a, b)

    def sim(a: str, b: str) -> float:
        return pairs[(a, b)] / math.sqrt(users[a] * users[b])

    for user, h in histories.items():
        recent = h[-window:]
        want = {j: sum(sim(x, j) for x in recent) for j in items if j not in h}
        want = {j: s for j, s in want.items() if s > 0}
        got = knn.score(recent)
        for j, s in want.items():
            assert got[j] == pytest.approx(s, rel=1e-12)
        top = knn.recommend(user, 5)
        assert len(top) == min(5, len(want))
        assert not {i for i, _ in top} & set(h)
        # Best first; no left-out item scores better than the last one kept (beyond rounding).
        scores = [s for _, s in top]
        assert scores == sorted(scores, reverse=True)
        if top:
            kept = {i for i, _ in top}
            assert all(s <= scores[-1] * (1 + 1e-9) for j, s in want.items() if j not in kept)
    a = items[0]
    nbrs = knn.neighbours(a, 3)
    want_n = sorted((b for b in items if b != a and pairs[(a, b)]), key=lambda b: -sim(a, b))[:3]
    assert [sim(a, b) for b, _ in nbrs] == pytest.approx([sim(a, b) for b in want_n])


def test_item_knn_score_with_recency_is_the_row_by_row_sum_bit_for_bit() -> None:
    """``score`` sums each history row's contributions newest first (one bincount over all
    rows since it was a numpy += per row): each candidate's sum must be the same float
    additions in the same order as adding the rows one by one, so rankings do not move.
    An unknown history item still takes its place in the recency ages."""
    rng = random.Random(5)
    stream = [(f"u{rng.randrange(25)}", f"i{min(rng.randrange(80), rng.randrange(80))}") for _ in range(2000)]
    knn = ItemKNN(12)
    for user, item in stream:
        knn.observe(user, item)
    recency = 0.93
    checked = 0
    for user in sorted({u for u, _ in stream}):
        history = [*knn.history(user), "never-seen"]
        sums: dict[str, float] = {}
        for age, h in enumerate(reversed(list(dict.fromkeys(history)))):
            if knn.count(h) == 0:
                continue
            scale = (1.0 / math.sqrt(knn.count(h))) * recency**age
            for j, _ in knn.neighbours(h, 10_000):  # one entry per j in a row: its order is immaterial
                sums[j] = sums.get(j, 0.0) + knn.cooccurrence(h, j) * scale
        want = {j: v * (1.0 / math.sqrt(max(knn.count(j), 1))) for j, v in sums.items() if v > 0.0}
        assert knn.score(history, recency=recency) == want, user
        checked += len(want)
    assert checked > 1000


def test_item_knn_ties_follow_the_user_hash() -> None:
    knn = ItemKNN()
    for user in ("x", "y"):
        knn.observe(user, "h")
    knn.observe("x", "p")
    knn.observe("y", "q")  # p and q tie for a user whose history is [h]
    knn.observe("u", "h")
    got = [i for i, _ in knn.recommend("u", 2)]
    assert got == sorted(["p", "q"], key=lambda i: tie_key("u", i))
    assert knn.recommend("u", 1)[0][0] == got[0]


def test_item_knn_bounded_rows_match_a_reference_that_cuts_by_count() -> None:
    """``max_neighbours=N``: a row reaching 2N entries keeps its N largest counts (ties by the
    stable hash); recomputed here with plain dicts, increment by increment."""
    from scoring.popularity import tie_hash

    rng = random.Random(3)
    window, bound = 6, 4
    stream = [(f"u{rng.randrange(40)}", f"i{min(rng.randrange(60), rng.randrange(60))}") for _ in range(1500)]
    knn = ItemKNN(window, max_neighbours=bound)
    rows: dict[str, dict[str, int]] = {}
    histories: dict[str, list[str]] = {}

    def inc(a: str, b: str) -> None:
        row = rows.setdefault(a, {})
        if b not in row and len(row) >= 2 * bound:
            kept = sorted(row, key=lambda x: (-row[x], tie_hash(x), x))[:bound]
            rows[a] = row = {x: row[x] for x in row if x in kept}
        row[b] = row.get(b, 0) + 1

    for user, item in stream:
        h = histories.setdefault(user, [])
        if item in h:
            continue
        knn.observe(user, item)
        for other in h[-window:]:
            inc(other, item)
            inc(item, other)
        h.append(item)
    assert knn.cuts > 0
    for a, row in rows.items():
        assert knn.neighbour_count(a) == len(row) <= 2 * bound
        for b, c in row.items():
            assert knn.cooccurrence(a, b) == c, (a, b)


@pytest.mark.parametrize("bound", [0, 3])
def test_item_knn_bound_keeps_every_count_below_it(bound: int) -> None:
    knn, full = ItemKNN(max_neighbours=bound), ItemKNN()
    for k in (knn, full):
        for user in range(5):
            for item in ("a", "b", "c"):
                k.observe(f"u{user}", item)
    assert knn.cuts == 0
    assert all(knn.cooccurrence(a, b) == full.cooccurrence(a, b) for a in "abc" for b in "abc")
    with pytest.raises(ValueError):
        ItemKNN(max_neighbours=-1)


@pytest.mark.parametrize("window", [0, -1])
def test_item_knn_window_must_be_positive(window: int) -> None:
    with pytest.raises(ValueError):
        ItemKNN(window)


def test_amazon_meta_option_is_refused_for_other_formats(tmp_path: Path) -> None:
    from state.errors import DatasetError

    with pytest.raises(DatasetError):
        read_events("movielens", tmp_path, meta=tmp_path / "meta.json.gz")


# --- the runner and the command ----------------------------------------------------------------------


def test_coalescing_on_request_emits_less_and_reads_the_older_message() -> None:
    events = list(read_events("synthetic", None))
    # Without social fan-out, only a user's own events make their messages.
    own = SETTINGS.model_copy(update={"social_fanout": 0})
    every = evaluate(events, own)
    # An interval longer than the stream: the leading edge only, then the final flush.
    once = evaluate(events, own, emit_interval_s=1e12)
    users = {e.user_id for e in events if isinstance(e, (Click, Purchase, Review, Follow, User))}
    assert every.counts["messages"] == sum(not isinstance(e, Item) for e in events)
    assert once.counts["messages"] == 2 * len(users) - sum(
        1 for u in users if sum(1 for e in events if getattr(e, "user_id", None) == u) == 1
    )
    # The fresh reading does not depend on coalescing; the last emitted one does.
    assert once.variants["all"]["ndcg@10"] == every.variants["all"]["ndcg@10"]
    assert once.variants["all"][LAST_EMITTED] != every.variants["all"][LAST_EMITTED]


def test_command_writes_the_report(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from state.events import encode
    from stream_app.cli import app

    stream = tmp_path / "stream.jsonl"
    stream.write_bytes(b"\n".join(encode(e) for e in read_events("synthetic", None, limit=2_000)) + b"\n")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--format", "jsonl", str(stream), "--k", "5,10", "--variants", "popularity",
            "--report-json", str(out), "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["dataset"] == "jsonl:stream.jsonl" and report["events"] == 2_000
    assert set(report["variants"]) == {"all", "popularity", "item_knn"}  # the required ones are added
    assert report["evaluated"] == report["variants"]["popularity"]["evaluated"] > 0
    for key in ("recall@5", "ndcg@10", "coverage@10", "diversity@10", "cold_share"):
        assert key in report["variants"]["all"][LAST_EMITTED]
    assert "rankings/s" in result.output


def test_amazon_meta_option_names_the_catalog_file(tmp_path: Path) -> None:
    import gzip
    import json

    reviews = tmp_path / "Toys_5.json.gz"
    rows = [
        {"reviewerID": "u1", "asin": "a1", "overall": 5.0, "unixReviewTime": 100, "reviewText": "ok"},
        {"reviewerID": "u1", "asin": "a2", "overall": 2.0, "unixReviewTime": 200, "reviewText": "meh"},
    ]
    reviews.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    meta = tmp_path / "elsewhere" / "items.json.gz"
    meta.parent.mkdir()
    meta.write_bytes(gzip.compress(json.dumps({"asin": "a1", "title": "Ball", "category": ["Toys", "Balls"]}).encode()))
    assert not any(isinstance(e, Item) for e in read_events("amazon", reviews))
    with_meta = list(read_events("amazon", reviews, meta=meta))
    items = [e for e in with_meta if isinstance(e, Item)]
    assert [(i.item_id, i.categories) for i in items] == [("a1", ["Toys", "Balls"])]
    assert with_meta[0] == items[0]  # the catalog first, at the earliest review time
    # a2's purchase takes its review's 2 stars: not a positive; u1 has no earlier item for a1.
    rep = evaluate(with_meta, SETTINGS)
    assert rep.evaluated == 0 and rep.counts["positives"] == 1
    from state.errors import DatasetError

    with pytest.raises(DatasetError):
        list(read_events("amazon", reviews, meta=tmp_path / "missing.json.gz"))


def test_a_replayed_stream_gives_bit_identical_messages() -> None:
    """Every message of a replay, twice, byte for byte: scores depend on event time only (the
    synthetic stream has follows and attributes, so social and segment state are in play)."""
    events = list(read_events("synthetic", None))
    assert any(isinstance(e, Follow) for e in events) and any(isinstance(e, User) for e in events)
    runs: list[list[tuple[bytes, bytes]]] = [[], []]
    for sink in runs:
        evaluate(events, SETTINGS, on_message=lambda k, v, sink=sink: sink.append((k, v)))  # type: ignore[misc]
    assert len(runs[0]) > len(events) // 2
    assert runs[0] == runs[1]


def test_item_knn_cut_breaks_a_crc32_collision_by_id() -> None:
    """The vectorised cut orders by (count, 32-bit tie hash); two neighbours with equal counts
    and colliding hashes at the cut are ordered by id, as the reference sort does, not by
    insertion order (which differs between workers)."""
    from scoring.popularity import tie_hash

    first, second = "c699378", "c18020006"
    assert tie_hash(first) == tie_hash(second) and second < first
    knn = ItemKNN(max_neighbours=1)
    knn.add(["a"], first)
    knn.add(["a"], second)
    knn.add(["a"], "z")  # row a is full (2 entries): cut to 1, then z joins
    assert knn.cuts >= 1
    assert knn.cooccurrence("a", second) == 1
    assert knn.cooccurrence("a", first) == 0
    assert knn.cooccurrence("a", "z") == 1


def test_regression_harness_encodes_the_item_text_the_worker_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness encoded an item's description alone; the worker's item encoder encodes title,
    # categories and description (state.events.item_text). MovieLens items (a title and genres, no
    # description) had text vectors in the workers and none in the evaluation or the training features.
    from encoders.text_cache import CACHE_ENV
    from state.events import item_text
    from state.interest import item_vector_bytes, text_digest
    from stream_app.evaluate import Replay
    from tests.support import CountingEncoder

    monkeypatch.setenv(CACHE_ENV, "off")
    events: list[Event] = [
        Item(event_id="i1", ts=1.0, item_id="m1", title="Fargo (1996)", categories=["Crime", "Drama"]),
        Item(event_id="i2", ts=1.0, item_id="m2", title="Strings", categories=[], text="Nickel wound"),
        Item(event_id="i3", ts=1.0, item_id="m3"),  # nothing to encode: no vector, as in the worker
    ]
    encoder = CountingEncoder("v-test")
    replay = Replay(events, SETTINGS, ks=(5,), variants=(), emit_interval_s=0.0, trace=None, encoder=encoder)
    want = {0: item_text("Fargo (1996)", ["Crime", "Drama"], ""), 1: item_text("Strings", [], "Nickel wound")}
    assert sorted(encoder.texts) == sorted(want.values())
    assert sorted(replay.item_vectors) == [0, 1]
    for n, text in want.items():
        vector = replay.item_vectors[n]
        assert vector.digest == text_digest(text) and vector.version == "v-test"
        assert vector.vector == item_vector_bytes(encoder.encode([text])[0])  # float16-rounded, as the worker publishes
