"""Publishing events: confluent-kafka's idempotent producer, one topic per event kind."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from confluent_kafka import KafkaError, Message, Producer

from state.errors import BrokerError
from state.events import Event, encode, key_of, kind_of
from stream_app.settings import Settings


def make_producer(settings: Settings) -> Producer:
    conf = settings.kafka_config()
    conf.update(
        {
            # Idempotence: broker-side de-duplication of retries, ordered per partition.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            # Java-compatible key hashing, the same as aiokafka's and Kafka Streams': every
            # producer of user-keyed topics must agree, or co-partitioning breaks.
            "partitioner": "murmur2_random",
        }
    )
    return Producer(conf)


def publish(
    settings: Settings,
    events: Iterable[Event],
    *,
    rate: float | None = None,
    progress: bool = False,
    total: int | None = None,
) -> Counter[str]:
    """Send ``events`` in order; returns the delivered count per topic. Raises on failure."""
    producer = make_producer(settings)
    delivered: Counter[str] = Counter()
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")
        else:
            delivered[msg.topic() or "?"] += 1

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="ev", desc="produce", mininterval=0.5)
    started = time.monotonic()
    for n, event in enumerate(events, 1):
        topic = settings.topic(kind_of(event))
        while True:
            try:
                producer.produce(topic, key=key_of(event).encode(), value=encode(event), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        producer.poll(0)
        if failures:
            raise BrokerError(f"delivery failed: {failures[0]}")
        if bar is not None:
            bar.update(1)
        if rate:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(60)
    if bar is not None:
        bar.close()
    if remaining or failures:
        raise BrokerError(f"{remaining} records undelivered; {failures[:1]}")
    return delivered
