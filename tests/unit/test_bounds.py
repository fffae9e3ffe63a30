"""A profile's size is bounded: by counts in apply (order-independent), by bytes when written (state.bounds)."""

from __future__ import annotations

import random

import pytest

from state import profile as profile_module
from state.bounds import MAX_PROFILE_BYTES, fit
from state.codec import dumps, loads
from state.events import Follow, Purchase, Review
from state.profile import MAX_ENTRIES, Origin, Profile, apply, new_profile

#: Faust's producer refuses a record over this (its ``max_request_size`` default).
FAUST_MAX_REQUEST_SIZE = 1_000_000


def _apply_all(user: str, events: list[Purchase] | list[Follow] | list[Review]) -> Profile:
    p = new_profile(user)
    for n, event in enumerate(events):
        p = apply(p, event, origin=Origin("t", 0, n), in_place=True) or p
    return p


def test_regression_a_bot_following_50k_accounts_grew_a_profile_the_producer_refused() -> None:
    """Seen: a profile of 1,007,011 bytes, over Faust's 1,000,000-byte producer limit; the
    producer refused its changelog record and the worker stopped without exiting."""
    follows = [
        Follow(event_id=f"f{i}", ts=1_700_000_000.0 + i, user_id="bot", followee_id=f"followee-{i:07d}", action="follow")
        for i in range(50_000)
    ]
    p = _apply_all("bot", follows)
    assert len(dumps(p)) < FAUST_MAX_REQUEST_SIZE
    assert MAX_ENTRIES <= len(p.following) < 2 * MAX_ENTRIES
    assert sorted(p.following) == [f.followee_id for f in follows[-len(p.following):]]  # the latest follows


@pytest.mark.parametrize("seed", range(5))
def test_the_latest_purchases_are_kept_whatever_order_they_arrive_in(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile_module, "MAX_ENTRIES", 40)
    rng = random.Random(seed)
    # 300 purchases of 120 items at 60 distinct times: repeats, and ties broken by the item id.
    events = [
        Purchase(event_id=f"p{i}", ts=float(rng.randrange(60)), user_id="u", item_id=f"item-{rng.randrange(120):03d}")
        for i in range(300)
    ]
    latest: dict[str, float] = {}
    for e in events:
        latest[e.item_id] = max(latest.get(e.item_id, e.ts), e.ts)
    ordered = sorted(latest.items(), key=lambda kv: (kv[1], kv[0]))
    shuffled = list(events)
    rng.shuffle(shuffled)
    for arrival in (events, shuffled):
        kept = _apply_all("u", arrival).purchased
        assert 40 <= len(kept) < 80
        assert dict(ordered[-40:]).items() <= kept.items()  # the 40 latest, with their latest times
        # Older ones may remain until the next cut, some with an older time than their latest
        # (their latest was cut, an older purchase arrived after): never one not purchased.
        assert all(ts <= latest[item] for item, ts in kept.items())


def test_a_dislike_is_forgotten_with_its_review(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile_module, "MAX_ENTRIES", 3)
    reviews = [Review(event_id=f"r{i}", ts=float(i), user_id="u", item_id=f"i{i}", text="bad", rating=1.0) for i in range(6)]
    p = _apply_all("u", reviews)  # the sixth review reaches 2 x 3 and cuts to the 3 latest
    assert set(p.reviewed) == {"i3", "i4", "i5"}
    assert set(p.disliked) == {"i3", "i4", "i5"}


def test_fit_leaves_a_profile_under_the_cap_as_it_is() -> None:
    p = _apply_all("u", [Purchase(event_id=f"p{i}", ts=float(i), user_id="u", item_id=f"i{i}") for i in range(50)])
    before = dumps(p)
    data, forgot = fit(p)
    assert (data, forgot) == (before, 0)


def test_fit_forgets_the_oldest_entries_of_the_largest_part_until_the_profile_fits() -> None:
    # Ids of 256 characters: 4,096 purchases of them are ~1.1 MB, over any Kafka default.
    long_id = "x" * 240
    purchases = [Purchase(event_id=f"p{i}", ts=float(i), user_id="u", item_id=f"{long_id}{i:016d}") for i in range(MAX_ENTRIES)]
    follows = [Follow(event_id=f"f{i}", ts=float(i), user_id="u", followee_id=f"a{i}", action="follow") for i in range(100)]
    p = _apply_all("u", purchases)
    for n, f in enumerate(follows):
        p = apply(p, f, origin=Origin("t2", 0, n), in_place=True) or p
    assert len(dumps(p)) > MAX_PROFILE_BYTES
    data, forgot = fit(p)
    assert len(data) <= MAX_PROFILE_BYTES
    assert loads(data) == p  # what is written is the trimmed profile itself
    kept = sorted(p.purchased, key=lambda item: p.purchased[item])
    assert kept == [e.item_id for e in purchases[-len(kept):]]  # the newest purchases, none skipped
    assert forgot == MAX_ENTRIES - len(kept)
    assert len(p.following) == 100  # the small part was left alone
