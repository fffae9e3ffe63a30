"""``persona erase USER``: request an erasure, and optionally wait until the worker did it.

The request is an :class:`state.events.Erasure` record on the ``erasures`` input topic, keyed
by the user like every user event (so it lands on the partition of the user's profile, and
the worker that owns that partition applies it in order with the user's other topics'
records). Done means the worker put the user's tombstone on the recommendations topic: it does
that after the profile, the caches and the social state are gone (``Pipeline.erase``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from state.errors import BrokerError
from state.events import Erasure
from stream_app.kafka_clients import watermarks
from stream_app.producer import publish
from stream_app.settings import Settings


@dataclass(frozen=True)
class ErasureDone:
    """Where the tombstone landed, and how long the wait was."""

    partition: int
    offset: int
    waited_s: float


def request_erasure(settings: Settings, user_id: str, *, ts: float | None = None, reason: str = "") -> Erasure:
    """Publish the erasure of ``user_id`` covering events up to ``ts`` (default: now)."""
    erasure = Erasure(event_id=f"erasure-{uuid.uuid4()}", ts=time.time() if ts is None else ts, user_id=user_id, reason=reason)
    publish(settings, [erasure])
    return erasure


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The end offset of every partition of ``topic`` now."""
    consumer = Consumer(settings.kafka_config() | {"group.id": "persona-erase", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise BrokerError(f"topic {topic} not found on {settings.bootstrap_servers}")
        return {p: watermarks(consumer, TopicPartition(topic, p), 10)[1] for p in meta.partitions}
    finally:
        consumer.close()


def wait_for_tombstone(settings: Settings, user_id: str, since: dict[int, int], timeout_s: float) -> ErasureDone | None:
    """The user's tombstone on the recommendations topic after offsets ``since`` (None: not
    within ``timeout_s``)."""
    topic = settings.recommendations_topic
    started = time.monotonic()
    consumer = Consumer(settings.kafka_config() | {"group.id": "persona-erase", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in since.items()])
        key = user_id.encode()
        while time.monotonic() - started < timeout_s:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            if msg.key() == key and msg.value() is None:
                return ErasureDone(msg.partition() or 0, msg.offset() or 0, time.monotonic() - started)
        return None
    finally:
        consumer.close()
