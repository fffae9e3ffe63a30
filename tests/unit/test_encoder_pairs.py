"""The encoder's fine-tuning pairs: point in time, first engagements only, the right texts.

Expectations are written out by hand from small streams, and the leakage test compares
against a stream cut (or rewritten) after each pair's own event.
"""

from __future__ import annotations

import pytest

from export.encoder_data import QUERY_CHARS, pairs_from
from state.events import Click, Event, Item, Purchase, Review, encoder_text
from state.paths import data_dir
from stream_app.sources import read_events


def _review(n: int, user: str, item: str, text: str, rating: float | None = 5.0, summary: str = "") -> Review:
    return Review(event_id=f"r{n}", ts=float(n), user_id=user, item_id=item, text=text, rating=rating, summary=summary)


def test_queries_are_the_users_earlier_texts_and_positives_the_items_text_then() -> None:
    events: list[Event] = [
        Item(event_id="i1", ts=0.0, item_id="guitar", text="a guitar"),
        _review(1, "bob", "strings", "bright strings", summary="Great"),
        Purchase(event_id="p2", ts=2.0, user_id="ann", item_id="guitar"),
        # ann's second engagement: her history is the guitar's catalog text
        _review(3, "ann", "strings", "dull strings", rating=2.0),
        # a repeat of an item ann engaged with: no pair
        Click(event_id="c4", ts=4.0, user_id="ann", item_id="guitar"),
        # the pick has no catalog text and no earlier review by anyone else: no pair
        Purchase(event_id="p5", ts=5.0, user_id="ann", item_id="pick"),
        _review(6, "bob", "guitar", "loud guitar"),
    ]
    pairs = pairs_from(events, (0.0, 1.0))
    # ann at 3: the strings are known by bob's earlier review; her history: the guitar's text.
    # bob at 6: his history is his own review; the guitar's catalog text is the positive.
    assert pairs.queries == ["a guitar", encoder_text("Great", "bright strings")]
    assert pairs.positives == [encoder_text("Great", "bright strings"), "a guitar"]
    assert pairs.items == ["strings", "guitar"]
    assert pairs.positions == [3, 6]
    assert pairs.rated == [(encoder_text("Great", "bright strings"), 5.0), ("dull strings", 2.0), ("loud guitar", 5.0)]


def test_history_is_newest_first_and_bounded() -> None:
    events: list[Event] = [Item(event_id=f"i{k}", ts=0.0, item_id=f"x{k}", text=f"text {k}") for k in range(6)]
    events += [Purchase(event_id=f"p{k}", ts=float(k + 1), user_id="u", item_id=f"x{k}") for k in range(6)]
    pairs = pairs_from(events, (0.0, 1.0), history=3)
    assert pairs.queries[0] == "text 0"
    assert pairs.queries[-1] == "text 4 | text 3 | text 2"
    assert pairs.positives[-1] == "text 5"
    long: list[Event] = [Item(event_id="i", ts=0.0, item_id="a", text="y" * 5000), Item(event_id="j", ts=0.0, item_id="b", text="z")]
    long += [Purchase(event_id="p", ts=1.0, user_id="u", item_id="a"), Purchase(event_id="q", ts=2.0, user_id="u", item_id="b")]
    assert pairs_from(long, (0.0, 1.0)).queries == ["y" * QUERY_CHARS]


def test_only_the_window_makes_pairs_but_the_history_before_it_counts() -> None:
    events: list[Event] = [Item(event_id=f"i{k}", ts=0.0, item_id=f"x{k}", text=f"text {k}") for k in range(4)]
    events += [Purchase(event_id=f"p{k}", ts=float(k + 1), user_id="u", item_id=f"x{k}") for k in range(4)]
    # positions 4..7 are the purchases; the window [0.75, 1) of 8 events is positions 6 and 7
    pairs = pairs_from(events, (0.75, 1.0))
    assert pairs.positions == [6, 7]
    assert pairs.queries == ["text 1 | text 0", "text 2 | text 1 | text 0"]


@pytest.mark.skipif(not (data_dir() / "amazon2014-musical-instruments-5core").is_dir(), reason="needs ../shared/data")
def test_encoder_pairs_have_no_leakage_from_events_after_the_label() -> None:
    """Changing or removing every event after a pair's engagement leaves that pair as it was."""
    path = data_dir() / "amazon2014-musical-instruments-5core" / "reviews_Musical_Instruments_5.json.gz"
    events = list(read_events("amazon", path, limit=4000))
    full = pairs_from(events, (0.0, 1.0))
    assert len(full.queries) > 200
    by_position = {p: (q, t) for p, q, t in zip(full.positions, full.queries, full.positives, strict=True)}
    for cut in (full.positions[50], full.positions[len(full.positions) // 2], full.positions[-1]):
        # Rewrite the future: every later review's text changed, and half of the later events gone.
        future = [
            _review(10_000 + n, e.user_id, e.item_id, "REWRITTEN " + e.text) if isinstance(e, Review) else e
            for n, e in enumerate(events[cut + 1 :])
        ][::2]
        changed = events[: cut + 1] + future
        # the window over ``changed`` ends past ``cut``: scale it so that positions line up
        again = pairs_from(changed, (0.0, 1.0))
        seen = {p: (q, t) for p, q, t in zip(again.positions, again.queries, again.positives, strict=True) if p <= cut}
        assert seen == {p: v for p, v in by_position.items() if p <= cut}
        assert not any("REWRITTEN" in q or "REWRITTEN" in t for p, (q, t) in seen.items())
