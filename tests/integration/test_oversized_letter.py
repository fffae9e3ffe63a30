"""A record the broker took but no producer can copy whole is dead-lettered cut, not retried forever.

The broker takes a record up to its ~1 MiB ``message.max.bytes``; Faust's producer and
librdkafka refuse any over 1,000,000 bytes. Before stream_app.dlq.bounded, the worker could not
send the dead letter of a 1,000,077-byte purchase (its copy plus headers was 1,000,419 bytes):
the poison guard took the refusal for a bug, could not send that letter either, and the worker
restarted into the same record forever (seven restarts in a minute, every record behind it on
the partition stuck)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from state.events import Purchase
from stream_app import dlq
from stream_app.dlq_ops import read_letters, redrive
from stream_app.inspect import all_profiles
from stream_app.producer import publish
from stream_app.settings import Settings
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = 20


def test_regression_a_record_too_large_to_copy_whole_restarted_the_worker_forever(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess]
) -> None:
    settings = topic_factory()
    topic = settings.topic("purchase")
    # As a producer with Kafka's Java default max.request.size (1 MiB) would send it.
    big = Producer(settings.kafka_config() | {"message.max.bytes": 1_048_576, "compression.type": "none"})
    value = b'{"type":"purchase","event_id":"big","ts":1700000000,"user_id":"u1","item_id":"' + b"x" * 1_000_000 + b'"}'
    big.produce(topic, key=b"u1", value=value)
    assert big.flush(30) == 0
    publish(settings, [Purchase(event_id=f"e{i}", ts=1_700_000_000.0 + i, user_id="u1", item_id=f"i{i}") for i in range(GOOD)])

    worker = worker_factory(settings)  # any restart fails the test
    wait_drained(settings, [topic], [worker], timeout=180)
    final = worker.metrics()
    assert worker.stop() == 0
    assert metric_sum(final, "persona_dead_letter_total", reason="oversized") == 1
    assert all_profiles(settings)["u1"].counts == {"purchase": GOOD}

    (letter,) = read_letters(settings, dlq.dlq_topic(topic))
    assert letter.reason == "oversized" and letter.key == b"u1"
    assert letter.value == value[: dlq.MAX_LETTER_VALUE_BYTES]
    assert letter.headers[dlq.H_VALUE_BYTES] == str(len(value)) and dlq.H_KEY_BYTES not in letter.headers
    report = redrive(settings, "purchase")
    assert (report.selected, report.truncated, report.sent) == (1, 1, 0)  # a cut copy is never sent back
