"""Poison at scale: 10,000 malformed records among MovieLens-100k's 102,625 good ones.

Two topic sets get the same good records in the same order; one also gets 10,000 malformed
records (every kind of breakage ``test_dead_letters`` knows) at random places. A worker drains
the clean set, then another drains the dirty one, each alone on the machine, so their times
compare. The dirty run must dead-letter exactly the malformed records, by reason, keep
committing, and end with every profile equal to the clean run's. The throughput of good
records in each run, and their ratio, are printed (figures, not assertions: speed goals live in
``persona bench``).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from state.events import Event, encode, key_of, kind_of
from stream_app.producer import make_producer
from stream_app.settings import Settings
from stream_app.sources import read_events
from tests.integration.test_dead_letters import KINDS, _comparable, _malformed
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow, pytest.mark.heavy]

BAD = 10_000


def _send(settings: Settings, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    producer = make_producer(settings)
    for topic, key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:  # the local queue is full: let deliveries drain
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0


def _drain(settings: Settings, worker_factory: Callable[..., WorkerProcess], topics: list[str], total: int) -> tuple[float, WorkerProcess]:
    worker = worker_factory(settings)
    worker.wait_ready(timeout=120)
    started = time.monotonic()
    wait_drained(settings, topics, [worker], timeout=900)
    seconds = time.monotonic() - started
    worker.wait_events(total, timeout=120)
    return seconds, worker


def test_ten_thousand_malformed_among_a_hundred_thousand_good_change_no_profile(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], data_dir: Path
) -> None:
    rng = random.Random(12)
    good: list[Event] = list(read_events("movielens", data_dir / "movielens-100k"))
    assert len(good) >= 100_000
    clean, dirty = topic_factory(), topic_factory()
    clean_records = [(clean.topic(kind_of(e)), key_of(e).encode(), encode(e)) for e in good]
    dirty_records: list[tuple[str, bytes | None, bytes | None]] = [(dirty.topic(kind_of(e)), key_of(e).encode(), encode(e)) for e in good]
    expected: Counter[str] = Counter()
    # Not the catalog: its topic is compacted, where a later record with an item's key (a
    # malformed one, a tombstone) replaces the good one by design, before any worker reads it.
    victims = [e for e in good if kind_of(e) != "item"]
    for n in range(BAD):
        victim = rng.choice(victims)
        key, value, reason = _malformed(victim, KINDS[n % len(KINDS)], rng, dirty.max_payload_bytes)
        dirty_records.insert(rng.randrange(len(dirty_records) + 1), (dirty.topic(kind_of(victim)), key, value))
        expected[reason] += 1
    _send(clean, list(clean_records))
    _send(dirty, dirty_records)

    topics = sorted({t for t, _, _ in clean_records})
    clean_s, w_clean = _drain(clean, worker_factory, topics, len(good))
    assert w_clean.stop() == 0
    dirty_topics = sorted({t for t, _, _ in dirty_records})
    dirty_s, w_dirty = _drain(dirty, worker_factory, dirty_topics, len(good) + BAD)
    m = w_dirty.metrics()
    assert metric_sum(m, "persona_dead_letter_total") == BAD
    assert {r: metric_sum(m, "persona_dead_letter_total", reason=r) for r in expected} == dict(expected)
    assert w_dirty.stop() == 0

    clean_rate, dirty_rate = len(good) / clean_s, len(good) / dirty_s
    print(
        f"\ngood records/s: clean {clean_rate:,.0f} ({clean_s:.1f} s), with {BAD:,} malformed among them "
        f"{dirty_rate:,.0f} ({dirty_s:.1f} s): {dirty_rate / clean_rate:.2f}x"
    )
    clean_profiles, dirty_profiles = _comparable(clean), _comparable(dirty)
    assert len(clean_profiles) == len({key_of(e) for e in good if kind_of(e) != "item"})
    assert dirty_profiles == clean_profiles
