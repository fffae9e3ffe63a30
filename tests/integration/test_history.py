"""The trainer's history read back from the real broker's input topics (persona train --from-topics)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from state.events import Event, Item, Purchase, User
from stream_app.history import read_history
from stream_app.producer import UserBatches, publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from stream_app.training_data import collect

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("batch", [1, 8], ids=["one-event-per-record", "batch-records-of-8"])
def test_history_from_topics_has_every_event_once_in_time_order_and_the_same_positives(
    topic_factory: Callable[..., Settings], data_dir: Path, batch: int
) -> None:
    """Batch records (state.batch) give the trainer each of their events, as the worker applies them."""
    settings = topic_factory(partitions=3)
    events = list(read_events("movielens", data_dir / "movielens-100k"))
    ratings = [e for e in events if isinstance(e, Purchase)][:2500]
    raters = {e.user_id for e in ratings}
    subset: list[Event] = [e for e in events if isinstance(e, Item) or (isinstance(e, User) and e.user_id in raters)] + ratings
    publish(settings, subset, batch=batch)
    batches = UserBatches(batch)
    groups = [(kind, g) for e in subset for kind, _, g in batches.add(e)] + [(kind, g) for kind, _, g in batches.drain()]
    purchase_records = sum(1 for kind, _ in groups if kind == "purchase")
    assert (purchase_records == len(ratings)) if batch == 1 else (purchase_records < len(ratings) / 2)
    # A record no contract accepts: skipped and counted, as the worker dead-letters it.
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_config())
    producer.produce(settings.topic("purchase"), key=b"u1", value=b"{not json")
    producer.flush(10)

    history = read_history(settings)
    assert history.skipped == 1
    assert Counter(e.event_id for e in history.events) == Counter(e.event_id for e in subset)
    times = [e.ts for e in history.events]
    assert times == sorted(times)
    by_topic = {t: sum(last - first + 1 for first, last in parts.values()) for t, parts in history.offsets.items()}
    assert by_topic[settings.topic("purchase")] == purchase_records + 1
    assert len(history.offsets[settings.topic("purchase")]) == 3  # every partition read
    # The labels do not depend on how ties between users are ordered: the same positives as
    # the file-order replay, and examples from every one of them that is in a pool.
    from_topics = collect(history.events, settings, window=(0.0, 1.0), negatives=3)
    from_file = collect(subset, settings, window=(0.0, 1.0), negatives=3)
    assert from_topics.stats["positives"] == from_file.stats["positives"] > 0
    assert abs(len(from_topics) - len(from_file)) <= 0.05 * len(from_file)
    # An event-time range keeps only its events.
    middle = sorted(e.ts for e in ratings)[len(ratings) // 2]
    late = read_history(settings, since=middle)
    assert late.events and all(e.ts >= middle for e in late.events)
    assert len(late.events) == sum(1 for e in subset if e.ts >= middle)
