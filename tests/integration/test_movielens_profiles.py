"""MovieLens-100k through a real broker and worker equals a recomputation from the raw file."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_app.producer import UserBatches, publish
from stream_app.settings import Settings
from tests.movielens_replay import (
    check_against_truth,
    check_recommendations,
    input_topics,
    publish_catalog,
    split_catalog,
)
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("batch", [1, 16], ids=["one-event-per-record", "batch-records-of-16"])
def test_movielens_profiles_equal_independent_recomputation(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    data_dir: Path,
    batch: int,
) -> None:
    settings = topic_factory()
    catalog, rest = split_catalog(data_dir)
    publish_catalog(settings, catalog)
    worker = worker_factory(settings)
    worker.wait_ready()
    publish(settings, rest, batch=batch)
    wait_drained(settings, input_topics(settings), [worker])
    m = worker.metrics()
    assert metric_sum(m, "persona_events_total", outcome="applied") == len(rest)
    assert metric_sum(m, "persona_events_total", outcome="duplicate") == 0
    assert metric_sum(m, "persona_dead_letter_total") == 0
    # Batch records (state.batch): the groups of two or more events the producer sent as one
    # record each (a group of one goes as a record of one event), each event counted once.
    batches = UserBatches(batch)
    groups = [g for e in rest for _, _, g in batches.add(e)] + [g for _, _, g in batches.drain()]
    assert sum(len(g) for g in groups) == len(rest)
    multi = [len(g) for g in groups if len(g) > 1]
    assert metric_sum(m, "persona_batch_events_count") == len(multi)
    assert metric_sum(m, "persona_batch_events_sum") == sum(multi)
    assert (not multi) if batch == 1 else (sum(multi) > 0.9 * len(rest))
    assert worker.stop() == 0

    profiles = check_against_truth(settings, data_dir)
    sample = random.Random(3).sample(sorted(profiles), 200)
    check_recommendations(settings, profiles, sample)
