"""`persona dlq redrive` after a fix, on the real broker: every redriven record is applied
exactly once, and redriving again changes nothing.

The "bug": the worker runs with a payload limit too low for real reviews, so the long ones are
dead-lettered as ``oversized``; a truncated record is dead-lettered as ``bad_json`` (a record
no fix can save). The "fix": the worker restarts with the default limit. Then:

- redrive sends every dead letter once; the long reviews are applied (each user's profile
  version equals the number of their reviews, counted here from the input); the broken record
  fails again and its new dead letter carries the original's identity;
- a second redrive (the CLI, as an operator runs it) sends nothing: profiles, the worker's
  counters and the source topic's end offsets are unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from state.events import Review, encode
from stream_app import dlq
from stream_app.dlq_ops import REDRIVE_OF, read_letters, redrive
from stream_app.inspect import all_profiles
from stream_app.producer import make_producer, publish
from stream_app.settings import Settings
from tests.conftest import EventFactory
from tests.support import REPO, WorkerProcess, metric_sum, settings_env, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOW_LIMIT = 400


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer(settings.kafka_config() | {"group.id": "offsets-probe", "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        consumer.close()


def test_redrive_after_a_fixed_decoder_applies_each_record_once_and_twice_changes_nothing(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], event_factory: EventFactory, tmp_path: Path
) -> None:
    settings = topic_factory(partitions=2, max_payload_bytes=LOW_LIMIT, ranker_registry=tmp_path / "no-rankers")
    source = settings.topic("review")
    publish(settings, [event_factory.item(f"i{n}", ["gear"], ts=0.0) for n in range(6)])
    reviews: list[Review] = []
    for u in range(12):
        for n in range(3):
            long = (u + n) % 3 == 0  # a third of the reviews are longer than the low limit
            text = ("solid stand, holds a heavy bass without wobbling. " * 12) if long else "fine"
            reviews.append(event_factory.review(f"u{u}", f"i{(u + n) % 6}", ts=1000.0 + 10 * n + u, text=text))
    oversized = [r for r in reviews if len(encode(r)) > LOW_LIMIT]
    assert 8 <= len(oversized) < len(reviews)

    started = time.time()
    broken = worker_factory(settings)
    broken.wait_ready()
    publish(settings, reviews)
    producer = make_producer(settings)
    producer.produce(source, key=b"u0", value=encode(reviews[0])[:25])  # truncated JSON: beyond any fix
    assert producer.flush(30) == 0
    wait_drained(settings, [source, settings.encoded_reviews_topic], [broken])
    m = broken.wait_until(lambda m: metric_sum(m, "persona_dead_letter_total") >= len(oversized) + 1)
    assert metric_sum(m, "persona_dead_letter_total", reason="oversized") == len(oversized)
    assert metric_sum(m, "persona_dead_letter_total", reason="bad_json") == 1
    assert broken.stop() == 0

    letters = read_letters(settings, dlq.dlq_topic(source))
    assert Counter(x.reason for x in letters) == {"oversized": len(oversized), "bad_json": 1}

    # The fix: the default limit. Same state directory and group: the same worker, upgraded.
    fixed = worker_factory(settings, max_payload_bytes=65_536)
    fixed.wait_ready()
    first = redrive(settings, "review")
    assert (first.selected, first.already, first.sent) == (len(oversized) + 1, 0, len(oversized) + 1)
    wait_drained(settings, [source, settings.encoded_reviews_topic], [fixed])
    after_first = fixed.wait_until(lambda m: metric_sum(m, "persona_dead_letter_total") >= 1)
    assert metric_sum(after_first, "persona_events_total", topic=source, outcome="applied") == len(oversized)
    assert metric_sum(after_first, "persona_events_total", outcome="duplicate") == 0

    # Every review applied exactly once: profile version = the user's reviews (the input says).
    want = Counter(r.user_id for r in reviews)
    profiles = all_profiles(settings)
    assert {u: p.version for u, p in profiles.items()} == dict(want)

    # The broken record failed again; its new dead letter names the original record.
    again = [x for x in read_letters(settings, dlq.dlq_topic(source)) if REDRIVE_OF in x.headers]
    assert len(again) == 1 and again[0].reason == "bad_json"
    original = next(x for x in letters if x.reason == "bad_json")
    assert again[0].origin == original.source

    # Twice: nothing is sent, nothing changes.
    ends = _end_offsets(settings, source)
    env = settings_env(settings)
    out = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "dlq", "redrive", "review"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"{len(oversized) + 2} selected, {len(oversized) + 2} already redriven, 0 repeated, sent 0" in out.stdout, out.stdout
    assert _end_offsets(settings, source) == ends
    listed = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "dlq", "list", "review", "--json", "--limit", "0"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert Counter(r["reason"] for r in rows) == {"oversized": len(oversized), "bad_json": 2}
    assert all(r["redriven"] for r in rows)
    assert len({r["origin"] for r in rows}) == len(oversized) + 1  # the failed copy names its original
    time.sleep(3 * settings.commit_interval_s)
    unchanged = fixed.metrics()
    assert metric_sum(unchanged, "persona_events_total") == metric_sum(after_first, "persona_events_total")
    assert {u: p.version for u, p in all_profiles(settings).items()} == dict(want)
    assert fixed.stop() == 0

    # What `persona status` tells the operator now, against what the test knows.
    shown = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "status", "--json"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    lags = {t["topic"]: t for t in status["lags"]}
    assert lags[source]["lag"] == 0 and lags[source]["records"] == len(reviews) + 1 + len(oversized) + 1
    assert lags[source]["committed_partitions"] == lags[source]["partitions"] == 2
    assert status["dead_letters_last_hour"][dlq.dlq_topic(source)] == len(oversized) + 2
    assert started <= status["last_emit"] <= time.time()
    assert status["recommendations"] >= len(reviews)
    assert status["models"] == {"encoder": None, "ranker": None}
    # No snapshot job ran: every delta record the worker wrote is after the (missing) snapshot.
    from stream_app.snapshots import deltas_bounds

    kept = sum(high - low for low, high in deltas_bounds(settings).values())
    snap = status["shared_snapshot"]
    assert snap["id"] is None and snap["written_at"] is None and snap["behind_records"] == kept > 0
    assert started - 1 <= snap["oldest_behind_at"] <= time.time()
