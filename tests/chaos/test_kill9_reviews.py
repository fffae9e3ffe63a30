"""SIGKILL the worker while review batches are being encoded and sent: no review lost, none
applied twice. Faust acks a take() batch when the encode stage asks for the next one, after
the batch's encoded records were sent; a kill at any point of that must leave the replay from
the committed offsets to redo exactly what was not applied. (Checked once: a stage that ran one
batch ahead and let Faust ack a batch before its records were sent failed it, reviews lost.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.workers import Samples, WorkerProcess, metric_sum, wait_drained
from state.events import Review
from stream_app.inspect import all_profiles
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from tests.integration.test_reviews_encoder import AMAZON, _inputs, _registry_copy

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

REVIEWS = 1_200
KILLS = 2


def _applied(samples: Samples, settings: Settings) -> float:
    return metric_sum(samples, "persona_events_total", topic=settings.topic("review"), outcome="applied")


def test_kill_minus_9_while_review_batches_are_in_flight_loses_and_doubles_nothing(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    data_dir: Path,
    encoder_registry: tuple[Path, list[str]],
    tmp_path: Path,
) -> None:
    root, versions = encoder_registry
    int8 = versions[1]  # the faster variant: more batches in flight per second of the test
    settings = topic_factory(model_registry=_registry_copy(root, tmp_path / "registry", [int8], int8))
    reviews = [e for e in read_events("amazon", data_dir / AMAZON) if isinstance(e, Review)][:REVIEWS]
    publish(settings, reviews)  # a backlog: every batch is full
    worker = worker_factory(settings, allow_restarts=True)
    killed_at: list[int] = []
    step = REVIEWS // (KILLS + 2)  # each worker's counter starts at 0: kill after this many
    for _ in range(KILLS):
        samples = worker.wait_until(lambda m: _applied(m, settings) >= step, timeout=300)
        killed_at.append(int(_applied(samples, settings)))
        worker.kill()
        worker = worker_factory(settings, allow_restarts=True)  # same state dir
    wait_drained(settings, _inputs(settings), [worker], timeout=900)
    assert worker.stop() == 0

    want = Counter(r.user_id for r in reviews)
    profiles = all_profiles(settings)
    assert set(profiles) == set(want)
    wrong = {u: (profiles[u].counts.get("review"), n) for u, n in want.items() if profiles[u].counts.get("review") != n}
    assert not wrong, f"review counts (got, want) differ for {len(wrong)} users, e.g. {list(wrong.items())[:5]}"
    for u in want:
        interest = profiles[u].interest
        assert interest is not None and interest.version == int8, u
    print(f"\nkill -9 x{KILLS} during review encoding, reviews applied by each killed worker: {killed_at}")
