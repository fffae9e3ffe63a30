"""Restoring state in the cases Faust has open bugs about, on the real broker.

- **A compacted changelog** (faust#176: recovery after compaction). The profile changelog is
  created with segments that roll every 500 ms and a cleaner that compacts at once; a worker
  replays MovieLens ratings (many updates per user), and the test waits until the broker has
  compacted away most of the records (offsets with holes). A second worker with an empty state
  directory then restores from it.
- **Empty changelog partitions** (faust#597): four partitions, events for two users only, so
  at least two changelog partitions hold nothing; a worker with an empty state directory
  restores.

In both, after the second worker stops, its RocksDB holds exactly the first worker's: the same
keys with byte-identical profiles, read from the files. The restore time the worker measured
(``persona_state_restore_seconds``) is printed and bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from state.events import Event, Item, Purchase, User
from stream_app.inspect import changelog_topic, scan
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from tests.conftest import EventFactory
from tests.support import WorkerProcess, metric_sum, rocksdb_contents, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

RESTORE_BOUND_S = 60.0


def _changelog_counts(settings: Settings) -> tuple[int, int, dict[int, int]]:
    """(records still in the changelog, offsets spanned, end offset per partition)."""
    topic = changelog_topic(settings)
    present = sum(1 for _ in scan(settings, topic))
    consumer = Consumer(settings.kafka_config() | {"group.id": "restore-probe", "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
    finally:
        consumer.close()
    return present, sum(high - low for low, high in marks.values()), {p: high for p, (_, high) in marks.items()}


def _restore(settings: Settings, worker_factory: Callable[..., WorkerProcess], state_dir: Path, users: int) -> tuple[float, float]:
    """A worker with an empty state directory restores; (seconds it measured, wall seconds to ready)."""
    started = time.monotonic()
    worker = worker_factory(settings, state_dir=state_dir)
    worker.wait_ready(timeout=RESTORE_BOUND_S + 60)
    m = worker.wait_until(lambda m: metric_sum(m, "persona_state_restore_seconds_count") >= 1, timeout=RESTORE_BOUND_S)
    wall = time.monotonic() - started
    measured = metric_sum(m, "persona_state_restore_seconds_sum")
    assert metric_sum(m, "persona_state_restore_records_total") >= users
    assert worker.stop() == 0
    return measured, wall


def test_restore_from_a_compacted_changelog_equals_the_state_before(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], data_dir: Path
) -> None:
    settings = topic_factory(partitions=2, commit_interval_s=0.3)
    # Declared before Faust does (it keeps an existing topic): segments roll every 500 ms and the
    # cleaner may compact anything older; tombstones would go after 1 s.
    admin = AdminClient(settings.kafka_config())
    config = {"cleanup.policy": "compact", "segment.ms": "500", "min.cleanable.dirty.ratio": "0.01",
              "delete.retention.ms": "1000", "min.compaction.lag.ms": "0"}
    for fut in admin.create_topics([NewTopic(changelog_topic(settings), 2, 1, config=config)]).values():
        fut.result(30)
    events: list[Event] = list(read_events("movielens", data_dir / "movielens-100k"))
    ratings = [e for e in events if isinstance(e, Purchase)][:15_000]
    users = {e.user_id for e in ratings}
    catalog = [e for e in events if isinstance(e, Item)]
    people = [e for e in events if isinstance(e, User) and e.user_id in users]
    publish(settings, catalog)
    first = worker_factory(settings)
    first.wait_ready()
    publish(settings, people)
    publish(settings, ratings, rate=3_000.0)  # spread over seconds: many commits, many segments
    wait_drained(settings, [settings.topic("purchase"), settings.topic("user")], [first])
    assert first.stop() == 0
    before = rocksdb_contents(settings.state_dir)
    assert len(before) == len(users)

    # Compacted: at least half of the superseded records (all but each user's latest) are gone.
    # Measured against the records written, not half of them: how many a run writes depends on
    # how the users' events fall into commits: a CI run wrote 486 for 174 users and kept 245
    # (241 of the 312 superseded gone, the rest in segments not yet cleaned), failing a
    # `present <= written // 2` bound.
    deadline = time.monotonic() + 120
    present, spanned, _ = _changelog_counts(settings)
    superseded = spanned - len(users)
    assert superseded >= len(users) // 4, (spanned, len(users))  # something to compact
    while spanned - present < superseded / 2 and time.monotonic() < deadline:
        time.sleep(2)
        present, spanned, _ = _changelog_counts(settings)
    assert spanned - present >= superseded / 2, f"not compacted: {present} of {spanned} records remain, {len(users)} users"

    measured, wall = _restore(settings, worker_factory, settings.state_dir.parent / "restored", len(users))
    after = rocksdb_contents(settings.state_dir.parent / "restored")
    print(f"\ncompacted changelog: {present:,} of {spanned:,} records left; {len(after):,} profiles restored "
          f"in {measured:.2f} s (worker start to ready {wall:.1f} s)")
    assert after == before
    assert measured < RESTORE_BOUND_S


def test_restore_with_empty_changelog_partitions_equals_the_state_before(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], event_factory: EventFactory
) -> None:
    settings = topic_factory(partitions=4)
    publish(settings, [event_factory.item(f"i{n}", ["c"]) for n in range(4)])
    first = worker_factory(settings)
    first.wait_ready()
    publish(settings, [event_factory.purchase(u, f"i{n}", ts=100.0 + n) for u in ("alice", "bob") for n in range(4)])
    wait_drained(settings, [settings.topic("purchase")], [first])
    assert first.stop() == 0
    before = rocksdb_contents(settings.state_dir)
    assert set(before) == {b"alice", b"bob"}
    _, _, ends = _changelog_counts(settings)
    empty = [p for p, end in ends.items() if end == 0]
    assert len(empty) >= 2, ends

    measured, wall = _restore(settings, worker_factory, settings.state_dir.parent / "restored", 2)
    print(f"\n{len(empty)} of 4 changelog partitions empty: restored in {measured:.2f} s (worker start to ready {wall:.1f} s)")
    assert rocksdb_contents(settings.state_dir.parent / "restored") == before
    assert measured < RESTORE_BOUND_S
