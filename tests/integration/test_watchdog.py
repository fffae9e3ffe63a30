"""The stall watchdog on a real broker: a busy worker is never restarted, a stuck one is.

Issue 8's false restart: while the owners re-encoded the catalog, a review batch waited on
the encoder longer than ``stall_timeout_s`` and the watchdog, which counted the batch's
offsets as processed the moment they were *taken*, restarted a healthy worker (and reset
the counters a test was reading). Here the timeout is 1 s, far below one batch's encode
time on two cores, and a long catalog encode runs beside a review stream: no restart
may happen. Then a real stall, made with a failpoint that keeps one record un-acked
forever (faust#596's symptom), must restart the worker once, and nothing is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.workers import WorkerProcess, metric_sum, wait_drained
from state.events import Item, Purchase, Review
from stream_app.inspect import all_profiles
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from stream_app.starvation import FLOOR_S
from tests.integration.test_reviews_encoder import _registry_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AMAZON = "amazon2014-musical-instruments-5core/reviews_Musical_Instruments_5.json.gz"


def _restarts(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[float, float]:
    return (
        metric_sum(samples, "persona_supervisor_restarts_total"),
        metric_sum(samples, "persona_commit_stall_restarts_total"),
    )


def _purchases(prefix: str, n: int, *, users: int) -> list[Purchase]:
    return [
        Purchase(event_id=f"{prefix}-{i}", ts=1_000.0 + i, user_id=f"u{i % users}", item_id=f"i{i % 9}") for i in range(n)
    ]


def _assert_each_applied_once(settings: Settings, events: list[Purchase]) -> None:
    """Every purchase applied exactly once across the restart (the watermark skips replays)."""
    profiles = all_profiles(settings)
    want = Counter(e.user_id for e in events)
    assert {u: p.counts.get("purchase", 0) for u, p in profiles.items()} == dict(want)
    assert all(p.version == want[u] for u, p in profiles.items())


def test_regression_long_catalog_encode_under_short_stall_timeout_restarts_nothing(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    data_dir: Path,
    encoder_registry: tuple[Path, list[str]],
    tmp_path: Path,
) -> None:
    root, versions = encoder_registry
    registry = _registry_copy(root, tmp_path / "registry", [versions[0]], versions[0])
    settings = topic_factory(model_registry=registry, partitions=1, stall_timeout_s=1.0)
    reviews = [e for e in read_events("amazon", data_dir / AMAZON, limit=2400) if isinstance(e, Review)][:640]
    # A catalog of long texts (real review bodies as item descriptions): minutes of encoding.
    items = [
        Item(event_id=f"item-{i}", ts=float(i), item_id=f"w{i}", title=f"Item {i}", text=r.text[:2000], categories=["c"])
        for i, r in enumerate(reviews[::-1][:400])
    ]
    worker = worker_factory(settings)
    worker.wait_ready()
    publish(settings, items)
    worker.wait_until(lambda m: metric_sum(m, "persona_items_encoded_total") >= 64, timeout=300)
    publish(settings, reviews)  # while the catalog is still being encoded
    wait_drained(settings, [settings.topic("review"), settings.encoded_reviews_topic], [worker], timeout=600)
    samples = worker.wait_until(lambda m: metric_sum(m, "persona_items_encoded_total") >= len(items), timeout=600)
    assert worker.alive
    assert _restarts(samples) == (0.0, 0.0), worker.log_tail()
    assert metric_sum(samples, "persona_items_encoded_total") == len(items)  # counters were never reset
    applied = metric_sum(samples, "persona_events_total", topic=settings.topic("review"), outcome="applied")
    assert applied == len(reviews)
    # The test is sharp: review batches waited on the encoder far longer than the timeout,
    # which is what restarted healthy workers before.
    batches = metric_sum(samples, "persona_encode_batch_seconds_count")
    fast = metric_sum(samples, "persona_encode_batch_seconds_bucket", le="1.0")
    print(f"\nwatchdog: {len(items)} items + {len(reviews)} reviews encoded under stall_timeout_s=1; "
          f"{batches - fast:.0f} of {batches:.0f} encode batches took over 1 s; restarts 0")
    assert batches - fast >= 3
    # And the encoder threads did not starve the event loop that commits.
    lags = metric_sum(samples, "persona_event_loop_lag_seconds_count")
    on_time = metric_sum(samples, "persona_event_loop_lag_seconds_bucket", le="0.25")
    print(f"event loop: {on_time / lags:.1%} of {lags:.0f} wake-ups within 0.25 s of their time")
    assert on_time / lags >= 0.95
    assert "restarting" not in worker.log_tail(400)


def test_a_record_held_in_flight_restarts_the_worker_once_and_nothing_is_lost(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = topic_factory(partitions=1, stall_timeout_s=2.0)
    marker = tmp_path / "hold-ack"
    # Two records: faust-streaming commits past a single un-acked head record.
    marker.write_text(f"{settings.topic('purchase')}:0:7:8\n")
    monkeypatch.setenv("PERSONA_FAILPOINT_HOLD_ACK", str(marker))
    events = _purchases("held", 60, users=4)
    worker = worker_factory(settings, allow_restarts=True)
    worker.wait_ready()
    publish(settings, events)
    samples = worker.wait_until(lambda m: metric_sum(m, "persona_supervisor_restarts_total") >= 1, timeout=120)
    assert not marker.exists()  # the failpoint fired once
    wait_drained(settings, [settings.topic("purchase")], [worker], timeout=120)
    samples = worker.metrics()
    assert _restarts(samples)[0] == 1.0
    assert worker.stop() == 0
    _assert_each_applied_once(settings, events)


def test_a_partition_left_paused_restarts_the_idle_worker_once_and_nothing_is_lost(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stuck partition of a chaos CI run (records waiting, never fetched, worker idle),
    made with a failpoint that pauses one partition at Faust's level and never resumes it."""
    settings = topic_factory(partitions=2, stall_timeout_s=2.0)
    marker = tmp_path / "pause"
    marker.write_text(f"{settings.topic('purchase')}:1\n")
    monkeypatch.setenv("PERSONA_FAILPOINT_PAUSE_PARTITION", str(marker))
    events = _purchases("paused", 160, users=16)
    worker = worker_factory(settings, allow_restarts=True)
    worker.wait_ready()
    worker.wait_until(lambda m: not marker.exists(), timeout=60)  # the failpoint paused it
    publish(settings, events)
    worker.wait_until(lambda m: metric_sum(m, "persona_supervisor_restarts_total") >= 1, timeout=120)
    wait_drained(settings, [settings.topic("purchase")], [worker], timeout=120)
    samples = worker.metrics()
    assert metric_sum(samples, "persona_supervisor_restarts_total") == 1.0
    log = worker.log_tail(400)
    assert f"'{settings.topic('purchase')}:1':" in log and f"were not read for {FLOOR_S:.0f}s" in log, log
    assert worker.stop() == 0
    _assert_each_applied_once(settings, events)
