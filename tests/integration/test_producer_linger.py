"""The worker's producer lingers to fill a batch (``PERSONA_PRODUCER_LINGER_S``), as Kafka's own
producer has done by default since 4.0.

Without it (Faust's default) the producer sends a request each time the event loop yields, so
a worker's output (lists, changelog records, deltas, encoded reviews) left in many small
requests, each a socket write for the worker and a request for the broker on the same cores
(docs/PERFORMANCE.md, "The producer lingers 5 ms"). The request count is read at the Kafka
client the worker's Faust app builds, talking to a real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from stream_app.kafka_clients import watermarks
from stream_app.settings import Settings
from stream_app.worker import build_app

pytestmark = pytest.mark.integration

RECORDS = 200


async def _produce_requests(settings: Settings, topic: str) -> tuple[int, float]:
    """Produce requests the worker's own producer sends for ``RECORDS`` records handed to it one
    at a time, the loop yielding about a millisecond between them (events arriving), then flushed;
    and how long the handing over took (s)."""
    app, _ = build_app(settings)
    producer: Any = app.producer  # faust.transport.drivers.aiokafka.Producer, as the worker runs it
    await producer.start()
    client: Any = producer._producer.client  # the aiokafka client it sends every request through
    requests = 0
    send = client.send

    async def counting(node_id: int, request: Any, **kwargs: Any) -> Any:
        nonlocal requests
        if type(request).__name__.startswith("ProduceRequest"):
            requests += 1
        return await send(node_id, request, **kwargs)

    client.send = counting
    try:
        started = time.monotonic()
        for i in range(RECORDS):
            await producer.send(topic, f"k{i}".encode(), f"v{i}".encode(), 0, None, None)
            await asyncio.sleep(0.001)
        took = time.monotonic() - started
        await producer.flush()
    finally:
        await producer.stop()
    return requests, took


def test_the_producer_lingers_to_send_fewer_requests(topic_factory: Callable[..., Settings]) -> None:
    settings = topic_factory(partitions=1)
    topic = settings.topic("purchase")
    lingering, took = asyncio.run(_produce_requests(settings.model_copy(update={"producer_linger_s": 0.1}), topic))
    at_once, _ = asyncio.run(_produce_requests(settings.model_copy(update={"producer_linger_s": 0.0}), topic))

    # Every record of both runs reached the broker, once.
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "linger-test"})
    try:
        low, high = watermarks(consumer, TopicPartition(topic, 0), 10.0)
    finally:
        consumer.close()
    assert high - low == 2 * RECORDS
    # A batch leaves 0.1 s after its first record (or at the final flush): at most one request per
    # 0.1 s of sends, 3 in about 0.25 s here. Sent at once, a request leaves whenever the previous
    # one is answered (one in flight per partition), a millisecond or a few apart: 193-199 here.
    assert lingering <= took / 0.1 + 2
    assert at_once > 2 * lingering


def test_the_producer_buffer_bound_is_the_setting_not_faust_s_100(topic_factory: Callable[..., Settings]) -> None:
    """Faust stops feeding every stream while more than ``max_messages`` records wait in its
    producer buffer; the worker's bound is ``PERSONA_PRODUCER_BUFFER_MESSAGES`` (docs/PERFORMANCE.md,
    "The producer buffer's bound": its memory against its throughput)."""
    for bound in (2_000, Settings().producer_buffer_messages):
        app, _ = build_app(topic_factory(producer_buffer_messages=bound))
        assert app.producer.buffer.max_messages == bound != 100
