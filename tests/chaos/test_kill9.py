"""SIGKILL the worker mid-replay, again and again: no event lost, none applied twice."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_app.producer import publish
from stream_app.settings import Settings
from tests.movielens_replay import check_against_truth, check_recommendations, input_topics, publish_catalog, split_catalog
from tests.support import WorkerProcess, group_lag, metric_sum, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

KILLS = 3


def _time_to_first_event(worker: WorkerProcess, timeout: float = 120.0) -> float:
    """Seconds from process start until it applied (or skipped) its first event."""
    started = time.monotonic()
    worker.wait_until(lambda m: metric_sum(m, "persona_events_total", topic=worker.settings.topic("purchase")) > 0, timeout)
    return time.monotonic() - started


def _wait_mid_stream(settings: Settings, producer: threading.Thread, timeout: float = 60.0) -> None:
    """Until the group is behind the input topics: a kill then lands mid-stream. (Right after
    the broker starts, the replay's idempotent producer can wait seconds for its producer id.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group_lag(settings, input_topics(settings)) > 0:
            return
        assert producer.is_alive(), "the replay ended before the kill: kill would not be mid-stream"
        time.sleep(0.2)
    raise AssertionError(f"kill would not be mid-stream: no lag within {timeout}s")


@pytest.mark.parametrize("batch", [1, 16], ids=["one-event-per-record", "batch-records-of-16"])
def test_kill_minus_9_during_movielens_replay_loses_and_doubles_nothing(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    data_dir: Path,
    batch: int,
) -> None:
    """With batch records (state.batch) a kill can land between two events of one record: the
    restarted worker applies the rest of that record, and only the rest."""
    rng = random.Random(9)
    settings = topic_factory()
    catalog, rest = split_catalog(data_dir)
    publish_catalog(settings, catalog)
    worker = worker_factory(settings, allow_restarts=True)
    worker.wait_ready()
    producer = threading.Thread(target=publish, args=(settings, rest), kwargs={"rate": 3_000.0, "batch": batch})
    producer.start()

    restore_s: list[float] = []
    duplicates = 0.0
    for _ in range(KILLS):
        time.sleep(rng.uniform(3.0, 8.0))
        duplicates += metric_sum(worker.metrics(), "persona_events_total", outcome="duplicate")
        _wait_mid_stream(settings, producer)
        worker.kill()
        worker = worker_factory(settings, allow_restarts=True)  # same state dir: restores from RocksDB + changelog
        restore_s.append(_time_to_first_event(worker))
    producer.join()
    wait_drained(settings, input_topics(settings), [worker])
    duplicates += metric_sum(worker.metrics(), "persona_events_total", outcome="duplicate")
    assert worker.stop() == 0

    profiles = check_against_truth(settings, data_dir)
    check_recommendations(settings, profiles, random.Random(4).sample(sorted(profiles), 200))
    print(f"\nkill -9 x{KILLS}: restart-to-first-event seconds {[round(s, 1) for s in restore_s]}, "
          f"replayed records skipped as duplicates: {int(duplicates)}")
