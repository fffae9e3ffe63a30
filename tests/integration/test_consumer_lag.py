"""``persona_consumer_lag`` in a real worker: every partition it owns has a series, also before
it committed there.

The bug: the gauge read only the consumer's own view, and Faust knows a partition's committed
offset only once this worker committed there (or found one when it was assigned). Until its
first commit on a partition the worker showed no lag for it: a worker stuck on a partition
from its assignment on was invisible to the lag alert, and a test reading a worker's partitions
from the gauge could get a partial set: the likely cause of a chaos test's intermittent
``{0, 2} == {2}`` (a sample taken before the worker's first commit on partition 0 being the last
one before the test read it; not reproduced).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from deploy.workers import WorkerProcess, consumer_lags, metric_sum
from state.events import Item, Purchase
from stream_app.inspect import scan
from stream_app.producer import publish
from stream_app.settings import Settings

pytestmark = [pytest.mark.integration]

PARTITIONS = 4


def test_regression_an_owned_partition_the_worker_had_not_committed_had_no_lag(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess]
) -> None:
    # No commit for a minute: the group has committed nothing on the purchases topic while the
    # test reads the gauge, so every record applied is still uncommitted (Kafka's lag).
    settings = topic_factory(partitions=PARTITIONS, commit_interval_s=60.0, commit_every=100_000, ops_sample_s=0.5)
    publish(settings, [Item(event_id=f"item-{i}", ts=0.0, item_id=f"i{i}", title=f"Item {i}", categories=["c"]) for i in range(5)])
    worker = worker_factory(settings)
    worker.wait_ready()
    purchases = [Purchase(event_id=f"p-{k}", ts=1_000.0 + k, user_id=f"u{k % 13}", item_id=f"i{k % 5}") for k in range(60)]
    publish(settings, purchases)
    worker.wait_until(lambda m: metric_sum(m, "persona_events_total") >= len(purchases), timeout=60)

    # What each partition holds, counted from the records themselves (not from offsets).
    topic = settings.topic("purchase")
    held = Counter(partition for _key, _value, _headers, partition, _offset in scan(settings, topic, idle_s=2.0))
    assert sum(held.values()) == len(purchases)
    expected = {p: float(held.get(p, 0)) for p in range(PARTITIONS)}
    # One worker owns every partition; the series of each is its whole content (nothing committed).
    seen: list[dict[int, float]] = []
    try:
        samples = worker.wait_until(lambda m: seen.append(consumer_lags(m, topic)) or seen[-1] == expected, timeout=30)
    except AssertionError:
        raise AssertionError(f"lag series {seen[-1] if seen else None}, expected {expected}") from None
    # The profiles' changelog is assigned to the worker too, but it writes it, not the group's
    # consumption: no lag of its own (an earlier form of the fix showed one that never went).
    topics = {dict(labels)["topic"] for (name, labels) in samples if name == "persona_consumer_lag"}
    assert topic in topics and not [t for t in topics if t.endswith("-changelog")], topics
