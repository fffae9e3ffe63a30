"""Two workers in one group; one leaves mid-stream and comes back: profiles stay exact."""

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
from tests.support import WorkerProcess, free_port, group_lag, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]


def test_rebalance_stop_and_restart_one_of_two_workers(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    settings = topic_factory()
    second = {"state_dir": tmp_path / "state-second", "web_port": free_port()}
    catalog, rest = split_catalog(data_dir)
    publish_catalog(settings, catalog)
    w1, w2 = worker_factory(settings, allow_restarts=True), worker_factory(settings, allow_restarts=True, **second)
    w1.wait_ready()
    w2.wait_ready()
    producer = threading.Thread(target=publish, args=(settings, rest), kwargs={"rate": 3_000.0})
    producer.start()
    time.sleep(6.0)
    assert group_lag(settings, input_topics(settings)) > 0, "stop would not be mid-stream"
    assert w2.stop() == 0  # its partitions move to w1
    time.sleep(6.0)
    w2 = worker_factory(settings, allow_restarts=True, **second)  # and back: another rebalance
    producer.join()
    wait_drained(settings, input_topics(settings), [w1, w2])
    assert w1.stop() == 0 and w2.stop() == 0

    profiles = check_against_truth(settings, data_dir)
    check_recommendations(settings, profiles, random.Random(5).sample(sorted(profiles), 200))
