"""Attribute segments and their decayed popularity shares, the cold-start prior."""

from __future__ import annotations

import pytest

from scoring.popularity import tie_hash
from scoring.segments import SegmentPopularity, age_band, describe, segments_of
from state.decay import SECONDS_PER_DAY
from state.events import AttributeValue

DAY = SECONDS_PER_DAY
T0 = 880_000_000.0


# --- segments_of -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "under-18"),
        (17, "under-18"),
        (17.9, "under-18"),
        (18, "18-24"),
        (24, "18-24"),
        (25, "25-34"),
        (34, "25-34"),
        (35, "35-44"),
        (44, "35-44"),
        (45, "45-49"),
        (49, "45-49"),
        (50, "50-55"),
        (55, "50-55"),
        (56, "56+"),
        (73, "56+"),
    ],
)
def test_age_bands_edges(age: float, band: str) -> None:
    assert age_band(age) == band
    assert segments_of({"age": age}) == (f"age={band}",)


def test_age_from_string_and_bad_ages() -> None:
    assert segments_of({"age": " 30 "}) == ("age=25-34",)
    assert segments_of({"age": "old"}) == ()
    assert segments_of({"age": -1}) == ()
    assert segments_of({"age": float("nan")}) == ()


def test_movielens_user_zip_ignored() -> None:
    # u.user row "1|24|M|technician|85711" as stream_app/sources/movielens.py builds it.
    attrs: dict[str, AttributeValue | None] = {"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"}
    assert segments_of(attrs) == ("age=18-24", "gender=m", "occupation=technician")
    for name in ("zip", "zipcode", "zip_code", "Zip-Code", "postcode", "postal_code", "user_id"):
        assert segments_of({name: "12345"}) == ()


def test_values_normalised_sorted_and_empty_ignored() -> None:
    attrs: dict[str, AttributeValue | None] = {
        " Occupation ": "  Engineer ",
        "premium": True,
        "trial": False,
        "level": 3,
        "score": 2.5,
        "nick": "  ",
        "x": None,
    }
    assert segments_of(attrs) == ("level=3", "occupation=engineer", "premium=true", "score=2.5", "trial=false")
    assert segments_of({}) == ()
    # Deterministic whatever the mapping order.
    assert segments_of(dict(reversed(list(attrs.items())))) == segments_of(attrs)


def test_regression_segments_memo_keeps_equal_values_of_different_types_apart() -> None:
    # segments_of memoizes by (name, value): True == 1 == 1.0 in a dict key, so a memo keyed by
    # the values alone served "n=true" to a user whose attribute is the number 1.
    for value, expected in ((True, "n=true"), (1, "n=1"), (1.0, "n=1.0"), (False, "n=false"), (0, "n=0")):
        assert segments_of({"n": value}) == (expected,), value
    assert segments_of({"N": 1.0, "age": True}) == ("age=true", "n=1.0")  # a boolean age is not banded


def test_segments_follow_a_changed_mapping() -> None:
    attrs: dict[str, AttributeValue | None] = {"occupation": "engineer"}
    assert segments_of(attrs) == ("occupation=engineer",)
    attrs["occupation"] = "writer"
    attrs["age"] = 40
    assert segments_of(attrs) == ("age=35-44", "occupation=writer")
    del attrs["age"]
    assert segments_of(attrs) == ("occupation=writer",)


def test_describe() -> None:
    assert describe("age=25-34") == "users aged 25-34"
    assert describe("age=under-18") == "users aged under 18"
    assert describe("age=56+") == "users aged 56+"
    assert describe("occupation=engineer") == "users with occupation engineer"
    assert describe("gender=F") == "users with gender F"
    assert SegmentPopularity(1.0).describe("gender=f") == "users with gender f"


# --- SegmentPopularity -----------------------------------------------------------------------------


def test_share_is_decayed_hand_computed() -> None:
    hl = 10.0
    sp = SegmentPopularity(hl)
    seg = ["occupation=writer"]
    sp.add(seg, "a", 2.0, T0)
    sp.add(seg, "b", 1.0, T0 + 5 * DAY)
    sp.add(seg, "a", 1.0, T0 + 20 * DAY)
    now = T0 + 30 * DAY
    a = 2.0 * 2 ** (-30 / hl) + 1.0 * 2 ** (-10 / hl)
    b = 1.0 * 2 ** (-25 / hl)
    out = sp.top(seg, 5, exclude=(), now=now)
    assert [i for i, _, _ in out] == ["a", "b"]
    assert out[0][1] == pytest.approx(a / (a + b), rel=1e-12)
    assert out[1][1] == pytest.approx(b / (a + b), rel=1e-12)
    assert {lead for _, _, lead in out} == {"occupation=writer"}
    # A share does not depend on when it is read.
    assert sp.top(seg, 5, exclude=(), now=now + 400 * DAY) == out
    assert sp.score(seg, ["a", "b", "never"], now) == {
        "a": pytest.approx(a / (a + b), rel=1e-12),
        "b": pytest.approx(b / (a + b), rel=1e-12),
        "never": 0.0,
    }


def test_big_segment_does_not_drown_a_small_one() -> None:
    sp = SegmentPopularity(30.0)
    big, small = "gender=m", "occupation=doctor"
    for n in range(60):
        sp.add([big], "blockbuster", 1.0, T0 + n)
    for n in range(40):
        sp.add([big], f"other{n}", 1.0, T0 + n)
    for n in range(3):
        sp.add([small], "niche", 1.0, T0 + n)
    # Raw decayed sums would put "blockbuster" (about 60) far above "niche" (about 3).
    out = sp.top([big, small], 3, exclude=(), now=T0 + 100)
    assert out[0][0] == "niche" and out[0][2] == small
    assert out[0][1] == pytest.approx(1.0, rel=1e-6)
    assert out[1][0] == "blockbuster" and out[1][2] == big
    assert out[1][1] == pytest.approx(0.6, rel=1e-4)


def test_scores_sum_over_segments_and_lead_is_the_biggest_share() -> None:
    sp = SegmentPopularity(7.0)
    sp.add(["age=25-34", "gender=f"], "x", 1.0, T0)
    sp.add(["age=25-34"], "y", 3.0, T0)
    sp.add(["gender=f"], "y", 1.0, T0)
    # age: x 1/4, y 3/4; gender: x 1/2, y 1/2.
    out = sp.top(["gender=f", "age=25-34"], 5, exclude=(), now=T0)
    assert [(i, lead) for i, _, lead in out] == [("y", "age=25-34"), ("x", "gender=f")]
    assert [s for _, s, _ in out] == pytest.approx([1.25, 0.75])
    assert sp.score(["age=25-34", "gender=f", "unknown=segment"], ["x", "y"], T0) == {"x": pytest.approx(0.75), "y": pytest.approx(1.25)}
    # Repeated segments count once.
    assert sp.top(["gender=f", "gender=f", "age=25-34"], 5, exclude=(), now=T0) == out


def test_exclude_and_empty_and_unknown_segments() -> None:
    sp = SegmentPopularity(7.0)
    for item, w in [("x", 3.0), ("y", 2.0), ("z", 1.0)]:
        sp.add(["s=1"], item, w, T0)
    assert [i for i, _, _ in sp.top(["s=1"], 2, exclude={"x"}, now=T0)] == ["y", "z"]
    assert sp.top(["s=1"], 5, exclude={"x", "y", "z"}, now=T0) == []
    assert sp.top([], 5, exclude=(), now=T0) == []
    assert sp.top(["nobody=here"], 5, exclude=(), now=T0) == []
    assert sp.top(["s=1"], 0, exclude=(), now=T0) == []
    sp.add([], "w", 1.0, T0)  # no segments: nothing recorded
    assert sp.score(["s=1"], ["w"], T0) == {"w": 0.0}


def test_exclude_does_not_shrink_the_pool() -> None:
    # k=1 reads 20 candidates per segment; excluded items must not use those places up.
    sp = SegmentPopularity(7.0)
    for n in range(30):
        sp.add(["s=1"], f"i{n:02d}", float(100 - n), T0)
    exclude = {f"i{n:02d}" for n in range(25)}
    assert [i for i, _, _ in sp.top(["s=1"], 1, exclude=exclude, now=T0)] == ["i25"]


def test_ties_go_by_tie_hash_not_id() -> None:
    assert tie_hash("b") < tie_hash("a") and tie_hash("m3") < tie_hash("m4")
    sp = SegmentPopularity(7.0)
    for item in ("a", "b", "m3", "m4"):
        sp.add(["s=1"], item, 1.0, T0)
    assert [i for i, _, _ in sp.top(["s=1"], 4, exclude=(), now=T0)] == sorted(["a", "b", "m3", "m4"], key=tie_hash)
    order = [i for i, _, _ in sp.top(["s=1"], 4, exclude=(), now=T0)]
    assert order.index("b") < order.index("a") and order.index("m3") < order.index("m4")


def test_ranking_cache_follows_new_events() -> None:
    sp = SegmentPopularity(7.0)
    sp.add(["s=1"], "x", 2.0, T0)
    sp.add(["s=1"], "y", 1.0, T0)
    sp.add(["s=2"], "z", 1.0, T0)
    assert [i for i, _, _ in sp.top(["s=1", "s=2"], 1, exclude=(), now=T0)] == ["z"]  # z: 1, x: 2/3
    sp.add(["s=1"], "y", 5.0, T0 + DAY)  # only s=1 changed
    y = 1.0 * 2 ** (-1 / 7) + 5.0
    x = 2.0 * 2 ** (-1 / 7)
    out = sp.top(["s=1", "s=2"], 3, exclude=(), now=T0 + DAY)
    assert [i for i, _, _ in out] == ["z", "y", "x"]
    assert out[1][1] == pytest.approx(y / (x + y), rel=1e-12)
    assert len(sp) == 2


def test_deterministic() -> None:
    def build() -> SegmentPopularity:
        sp = SegmentPopularity(14.0)
        for n in range(200):
            segs = segments_of({"age": 15 + n % 50, "gender": "MF"[n % 2], "occupation": ("writer", "doctor", "artist")[n % 3]})
            sp.add(segs, f"i{n % 37}", 1.0 + n % 5, T0 + n * 3_600)
        return sp

    a, b = build(), build()
    segs = segments_of({"age": 30, "gender": "F", "occupation": "doctor"})
    assert segs == ("age=25-34", "gender=f", "occupation=doctor")
    top_a = a.top(segs, 10, exclude={"i1"}, now=T0)
    assert top_a == b.top(segs, 10, exclude={"i1"}, now=T0)
    assert top_a == a.top(tuple(reversed(segs)), 10, exclude={"i1"}, now=T0)
    assert len(top_a) == 10
    scores = a.score(segs, [i for i, _, _ in top_a], T0)
    assert [scores[i] for i, _, _ in top_a] == [s for _, s, _ in top_a]


def test_rejects_bad_half_life() -> None:
    with pytest.raises(ValueError):
        SegmentPopularity(0.0)


def test_top_scores_are_the_shares_summed_bit_for_bit_with_the_leading_segment() -> None:
    """``top`` computes shares a segment at a time; each score must equal ``score`` (one
    ``share`` per item and segment, summed in name order) exactly, and the lead be the first
    segment, by name, with the largest share."""
    import random

    rng = random.Random(5)
    sp = SegmentPopularity(3.0)
    names = ["age=18-24", "gender=f", "gender=m", "occupation=artist", "occupation=writer"]
    for _ in range(3_000):
        segs = rng.sample(names, rng.randint(1, 3))
        sp.add(segs, f"i{rng.randrange(120)}", rng.choice([1.0, 2.0, 3.0]), T0 + rng.random() * 40 * SECONDS_PER_DAY)
    asked = ["gender=f", "age=18-24", "occupation=writer", "unknown=segment"]
    out = sp.top(asked, 30, exclude={"i3", "i4"}, now=T0, scan=10)
    assert len(out) == 30 and not {"i3", "i4"} & {i for i, _, _ in out}
    expected = sp.score(asked, [i for i, _, _ in out], T0)
    for item, score, lead in out:
        assert score == expected[item]
        shares = [(sp.share(s, item), s) for s in sorted(set(asked))]
        best = max(x for x, _ in shares)
        assert lead == next(s for x, s in shares if x == best)
    assert [s for _, s, _ in out] == sorted((s for _, s, _ in out), reverse=True)


def test_cached_shares_are_the_shares_of_a_fresh_instance_after_every_add() -> None:
    """``top`` keeps each segment's shares until the segment's next add (a burst of rankings
    reads them again). Every answer must be bit-identical to that of an instance that saw the
    same adds and never ranked before, whether the shares came from the cache or not."""
    import random

    rng = random.Random(7)
    names = ["age=25-34", "gender=f", "gender=m", "occupation=doctor", "occupation=writer"]
    items = [f"i{n}" for n in range(60)]
    adds: list[tuple[list[str], str, float, float]] = []
    ranked = SegmentPopularity(half_life_days=3.0)
    checks = 0
    ts = 1_000_000.0
    for step in range(400):
        ts += rng.uniform(-3_000, 9_000)  # some adds out of event-time order
        add = (rng.sample(names, rng.randrange(1, 4)), rng.choice(items), rng.choice([1.0, 3.0, 5.0]), ts)
        adds.append(add)
        ranked.add(*add)
        for _ in range(rng.randrange(0, 4)):  # 0-3 rankings between adds: cache hits and misses
            segs = rng.sample(names, rng.randrange(1, 4))
            exclude = set(rng.sample(items, 5))
            fresh = SegmentPopularity(half_life_days=3.0)
            for a in adds:
                fresh.add(*a)
            got = ranked.top(segs, 10, exclude=exclude, now=ts)
            assert got == fresh.top(segs, 10, exclude=exclude, now=ts), step
            checks += 1
    assert checks > 300
