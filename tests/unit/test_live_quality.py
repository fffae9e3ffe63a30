"""The live hit rate's memory of each user's last lists (packed hashes since the memory bench)."""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc

from prometheus_client import CollectorRegistry, Counter

from stream_app.experiment import ENTRY_OVERHEAD, SERVED, SHADOW, LiveQuality

#: the budget of one remembered one-item list of a one-letter user (what the capacity tests count in)
ONE = ENTRY_OVERHEAD + sys.getsizeof("a") + 8


def _quality(capacity: int = 100, *, bytes_: int | None = None) -> LiveQuality:
    registry = CollectorRegistry()
    hits = Counter("h", "h", ["ranker", "role"], registry=registry)
    positives = Counter("p", "p", ["ranker", "role"], registry=registry)
    return LiveQuality(capacity_bytes=capacity * ONE if bytes_ is None else bytes_, hits=hits, positives=positives)


def test_hits_are_counted_against_each_roles_last_list() -> None:
    rng = random.Random(4)
    live = _quality()
    last: dict[tuple[str, str], list[str]] = {}
    expected: dict[tuple[str, str], list[int]] = {}
    for _ in range(2_000):
        user = f"u{rng.randrange(30)}"
        if rng.random() < 0.5:
            served = rng.sample([f"i{n}" for n in range(50)], 10)
            shadow = rng.sample([f"i{n}" for n in range(50)], 10)
            live.ranked(user, SERVED, "prod", served)
            live.ranked(user, SHADOW, "cand", shadow)
            last[(user, SERVED)], last[(user, SHADOW)] = served, shadow
        else:
            item = f"i{rng.randrange(50)}"
            live.positive(user, item)
            for role, version in ((SERVED, "prod"), (SHADOW, "cand")):
                if (user, role) in last:
                    counts = expected.setdefault((version, role), [0, 0])
                    counts[0] += item in last[(user, role)]
                    counts[1] += 1
    assert live.tally == expected
    assert live.rate("prod") == expected[("prod", SERVED)][0] / expected[("prod", SERVED)][1]


def test_the_least_recently_ranked_users_are_forgotten_beyond_capacity() -> None:
    live = _quality(capacity=3)
    for user in ("a", "b", "c"):
        live.ranked(user, SERVED, "prod", ["x"])
    live.ranked("a", SERVED, "prod", ["y"])  # a is recent again
    live.ranked("d", SERVED, "prod", ["x"])  # b goes
    assert "b" not in live and all(u in live for u in "acd")
    live.positive("a", "x")  # a's last list is ["y"]
    assert live.tally[("prod", SERVED)] == [0, 1]
    live.forget("a")
    assert "a" not in live


def test_the_budget_is_bytes_so_longer_lists_leave_room_for_fewer_users() -> None:
    live = _quality(bytes_=10_000)
    users = [f"user-{n:05d}" for n in range(1_000)]
    for u in users:
        live.ranked(u, SERVED, "prod", [f"i{n}" for n in range(10)])
    per_ten = ENTRY_OVERHEAD + sys.getsizeof(users[0]) + 10 * 8
    kept = [u for u in users if u in live]
    assert kept == users[-(10_000 // per_ten):]  # the most recent that fit, and no more
    assert live.nbytes == len(kept) * per_ten <= 10_000
    for u in users[:100]:
        live.ranked(u, SERVED, "prod", [f"i{n}" for n in range(40)])
    per_forty = per_ten + 30 * 8
    assert sum(u in live for u in users) == 10_000 // per_forty == len(live._served)


def test_shadow_lists_count_against_the_budget_and_go_with_their_user() -> None:
    live = _quality(capacity=4)
    for user in ("a", "b"):
        live.ranked(user, SERVED, "prod", ["x"])
        live.ranked(user, SHADOW, "cand", ["y"])
    assert live.nbytes == 4 * ONE
    live.ranked("c", SERVED, "prod", ["x"])  # over budget: a goes, served and shadow
    assert "a" not in live and "b" in live and "c" in live
    assert live.nbytes == 3 * ONE
    live.forget_shadow("b")
    live.forget("c")
    assert live.nbytes == ONE
    live.forget("b")
    assert live.nbytes == 0 and not live._served and not live._shadow


def test_the_estimate_is_within_a_third_of_what_python_allocates() -> None:
    live = _quality(bytes_=1 << 40)
    users = [f"syn-u-{n}" for n in range(60_000)]  # as the footprint run names them
    items = [f"syn-i-{n}" for n in range(10)]
    gc.collect()
    tracemalloc.start()
    try:
        for u in users:
            live.ranked(u, SERVED, "prod", items)
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # tracemalloc does not see the ids (made before it started); the estimate counts them.
    measured = traced + sum(sys.getsizeof(u) for u in users)
    assert 0.67 < live.nbytes / measured < 1.5


def test_regression_a_budget_below_one_list_keeps_no_shadow_list_either() -> None:
    # The pipeline serves, then shadows: with a budget smaller than one list, the served list
    # went at once and the shadow list stayed, one per user, with no bound at all.
    live = _quality(bytes_=0)
    for n in range(100):
        live.ranked(f"u{n}", SERVED, "prod", ["x"])
        live.ranked(f"u{n}", SHADOW, "cand", ["y"])
    assert live.nbytes == 0 and not live._served and not live._shadow
    live.positive("u5", "y")
    assert live.tally == {}
