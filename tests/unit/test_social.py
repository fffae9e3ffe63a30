"""The social candidate source: follow/unfollow by event time, fan-out, decayed followee engagement, tie order."""

from __future__ import annotations

import gc
import itertools
import random
import sys
import tracemalloc

import pytest

from scoring.popularity import tie_hash
from scoring.social import ITEM_OVERHEAD, WINDOW_OVERHEAD, SocialGraph, quiet_window_bytes
from state.decay import SECONDS_PER_DAY

DAY = SECONDS_PER_DAY
T0 = 1_000_000.0


def graph(half_life_days: float = 7.0, **kw: int) -> SocialGraph:
    return SocialGraph(half_life_days=half_life_days, **kw)


# --- follow / unfollow -----------------------------------------------------------------------------


def test_follow_and_counts() -> None:
    g = graph()
    g.follow("u1", "star", 1.0)
    g.follow("u2", "star", 2.0)
    g.follow("u1", "other", 3.0)
    g.follow("u1", "star", 4.0)  # a repeat: still one edge
    assert g.followers("star") == 2
    assert g.followers("other") == 1
    assert g.followees("u1") == 2
    assert g.followees("u2") == 1
    assert g.followers("nobody") == 0 and g.followees("nobody") == 0
    assert g.following_of("u1") == ["other", "star"]
    g.unfollow("u1", "star", 5.0)
    assert g.followers("star") == 1 and g.followees("u1") == 1
    assert g.followers_of("star") == ["u2"]


def test_unfollow_tombstone_beats_a_late_follow() -> None:
    g = graph()
    g.follow("a", "b", 10.0)
    g.unfollow("a", "b", 20.0)
    assert not g.is_following("a", "b")
    g.follow("a", "b", 15.0)  # late (re-delivered) follow, older than the unfollow
    assert not g.is_following("a", "b")
    assert g.followers("b") == 0
    g.follow("a", "b", 20.0)  # same time as the unfollow: the unfollow wins the tie
    assert not g.is_following("a", "b")
    g.follow("a", "b", 21.0)
    assert g.is_following("a", "b") and g.followers("b") == 1


def test_late_unfollow_older_than_the_follow_is_ignored() -> None:
    g = graph()
    g.follow("a", "b", 10.0)
    g.unfollow("a", "b", 5.0)
    assert g.is_following("a", "b")
    g.unfollow("a", "b", 10.0)  # a tie goes to the unfollow, whichever arrived first
    assert not g.is_following("a", "b")


def test_edge_state_does_not_depend_on_arrival_order() -> None:
    events = [("follow", 10.0), ("unfollow", 20.0), ("follow", 15.0), ("follow", 30.0), ("unfollow", 30.0), ("follow", 25.0)]
    # Latest follow 30, latest unfollow 30: a tie, so off.
    for perm in itertools.permutations(events):
        g = graph()
        for action, ts in perm:
            (g.follow if action == "follow" else g.unfollow)("a", "b", ts)
        assert not g.is_following("a", "b")
        assert g.followers("b") == 0
    without_last_unfollow = [e for e in events if e != ("unfollow", 30.0)]
    for perm in itertools.permutations(without_last_unfollow):
        g = graph()
        for action, ts in perm:
            (g.follow if action == "follow" else g.unfollow)("a", "b", ts)
        assert g.is_following("a", "b")
        assert g.followers_of("b") == ["a"]


def test_self_follow_is_ignored() -> None:
    g = graph()
    g.follow("a", "a", 1.0)
    assert g.followers("a") == 0 and g.followees("a") == 0


def test_followers_of_earliest_first_ties_by_id_and_capped() -> None:
    g = graph(fanout_cap=3)
    g.follow("f5", "star", 5.0)
    g.follow("f2", "star", 2.0)
    g.follow("f9", "star", 1.0)
    g.follow("f1", "star", 2.0)  # ties with f2: by id
    g.follow("f0", "star", 0.5)
    g.unfollow("f0", "star", 6.0)  # gone: not returned, not counted
    assert g.followers("star") == 4
    assert g.followers_of("star") == ["f9", "f1", "f2"]
    assert graph(fanout_cap=0).followers_of("star") == []
    big = graph(fanout_cap=1000)
    for n in range(50):
        big.follow(f"u{n:02d}", "star", float(100 - n))
    assert big.followers_of("star") == [f"u{n:02d}" for n in reversed(range(50))]


# --- engagement and top ----------------------------------------------------------------------------


def test_decayed_weight_hand_computed() -> None:
    hl = 7.0
    g = graph(hl)
    g.follow("me", "f", T0)
    g.engaged("f", "x", 2.0, T0)
    g.engaged("f", "x", 1.0, T0 + 3 * DAY)
    now = T0 + 10 * DAY
    expected = 2.0 * 2 ** (-10 / hl) + 1.0 * 2 ** (-7 / hl)
    [(item, score, count)] = g.top(["f"], 5, exclude=(), now=now)
    assert item == "x" and count == 1
    assert score == pytest.approx(expected, rel=1e-12)


def test_out_of_order_engagement_gives_the_same_weight() -> None:
    hl = 3.0
    a, b = graph(hl), graph(hl)
    events = [(5.0, T0 + 2 * DAY), (1.0, T0), (0.5, T0 + 9 * DAY)]
    for w, ts in events:
        a.engaged("f", "x", w, ts)
    for w, ts in sorted(events, key=lambda e: e[1]):
        b.engaged("f", "x", w, ts)
    now = T0 + 12 * DAY
    expected = sum(w * 2 ** (-(now - ts) / (hl * DAY)) for w, ts in events)
    assert a.recent_items("f", now)["x"] == pytest.approx(expected, rel=1e-12)
    assert b.recent_items("f", now)["x"] == pytest.approx(expected, rel=1e-12)


def test_top_sums_followees_and_counts_them() -> None:
    hl = 10.0
    g = graph(hl)
    g.engaged("f1", "x", 1.0, T0)
    g.engaged("f2", "x", 1.0, T0 + 5 * DAY)
    g.engaged("f2", "y", 3.0, T0 + 5 * DAY)
    g.engaged("stranger", "z", 100.0, T0)
    now = T0 + 10 * DAY
    out = g.top(["f1", "f2"], 10, exclude=(), now=now)
    x = 2 ** (-10 / hl) + 2 ** (-5 / hl)
    y = 3.0 * 2 ** (-5 / hl)
    assert [i for i, _, _ in out] == ["y", "x"]  # y = 2.12 > x = 1.21
    assert out[0][1] == pytest.approx(y, rel=1e-12) and out[0][2] == 1
    assert out[1][1] == pytest.approx(x, rel=1e-12) and out[1][2] == 2
    assert g.top(["f1", "f2"], 1, exclude=(), now=now) == out[:1]
    assert g.top(["f1", "f2"], 0, exclude=(), now=now) == []
    assert g.top([], 5, exclude=(), now=now) == []


def test_engagement_before_the_follow_counts() -> None:
    g = graph()
    g.engaged("f", "x", 1.0, T0)
    g.follow("me", "f", T0 + DAY)
    assert [i for i, _, _ in g.top(g.following_of("me"), 5, exclude=(), now=T0 + DAY)] == ["x"]


def test_exclude_is_respected() -> None:
    g = graph()
    for item, w in [("x", 5.0), ("y", 4.0), ("z", 3.0)]:
        g.engaged("f", item, w, T0)
    out = g.top(["f"], 2, exclude={"x"}, now=T0)
    assert [i for i, _, _ in out] == ["y", "z"]
    assert g.top(["f"], 5, exclude={"x", "y", "z"}, now=T0) == []


def test_ties_go_by_tie_hash_not_id() -> None:
    # crc32 orders "b" before "a": an id-string order would give the opposite.
    assert tie_hash("b") < tie_hash("a")
    g = graph()
    g.engaged("f", "a", 1.0, T0)
    g.engaged("f", "b", 1.0, T0)
    assert [i for i, _, _ in g.top(["f"], 2, exclude=(), now=T0)] == ["b", "a"]
    assert tie_hash("x") < tie_hash("y")
    g.engaged("f", "y", 2.0, T0)
    g.engaged("f", "x", 2.0, T0)
    assert [i for i, _, _ in g.top(["f"], 4, exclude=(), now=T0)] == ["x", "y", "b", "a"]


def test_recent_window_keeps_the_latest_distinct_items() -> None:
    g = graph(recent=2)
    g.engaged("f", "old", 1.0, T0)
    g.engaged("f", "mid", 1.0, T0 + 1)
    g.engaged("f", "mid", 1.0, T0 + 2)  # same item: no eviction
    assert set(g.recent_items("f", T0)) == {"old", "mid"}
    g.engaged("f", "new", 1.0, T0 + 3)
    assert set(g.recent_items("f", T0)) == {"mid", "new"}
    g.engaged("f", "ancient", 9.0, T0 - 100)  # older than the whole full window: dropped
    assert set(g.recent_items("f", T0)) == {"mid", "new"}
    g.engaged("f", "old", 1.0, T0 + 4)  # re-enters, evicting "mid", with its new weight only
    assert g.recent_items("f", T0 + 4) == {"new": pytest.approx(2 ** (-1 / (7 * DAY))), "old": 1.0}


def test_interest_users() -> None:
    g = graph()
    g.engaged("f2", "x", 1.0, T0)
    g.engaged("f1", "y", 1.0, T0)
    assert g.interest_users(["f2", "idle", "f1", "f2"]) == ["f1", "f2"]
    assert g.interest_users([]) == []


def test_deterministic_and_order_of_followees_irrelevant() -> None:
    def build() -> SocialGraph:
        g = graph(5.0)
        for n in range(30):
            g.engaged(f"f{n % 4}", f"i{n % 7}", 1.0 + n % 3, T0 + n * 3_600)
        return g

    a, b = build(), build()
    now = T0 + 5 * DAY
    fs = ["f0", "f1", "f2", "f3"]
    assert a.top(fs, 5, exclude=(), now=now) == b.top(fs, 5, exclude=(), now=now)
    assert a.top(fs, 5, exclude=(), now=now) == a.top(list(reversed(fs)), 5, exclude=(), now=now)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        SocialGraph(half_life_days=0.0)
    with pytest.raises(ValueError):
        SocialGraph(half_life_days=1.0, recent=0)
    with pytest.raises(ValueError):
        SocialGraph(half_life_days=1.0, fanout_cap=-1)
    with pytest.raises(ValueError):
        SocialGraph(half_life_days=1.0, quiet_bytes=-1)


# --- memory bound on users nobody follows ----------------------------------------------------------


def _one(user: str, *items: str) -> int:
    """A window's budget counted by hand: what ``quiet_window_bytes`` must give."""
    return WINDOW_OVERHEAD + sys.getsizeof(user) + sum(ITEM_OVERHEAD + sys.getsizeof(i) for i in items)


def test_quiet_users_are_bounded_the_least_recently_engaged_go_first() -> None:
    """Users nobody follows keep their window only while the most recently engaged windows fit
    in ``quiet_bytes``: a million one-time users must not cost a window each on every worker."""
    g = graph(quiet_bytes=_one("a", "i-a", "i-a2") + _one("c", "i-c") + _one("d", "i-d"))
    for n, user in enumerate(["a", "b", "c"]):
        g.engaged(user, f"i-{user}", 1.0, T0 + n)
    g.engaged("a", "i-a2", 1.0, T0 + 3)  # a engaged again: b is now the least recent
    g.engaged("d", "i-d", 1.0, T0 + 4)
    assert g.quiet_evictions == 1
    assert not g.knows("b") and g.recent_items("b", T0 + 5) == {}
    assert set(g.recent_items("a", T0 + 5)) == {"i-a", "i-a2"}
    assert all(g.knows(u) for u in "acd")


def test_a_followed_user_is_never_pushed_out_and_keeps_what_came_before_the_follow() -> None:
    g = graph(quiet_bytes=2 * _one("q0", "x"))
    g.engaged("star", "old", 1.0, T0)
    g.follow("fan", "star", T0 + 1)  # the window moves to the followed set
    for n in range(10):
        g.engaged(f"q{n}", "x", 1.0, T0 + 2 + n)  # ten quiet users churn through the bound of 2
    g.engaged("star", "new", 1.0, T0 + 20)
    assert g.quiet_evictions == 8
    assert [i for i, _, _ in g.top(g.following_of("fan"), 5, exclude=(), now=T0 + 20)] == ["new", "old"]
    g.forget("star")
    assert not g.knows("star")


def test_the_bound_is_bytes_so_full_windows_leave_room_for_fewer_users() -> None:
    light, heavy = graph(quiet_bytes=100_000), graph(quiet_bytes=100_000)
    for u in range(1_000):
        light.engaged(f"user-{u:04d}", "item-0000", 1.0, T0 + u)
        for j in range(20):
            heavy.engaged(f"user-{u:04d}", f"item-{j:04d}", 1.0, T0 + u)
    one, twenty = _one("user-0000", "item-0000"), _one("user-0000", *(f"item-{j:04d}" for j in range(20)))
    held_light = [u for u in range(1_000) if light.knows(f"user-{u:04d}")]
    held_heavy = [u for u in range(1_000) if heavy.knows(f"user-{u:04d}")]
    assert held_light == list(range(1_000 - 100_000 // one, 1_000))
    assert held_heavy == list(range(1_000 - 100_000 // twenty, 1_000))
    assert light.quiet_nbytes == len(held_light) * one and heavy.quiet_nbytes == len(held_heavy) * twenty


def test_the_quiet_estimate_follows_every_change_of_the_windows() -> None:
    """Engagements that fill and roll windows, follows that move them out, unfollows, erasures
    and evictions: the running estimate is always the sum over the windows held."""
    rng = random.Random(13)
    g = graph(quiet_bytes=6_000, recent=4)
    users = [f"u{n}" for n in range(40)]
    for step in range(5_000):
        roll = rng.random()
        a, b = rng.choice(users), rng.choice(users)
        if roll < 0.8:
            g.engaged(a, f"item-{rng.randrange(30)}", 1.0, T0 + rng.randrange(1_000))
        elif roll < 0.88:
            g.follow(a, b, T0 + step)
        elif roll < 0.96:
            g.unfollow(a, b, T0 + step)
        else:
            g.forget(a)
        assert g.quiet_nbytes == sum(quiet_window_bytes(u, w) for u, w in g._quiet.items())
        assert g.quiet_nbytes <= 6_000 or len(g._quiet) == 1
    assert g.quiet_evictions > 0 and g._recent  # the run reached both the bound and follows


def test_the_quiet_estimate_is_within_a_third_of_what_python_allocates() -> None:
    for k in (1, 20):
        g = graph(quiet_bytes=1 << 40)
        users = [f"syn-u-{u}" for u in range(5_000)]
        # one string per engagement, as decoded deltas give the worker
        items = [["".join(("syn-i-", str((u * 7 + j) % 1000))) for j in range(k)] for u in range(5_000)]
        gc.collect()
        tracemalloc.start()
        try:
            for user, row in zip(users, items, strict=True):
                for j, item in enumerate(row):
                    g.engaged(user, item, 1.0, T0 + j)
            traced, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        measured = traced + sum(map(sys.getsizeof, users)) + sum(sys.getsizeof(i) for row in items for i in row)
        assert 0.67 < g.quiet_nbytes / measured < 1.5, k


def test_a_quiet_user_pushed_out_starts_over_when_followed_later() -> None:
    g = graph(quiet_bytes=_one("a", "x"))
    g.engaged("a", "x", 1.0, T0)
    g.engaged("b", "y", 1.0, T0 + 1)  # pushes a out
    g.follow("fan", "a", T0 + 2)
    assert g.top(["a"], 5, exclude=(), now=T0 + 2) == []
    g.engaged("a", "z", 1.0, T0 + 3)
    assert [i for i, _, _ in g.top(["a"], 5, exclude=(), now=T0 + 3)] == ["z"]
