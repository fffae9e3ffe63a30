"""Coalescing in a real worker: a change inside a user's interval is emitted when that interval
ends, not up to half an interval later.

The bug: the worker emitted pending users from a timer every half interval, so a change made
right after a user's message waited for the first tick after the interval ended: up to one
and a half intervals (``stream_app.emitter``). Now a tick every ``TICK_S`` visits only the
users whose interval ended.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from deploy.workers import WorkerProcess, metric_sum
from scoring.messages import decode as decode_recs
from state.events import Item, Purchase
from stream_app.emitter import TICK_S
from stream_app.inspect import scan
from stream_app.producer import publish
from stream_app.settings import Settings

pytestmark = [pytest.mark.integration]

INTERVAL_S = 4.0
USERS = 10
#: A's are produced this far apart: the users' intervals end at phases spread over a whole
#: half interval, so a half-interval tick is late by more than SLACK_S for most of them.
STAGGER_S = INTERVAL_S / 2 / USERS
#: what a loaded machine may add to a tick (the event loop busy elsewhere)
SLACK_S = 0.5


def test_regression_a_coalesced_change_waited_up_to_one_and_a_half_intervals(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess]
) -> None:
    # Commits flush every pending user (so no committed event lacks its message): with one a
    # minute, only the coalescer's own tick can emit the second changes.
    settings = topic_factory(partitions=1, emit_interval_s=INTERVAL_S, commit_interval_s=60.0)
    items = [Item(event_id=f"item-{i}", ts=0.0, item_id=f"i{i}", title=f"Item {i}", categories=[f"c{i % 3}"]) for i in range(12)]
    publish(settings, items)
    worker = worker_factory(settings)
    worker.wait_ready()
    users = [f"u{k}" for k in range(USERS)]
    # A: each user's first change, emitted at once; one every STAGGER_S.
    publish(settings, [Purchase(event_id=f"a-{k}", ts=1_000.0 + k, user_id=u, item_id=f"i{k % 12}") for k, u in enumerate(users)],
            rate=1 / STAGGER_S)
    worker.wait_until(lambda m: metric_sum(m, "persona_recommendations_emitted_total") >= USERS, timeout=60)
    # B: each user's second change, inside their interval: pending until it ends.
    publish(settings, [Purchase(event_id=f"b-{k}", ts=2_000.0 + k, user_id=u, item_id=f"i{(k + 5) % 12}") for k, u in enumerate(users)])
    # (not wait_drained: it reads committed offsets, and nothing is committed for a minute)
    worker.wait_until(lambda m: metric_sum(m, "persona_events_total") >= 2 * USERS, timeout=60)
    worker.wait_until(lambda m: metric_sum(m, "persona_recommendations_emitted_total") >= 2 * USERS, timeout=60)

    sent: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for key, value, *_ in scan(settings, settings.recommendations_topic, idle_s=2.0):
        assert key is not None and value is not None
        m = decode_recs(value)
        sent[m.user_id].append((m.profile_version, m.generated_at))
    gaps = {}
    for user in users:
        versions = sorted(sent[user])
        assert [v for v, _ in versions] == [1, 2], (user, versions)  # one message per change: coalescing, no commit
        gaps[user] = versions[1][1] - versions[0][1]
    # At least the interval apart (the rate limit) and at most a tick (and the machine's
    # slack) later: with the half-interval tick most users' gaps were up to INTERVAL_S / 2 longer.
    assert all(INTERVAL_S - 0.01 <= g <= INTERVAL_S + TICK_S + SLACK_S for g in gaps.values()), gaps


def test_a_backlog_is_ranked_once_per_user_and_interval_and_fresh_changes_at_once(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess]
) -> None:
    """Records older than PERSONA_CATCHUP_AFTER_S when the worker reads them (here: produced
    before it started, then left to age) get no leading edge: each user's burst of changes is one
    list, at its interval's end, with the final state. A fresh change later is emitted at once."""
    catchup_s = 2.0
    settings = topic_factory(partitions=1, emit_interval_s=1.0, catchup_after_s=catchup_s, commit_interval_s=60.0)
    items = [Item(event_id=f"item-{i}", ts=0.0, item_id=f"i{i}", title=f"Item {i}", categories=[f"c{i % 3}"]) for i in range(12)]
    publish(settings, items)
    users = [f"u{k}" for k in range(USERS)]
    burst = [
        Purchase(event_id=f"a-{k}-{j}", ts=1_000.0 + 10 * k + j, user_id=u, item_id=f"i{(k + j) % 12}")
        for j in range(4)
        for k, u in enumerate(users)
    ]
    publish(settings, burst)
    time.sleep(catchup_s + 0.5)  # the burst is now a backlog, whenever the worker reads it
    worker = worker_factory(settings)
    # (not wait_drained: it reads committed offsets, and nothing is committed for a minute)
    worker.wait_until(lambda m: metric_sum(m, "persona_events_total", outcome="applied") >= len(burst), timeout=120)
    m = worker.wait_until(lambda m: metric_sum(m, "persona_recommendations_emitted_total") >= USERS, timeout=60)
    assert metric_sum(m, "persona_catchup_changes_total") == len(burst)
    time.sleep(1.5)  # past every user's interval: a change now is a leading edge
    publish(settings, [Purchase(event_id=f"b-{k}", ts=2_000.0 + k, user_id=u, item_id=f"i{(k + 7) % 12}") for k, u in enumerate(users)])
    m = worker.wait_until(lambda m: metric_sum(m, "persona_recommendations_emitted_total") >= 2 * USERS, timeout=60)
    assert metric_sum(m, "persona_catchup_changes_total") == len(burst)  # fresh records are not a backlog

    sent: dict[str, list[int]] = defaultdict(list)
    for key, value, *_ in scan(settings, settings.recommendations_topic, idle_s=2.0):
        assert key is not None and value is not None
        sent[decode_recs(value).user_id].append(decode_recs(value).profile_version)
    # One list for the four backlogged changes (the final state), one for the fresh change:
    # without catch-up the first change of each burst had its own list at once, then the last.
    assert {u: sorted(v) for u, v in sent.items()} == {u: [4, 5] for u in users}
