"""The broker stops and comes back three times mid-replay (SIGTERM once, SIGKILL twice).

A broker of its own (the launcher, on its own port and data directory: the session's broker is
shared by every other test) serves one worker through a MovieLens-100k replay produced at
300 events/s. Three times, when the replay is a fifth, two fifths and three fifths through, the broker is stopped
(first with SIGTERM, a clean shutdown; then twice with SIGKILL, like a lost host) and started
again on the same port and data. At the end:

- every record the producer was told about was delivered (delivered == produced);
- every profile equals the independent recomputation from the raw files (``tests/truth.py``):
  nothing lost, nothing applied twice;
- every user's last recommendation carries the final profile version;
- the event→emit latency (the input record's Kafka timestamp to the message's
  ``generated_at``) is printed, p50/p99 overall and for events produced around the bounces.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from scoring.messages import decode as decode_recs
from stream_app.inspect import scan
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.topics import ensure_topics
from tests.chaos.bouncing import bounce as _bounce
from tests.chaos.bouncing import own_broker_settings
from tests.movielens_replay import check_against_truth, check_recommendations, input_topics, publish_catalog, split_catalog
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow, pytest.mark.heavy]

BOUNCES = (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL)
#: Below one worker's MovieLens rate on 2 cores, so that the latency measures the bounces, not a
#: backlog: at 3,000/s the worker fell minutes behind (p50 261 s), and at 400/s with a message
#: per event (emit interval 0, about 250 events/s) still 119 s. With the default coalescing
#: (a message per user per second at most) the worker keeps up with this rate.
RATE = 300.0
CHUNKS = 20


def _input_times(settings: Settings) -> dict[str, list[float]]:
    """Each user's input records' Kafka timestamps (s), in the order they were produced (the
    replay's order, which is the order the worker applies one user's records in): the n-th is
    the record that made profile version n."""
    per_user: dict[str, list[tuple[float, str, int]]] = defaultdict(list)
    for kind in ("user", "purchase"):
        topic = settings.topic(kind)
        for key, _value, _headers, _partition, offset, ts in _scan_with_time(settings, topic):
            per_user[key].append((ts, kind, offset))
    # Equal timestamps (same millisecond): the user record was produced before the purchases.
    return {u: [ts for ts, _, _ in sorted(rows, key=lambda r: (r[0], r[1] != "user", r[2]))] for u, rows in per_user.items()}


def _scan_with_time(settings: Settings, topic: str) -> Iterator[tuple[str, bytes | None, list[tuple[str, bytes]], int, int, float]]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(settings.kafka_config() | {"group.id": f"bounce-read-{time.time_ns()}", "enable.auto.commit": False})
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        todo = {p for p, e in ends.items() if e > 0}
        while todo:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error() is not None:
                    continue
                p, off = msg.partition() or 0, msg.offset() or 0
                if off + 1 >= ends[p]:
                    todo.discard(p)
                yield (msg.key() or b"").decode(), msg.value(), [], p, off, msg.timestamp()[1] / 1000
    finally:
        consumer.close()


def test_three_broker_bounces_mid_replay_lose_and_double_nothing(
    own_broker: tuple[int, Path], worker_factory: Callable[..., WorkerProcess], data_dir: Path, tmp_path: Path
) -> None:
    port, data = own_broker
    rng = random.Random(3)
    settings = own_broker_settings(port, "bounce", tmp_path, data_dir, state_dir=tmp_path / "state")
    ensure_topics(settings)
    catalog, rest = split_catalog(data_dir)
    publish_catalog(settings, catalog)
    worker = worker_factory(settings, allow_restarts=True)
    worker.wait_ready()

    delivered: Counter[str] = Counter()
    failure: list[BaseException] = []
    chunks = [rest[i:i + len(rest) // CHUNKS + 1] for i in range(0, len(rest), len(rest) // CHUNKS + 1)]
    done = [0]

    def produce() -> None:
        try:
            for chunk in chunks:
                delivered.update(publish(settings, chunk, rate=RATE))
                done[0] += 1
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    windows: list[tuple[float, float]] = []
    # Bounce when the replay is a fifth, two fifths and three fifths through (give or take a
    # random second): always mid-stream, however fast or slow the machine is.
    for n, how in enumerate(BOUNCES, 1):
        while done[0] < n * len(chunks) // 5 and producer.is_alive():
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.5))
        assert producer.is_alive() and done[0] < len(chunks), f"the replay ended before bounce {n}: {failure or 'all delivered'}"
        windows.append(_bounce(port, data, how))
    producer.join()
    assert not failure, failure
    assert sum(delivered.values()) == len(rest)
    wait_drained(settings, input_topics(settings), [worker], timeout=900)
    assert worker.alive
    restarts = metric_sum(worker.metrics(), "persona_supervisor_restarts_total")
    assert worker.stop() == 0

    profiles = check_against_truth(settings, data_dir)
    check_recommendations(settings, profiles, sorted(profiles))

    times = _input_times(settings)
    all_lat: list[float] = []
    around: list[float] = []
    for key, value, *_ in scan(settings, settings.recommendations_topic):
        if key is None or value is None:
            continue
        msg = decode_recs(value)
        produced_at = times[msg.user_id][msg.profile_version - 1]
        latency = msg.generated_at - produced_at
        all_lat.append(latency)
        if any(a - 1.0 <= produced_at <= b + 10.0 for a, b in windows):
            around.append(latency)
    p = np.percentile
    print(
        f"\n{len(BOUNCES)} broker bounces ({', '.join(s.name for s in BOUNCES)}), down for "
        f"{', '.join(f'{b - a:.1f} s' for a, b in windows)}: delivered {sum(delivered.values()):,} of {len(rest):,}; "
        f"event->emit p50 {p(all_lat, 50):.3f} s, p99 {p(all_lat, 99):.3f} s over {len(all_lat):,} messages; "
        f"for events produced around the bounces p50 {p(around, 50):.3f} s, p99 {p(around, 99):.3f} s over {len(around):,}; "
        f"worker restarts: {restarts:.0f}"
    )
