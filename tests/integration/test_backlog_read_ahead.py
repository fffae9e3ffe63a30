"""A worker catching up on a backlog takes its records from the Kafka client in bounded batches.

Faust asks its client for every record fetched so far, and the client prefetches up to a
megabyte per partition while the previous batch is worked through: draining 100k purchases, a
worker held ~102k records as Python objects at once (``persona bench memory``; docs/PERFORMANCE.md).
``PERSONA_MAX_POLL_RECORDS`` bounds what the consumer Faust builds for the worker hands out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from state.events import Purchase
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.worker import build_app

pytestmark = pytest.mark.integration

BACKLOG = 3_000
PARTITIONS = 2


async def _batches(settings: Settings) -> list[int]:
    """Sizes of the batches the worker's own consumer (built by Faust from our settings) hands
    out while draining the purchase topic from the start, until it has all of it."""
    app, _ = build_app(settings)
    faust_consumer: Any = app.consumer
    consumer: Any = faust_consumer._thread._create_worker_consumer(app.transport)  # what Faust's worker thread runs
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic("purchase"), p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        sizes: list[int] = []
        for _ in range(200):
            # The call Faust makes (faust.transport.drivers.aiokafka: max_records=_max_poll_records).
            got = await consumer.getmany(*tps, timeout_ms=2_000, max_records=consumer._max_poll_records)
            size = sum(len(records) for records in got.values())
            if size:
                sizes.append(size)
            if sum(sizes) >= BACKLOG:
                break
            if not size and sizes:
                await asyncio.sleep(0.1)
        return sizes
    finally:
        await consumer.stop()


def test_regression_a_backlog_was_held_as_python_records_at_once(
    topic_factory: Callable[..., Settings],
) -> None:
    settings = topic_factory(partitions=PARTITIONS)
    publish(settings, [
        Purchase(event_id=f"p{i}", ts=1_700_000_000.0 + i, user_id=f"u{i}", item_id=f"i{i % 50}") for i in range(BACKLOG)
    ])

    bounded = asyncio.run(_batches(settings.model_copy(update={"max_poll_records": 100})))
    unbounded = asyncio.run(_batches(settings.model_copy(update={"max_poll_records": 0})))

    # Nothing is lost or repeated by the bound: every record arrives, in more, smaller batches.
    assert sum(bounded) == BACKLOG
    assert max(bounded) <= 100
    assert len(bounded) >= BACKLOG // 100
    # Without it (Faust's default) the client hands out what it prefetched: the whole backlog of
    # a partition at once here (3,000 records of ~100 bytes are under a megabyte).
    assert sum(unbounded) == BACKLOG
    assert max(unbounded) > 100
