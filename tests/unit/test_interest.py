"""Interest vectors and sentiment: decay math against a direct recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.events import ITEM_TEXT_CHARS, Click, Purchase, Review, item_text
from state.interest import ItemVector, add_sentiment, add_vector, blend_sentiment, sentiment_means
from state.profile import Encoding, Origin, Params, apply, new_profile

HL = 30 * 86_400.0


def _unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3e7), st.integers(0, 10_000)), min_size=1, max_size=20), st.randoms())
def test_interest_is_the_decayed_mean_in_any_order(events: list[tuple[float, int]], rnd: object) -> None:
    order = list(events)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    interest = None
    for ts, seed in order:
        interest = add_vector(interest, _unit(seed), "v1", 1.0, ts, HL)
    assert interest is not None
    ref = max(ts for ts, _ in events)
    w = np.array([math.exp(-math.log(2) * (ref - ts) / HL) for ts, _ in events])
    want = (np.stack([_unit(s).astype(np.float64) for _, s in events]) * w[:, None]).sum(0) / w.sum()
    got = interest.mean().astype(np.float64)
    assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) > 0.99999
    assert interest.ref_ts == ref


def test_a_new_encoder_version_restarts_interest_never_mixes() -> None:
    a = add_vector(None, _unit(1), "v1", 1.0, 10.0, HL)
    a = add_vector(a, _unit(2), "v1", 1.0, 20.0, HL)
    b = add_vector(a, _unit(3), "v2", 1.0, 30.0, HL)
    assert b.version == "v2" and b.weight == 1.0
    np.testing.assert_allclose(b.mean(), _unit(3), rtol=1e-6)


def test_sentiment_blends_text_and_stars_and_decays_per_category() -> None:
    assert blend_sentiment(None, 5.0) == 1.0
    assert blend_sentiment(0.2, None) == 0.2
    assert blend_sentiment(-0.4, 1.0) == (-0.4 + -1.0) / 2
    table: dict[str, list[float]] = {}
    ref = add_sentiment(table, 0.0, ("guitars",), 1.0, 100.0, HL)
    ref = add_sentiment(table, ref, ("drums",), -1.0, 100.0 + HL, HL)
    means = sentiment_means(table)
    assert means["guitars"] == 1.0 and means["drums"] == -1.0
    # overall: +1 at half weight (one half-life old) and -1 at full weight
    assert math.isclose(means["*"], (0.5 - 1.0) / 1.5)


def test_review_with_encoding_feeds_interest_and_sentiment_once() -> None:
    r = Review(event_id="r1", ts=50.0, user_id="u", item_id="i", text="great", rating=5.0)
    enc = Encoding(version="v1", vector=_unit(7).astype("<f4").tobytes(), text_sentiment=0.6)
    p = apply(new_profile("u"), r, origin=Origin("reviews", 0, 3), categories=("c",), params=Params(), encoding=enc)
    assert p is not None and p.interest is not None
    assert math.isclose(p.sentiment["c"][0] / p.sentiment["c"][1], (0.6 + 1.0) / 2)
    again = apply(p, r, origin=Origin("reviews", 0, 3), categories=("c",), params=Params(), encoding=enc)
    assert again is None


def _item_vector(item: str, seed: int, version: str = "v1", digest: str = "d") -> ItemVector:
    return ItemVector(item_id=item, version=version, digest=digest, vector=_unit(seed).astype("<f4").tobytes())


def test_engaged_item_vectors_join_review_text_in_one_weighted_decayed_mean() -> None:
    p = new_profile("u")
    params = Params(half_life_days=30.0)
    t0 = 1_000_000.0
    steps: list[tuple[object, Encoding | None, ItemVector | None]] = [
        (Click(user_id="u", event_id="c1", ts=t0, item_id="i1"), None, _item_vector("i1", 11)),
        (Purchase(user_id="u", event_id="p1", ts=t0 + HL, item_id="i2"), None, _item_vector("i2", 12)),
        (
            Review(user_id="u", event_id="r1", ts=t0 + 2 * HL, item_id="i3", rating=4.0, text="fine"),
            Encoding(version="v1", vector=_unit(13).astype("<f4").tobytes(), text_sentiment=0.1),
            None,
        ),
        # a click whose item has no vector (yet) changes behaviour, not interest
        (Click(user_id="u", event_id="c2", ts=t0 + 3 * HL, item_id="i4"), None, None),
    ]
    for i, (event, encoding, vector) in enumerate(steps):
        out = apply(p, event, origin=Origin("t", 0, i), params=params, encoding=encoding, item_vector=vector)  # type: ignore[arg-type]
        assert out is not None
        p = out
    # Independent: weights click 0.5, purchase 1, review text 1, each halved per half-life
    # of age at the newest contributing event (t0 + 2 HL).
    want = 0.5 * 0.25 * _unit(11).astype(np.float64) + 1.0 * 0.5 * _unit(12) + 1.0 * _unit(13)
    want /= 0.5 * 0.25 + 0.5 + 1.0
    assert p.interest is not None and p.interest.version == "v1"
    np.testing.assert_allclose(p.interest.mean(), want, rtol=1e-5, atol=1e-6)
    assert p.counts == {"click": 2, "purchase": 1, "review": 1}


def test_an_item_vector_of_a_new_version_restarts_the_interest() -> None:
    p = new_profile("u")
    p = apply(p, Click(user_id="u", event_id="c1", ts=1.0, item_id="a"), origin=None, item_vector=_item_vector("a", 1, "v1"))  # type: ignore[assignment]
    p = apply(p, Click(user_id="u", event_id="c2", ts=2.0, item_id="b"), origin=None, item_vector=_item_vector("b", 2, "v2"))  # type: ignore[assignment]
    assert p.interest is not None and p.interest.version == "v2" and p.interest.weight == 0.5
    np.testing.assert_allclose(p.interest.mean(), _unit(2), rtol=1e-6)


def test_a_vector_of_another_item_is_refused() -> None:
    with pytest.raises(ValueError, match="vector of item"):
        apply(new_profile("u"), Click(user_id="u", event_id="c", ts=1.0, item_id="a"), origin=None, item_vector=_item_vector("b", 1))


def test_item_text_is_title_categories_then_description_and_bounded() -> None:
    assert item_text("Toy Story (1995)", ["Animation", "Comedy"], "") == "Toy Story (1995). Animation, Comedy"
    assert item_text("", [], "  just a description ") == "just a description"
    assert item_text("", [], "") == ""
    assert len(item_text("t", ["c"], "x" * 50_000)) == ITEM_TEXT_CHARS
