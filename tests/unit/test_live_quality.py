"""The live hit rate's memory of each user's last lists (packed hashes since the memory bench)."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter

from stream_app.experiment import SERVED, SHADOW, LiveQuality


def _quality(capacity: int = 100) -> LiveQuality:
    registry = CollectorRegistry()
    hits = Counter("h", "h", ["ranker", "role"], registry=registry)
    positives = Counter("p", "p", ["ranker", "role"], registry=registry)
    return LiveQuality(capacity=capacity, hits=hits, positives=positives)


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
