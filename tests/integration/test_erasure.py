"""Erasing a user on the real broker: ``persona erase`` and the ``erasures`` topic reach every
copy (RocksDB, the changelog after compaction, the follower's profile, the recommendations
topic), a replay of the old input does not bring the user back, and an erasure that arrives
while the group rebalances is applied all the same."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from state.codec import loads
from state.events import Event
from stream_app.erase import end_offsets, request_erasure, wait_for_tombstone
from stream_app.inspect import changelog_topic, scan
from stream_app.producer import publish
from stream_app.settings import Settings
from tests.conftest import EventFactory
from tests.support import REPO, WorkerProcess, free_port, metric_sum, rocksdb_contents, settings_env, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = ("alice", "bob", "carol", "dave", "erin", "frank")


def _history(f: EventFactory) -> list[Event]:
    """bob and carol follow alice, alice follows dave; everyone buys and reviews things."""
    events: list[Event] = [f.follow("bob", "alice", 100.0), f.follow("carol", "alice", 101.0), f.follow("alice", "dave", 102.0)]
    events.append(f.user("alice", 103.0, age=33, city="Lyon"))
    for j in range(48):
        user = USERS[j % len(USERS)]
        events.append(f.purchase(user, f"i{(j * 7) % 20}", 200.0 + j))
        if j % 5 == 0:
            events.append(f.review(user, f"i{(j * 3) % 20}", 200.5 + j, text="solid, would buy again"))
    return events


def _topics(settings: Settings) -> list[str]:
    return [settings.topic(k) for k in ("follow", "user", "purchase", "review", "erasure")] + [settings.encoded_reviews_topic]


def _records(settings: Settings, topic: str, key: bytes) -> list[tuple[int, bytes | None]]:
    return [(offset, value) for k, value, _, _, offset in scan(settings, topic, idle_s=2.0) if k == key]


def test_erase_reaches_every_copy_and_a_replay_does_not_bring_the_user_back(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], event_factory: EventFactory
) -> None:
    # max.compaction.lag.ms of 1 s: the changelog's segment rolls, and may be cleaned, a
    # second after a write (the default is a day).
    settings = topic_factory(partitions=2, erasure_compaction_s=1.0)
    publish(settings, [event_factory.item(f"i{n}", [f"c{n % 3}"], title=f"Item {n}") for n in range(20)])
    worker = worker_factory(settings)
    worker.wait_ready()
    history = _history(event_factory)
    publish(settings, history)
    wait_drained(settings, _topics(settings), [worker])
    assert _records(settings, changelog_topic(settings), b"alice"), "alice's profile never reached the changelog"
    assert any(v is not None for _, v in _records(settings, settings.recommendations_topic, b"alice"))

    out = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "erase", "alice", "--reason", "ticket-1", "--wait", "90"],
        cwd=REPO, env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=150,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "erased: tombstone on" in out.stdout, out.stdout
    # Later writes roll the changelog segments, so the cleaner may compact alice's records away.
    others = [event_factory.purchase(u, f"i{n}", 900.0 + n) for n in range(12) for u in USERS[1:]]
    publish(settings, others, rate=20.0)
    m = worker.wait_until(lambda m: metric_sum(m, "persona_erasures_total") >= 1, timeout=30)
    assert metric_sum(m, "persona_erasures_total") == 1
    wait_drained(settings, _topics(settings), [worker])
    assert worker.stop() == 0

    state = rocksdb_contents(settings.state_dir)
    assert b"alice" not in state and {u.encode() for u in USERS[1:]} <= set(state)
    for follower in (b"bob", b"carol"):
        assert "alice" not in loads(state[follower]).following
    recs = _records(settings, settings.recommendations_topic, b"alice")
    assert recs[-1][1] is None, "the last record for alice on recommendations is not a tombstone"
    deadline = time.monotonic() + 120
    left = _records(settings, changelog_topic(settings), b"alice")
    while any(v is not None for _, v in left) and time.monotonic() < deadline:
        time.sleep(3)
        left = _records(settings, changelog_topic(settings), b"alice")
    assert all(v is None for _, v in left), f"alice's profile records left on the changelog after compaction: {len(left)}"
    print(f"\nchangelog after compaction: {len(left)} record(s) for alice, all tombstones")

    # A new worker restores from the changelog and meets the whole old input again.
    restored = settings.state_dir.parent / "restored"
    again = worker_factory(settings, state_dir=restored)
    again.wait_ready()
    tombstone_at = recs[-1][0]
    publish(settings, history)
    wait_drained(settings, _topics(settings), [again])
    m = again.metrics()
    alices = sum(1 for e in history if getattr(e, "user_id", "") == "alice" or getattr(e, "followee_id", "") == "alice")
    assert metric_sum(m, "persona_events_total", outcome="erased") == alices
    assert again.stop() == 0
    state = rocksdb_contents(restored)
    assert b"alice" not in state and {u.encode() for u in USERS[1:]} <= set(state)
    assert all("alice" not in loads(state[f]).following for f in (b"bob", b"carol"))
    assert [o for o, _ in _records(settings, settings.recommendations_topic, b"alice") if o > tombstone_at] == []


def test_an_erasure_during_a_rebalance_is_applied(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], event_factory: EventFactory, tmp_path: Path
) -> None:
    settings = topic_factory(partitions=4)
    publish(settings, [event_factory.item(f"i{n}", [f"c{n % 3}"]) for n in range(20)])
    first = worker_factory(settings)
    first.wait_ready()
    users = [f"user-{n}" for n in range(24)]
    publish(settings, [event_factory.purchase(u, f"i{(n + j) % 20}", 100.0 + j) for n, u in enumerate(users) for j in range(4)])
    wait_drained(settings, _topics(settings), [first])
    since = end_offsets(settings, settings.recommendations_topic)

    # A second worker joins: erasures go out one every 0.5 s from its start until after the
    # group settles, so some arrive while partitions are revoked and reassigned. Restarts are
    # allowed: a record Faust drops while the joining worker recovers its table (faust#596) makes
    # the gap guard restart that worker by design (seen in CI, 2026-12-02); what this test pins is
    # that every erasure still reaches every copy.
    first.allow_restarts = True
    second = worker_factory(settings, allow_restarts=True, state_dir=tmp_path / "state-second", web_port=free_port())
    erased = users[:12]
    for user in erased:
        request_erasure(settings, user, ts=1_000.0)
        time.sleep(0.5)
    second.wait_ready()
    for user in erased:
        assert wait_for_tombstone(settings, user, since, timeout_s=120) is not None, f"no tombstone for {user}"
    wait_drained(settings, _topics(settings), [first, second])
    # Every worker learns every erasure (the scoring deltas), and deletes the stale copies a
    # revoked partition left in its RocksDB files.
    for w in (first, second):
        w.wait_until(lambda m: metric_sum(m, "persona_users_erased") == len(erased), timeout=60)
    rebalances = metric_sum(first.metrics(), "persona_rebalances_total")
    applied = [metric_sum(w.metrics(), "persona_erasures_total") for w in (first, second)]
    purged = [metric_sum(w.metrics(), "persona_erased_copies_purged_total") for w in (first, second)]
    restarts = [metric_sum(w.metrics(), "persona_supervisor_restarts_total") for w in (first, second)]
    assert first.stop() == 0 and second.stop() == 0
    print(f"\nerasures applied by each worker: {applied}; stale copies purged: {purged}; first worker's rebalances: "
          f"{rebalances:.0f}; supervisor restarts: {restarts}")
    assert restarts[0] or rebalances >= 2, "the second worker never caused a rebalance"
    if not any(restarts):  # a restarted worker's counters start again from zero
        assert sum(applied) >= len(erased)

    held = rocksdb_contents(settings.state_dir) | rocksdb_contents(tmp_path / "state-second")
    assert not {u.encode() for u in erased} & set(held)
    assert {u.encode() for u in users[12:]} <= set(held)
    for user in erased:
        records = _records(settings, changelog_topic(settings), user.encode())
        assert records and records[-1][1] is None, f"{user}: the changelog's last record is not a tombstone"
