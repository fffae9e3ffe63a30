"""Publishing events: confluent-kafka's idempotent producer, one topic per event kind."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, Message, Producer

from state.batch import BATCH_KINDS, encode_events
from state.errors import BrokerError
from state.events import Event, EventKind, encode, key_of, kind_of
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


class UserBatches:
    """Events gathered into batch records (:mod:`state.batch`), as a client SDK queues a user's
    events: a user's batch of one topic goes out at ``size`` events, or once ``linger`` further
    events of the stream have passed its first (no event waits longer than that). Kinds that take
    one event per record pass straight through. Each user's events keep their order."""

    def __init__(self, size: int, linger: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"a batch holds at least 1 event, got {size}")
        self.size = size
        self.linger = linger if linger is not None else 10 * size
        self._open: OrderedDict[tuple[EventKind, str], tuple[int, list[Event]]] = OrderedDict()
        self._seen = 0

    def add(self, event: Event) -> list[tuple[EventKind, str, list[Event]]]:
        """Take ``event``; return the batches (kind, key, events) now due, oldest first."""
        self._seen += 1
        kind = kind_of(event)
        key = key_of(event)
        due: list[tuple[EventKind, str, list[Event]]] = []
        while self._open:
            (k, user), (first, pending) = next(iter(self._open.items()))
            if first > self._seen - self.linger:
                break
            del self._open[(k, user)]
            due.append((k, user, pending))
        if self.size == 1 or kind not in BATCH_KINDS:
            due.append((kind, key, [event]))
            return due
        slot = self._open.get((kind, key))
        if slot is None:
            slot = self._open[(kind, key)] = (self._seen, [])
        slot[1].append(event)
        if len(slot[1]) >= self.size:
            del self._open[(kind, key)]
            due.append((kind, key, slot[1]))
        return due

    def drain(self) -> list[tuple[EventKind, str, list[Event]]]:
        """Every batch still open, oldest first."""
        due = [(k, user, pending) for (k, user), (_, pending) in self._open.items()]
        self._open.clear()
        return due


def publish(
    settings: Settings,
    events: Iterable[Event],
    *,
    rate: float | None = None,
    progress: bool = False,
    total: int | None = None,
    batch: int = 1,
) -> Counter[str]:
    """Send ``events`` in order; returns the delivered count of events per topic. Raises on
    failure. ``batch`` > 1: up to that many of a user's events per record (:class:`UserBatches`)."""
    producer = make_producer(settings)
    delivered: Counter[str] = Counter()
    failures: list[str] = []
    batches = UserBatches(batch)

    def on_delivery(err: KafkaError | None, msg: Message, events: int = 1) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")
        else:
            delivered[msg.topic() or "?"] += events

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="ev", desc="produce", mininterval=0.5)
    started = time.monotonic()

    def counted(events: int) -> Callable[[KafkaError | None, Message], None]:
        return lambda err, msg: on_delivery(err, msg, events)

    def send(kind: EventKind, key: str, group: list[Event]) -> None:
        value = encode(group[0]) if len(group) == 1 else encode_events(group)
        while True:
            try:
                producer.produce(
                    settings.topic(kind),
                    key=key.encode(),
                    value=value,
                    on_delivery=counted(len(group)),
                )
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain

    for n, event in enumerate(events, 1):
        for kind, key, group in batches.add(event):
            send(kind, key, group)
        producer.poll(0)
        if failures:
            raise BrokerError(f"delivery failed: {failures[0]}")
        if bar is not None:
            bar.update(1)
        if rate:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    for kind, key, group in batches.drain():
        send(kind, key, group)
    remaining = producer.flush(60)
    if bar is not None:
        bar.close()
    if remaining or failures:
        raise BrokerError(f"{remaining} records undelivered; {failures[:1]}")
    return delivered
