"""Output the broker refuses is never committed past (stream_app.flush's DeliveryGuard).

The recommendations topic is set to take no record larger than 64 bytes, so the broker refuses
every list the worker produces (MessageSizeTooLarge, a non-retriable error, as a missing WRITE ACL
would be). Before the guard, Faust only logged the failed send and the worker committed every
purchase: the group's lag was 0 with not one list on the topic, and nothing said so but an
"exception was never retrieved" line at shutdown. Now the worker restarts from its committed
offsets each time, committing nothing; once the topic takes the lists again, every user's latest
list is there and every purchase is in its profile exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource  # type: ignore[attr-defined]

from scoring.messages import decode as decode_recommendations
from state.events import Purchase
from stream_app.inspect import all_profiles, scan
from stream_app.producer import publish
from stream_app.settings import Settings
from tests.support import WorkerProcess, group_lag, metric_sum, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

PURCHASES = 300
USERS = 20


def _limit_record_size(settings: Settings, limit: int | None) -> None:
    """Set (or, with None, remove) the recommendations topic's ``max.message.bytes``."""
    entry = (
        ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)
        if limit is not None
        else ConfigEntry("max.message.bytes", "", incremental_operation=AlterConfigOpType.DELETE)
    )
    resource = ConfigResource("topic", settings.recommendations_topic, incremental_configs=[entry])
    admin = AdminClient(settings.kafka_config())  # kept alive until the futures are done
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(timeout=30)


def _refusals(worker: WorkerProcess, topic: str) -> int:
    text = worker.log_path.read_bytes().decode("utf-8", "replace")
    return sum(1 for line in text.splitlines() if f"output to {topic} was not delivered" in line)


def test_regression_output_the_broker_refused_was_committed_past(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess]
) -> None:
    settings = topic_factory()
    recs_topic, topic = settings.recommendations_topic, settings.topic("purchase")
    _limit_record_size(settings, 64)
    purchases = [
        Purchase(event_id=f"refused-{i}", ts=1_700_000_000.0 + i, user_id=f"u{i % USERS}", item_id=f"i{i % 31}")
        for i in range(PURCHASES)
    ]
    publish(settings, purchases)

    worker = worker_factory(settings, allow_restarts=True)
    deadline = time.monotonic() + 120
    while _refusals(worker, recs_topic) < 2:  # refused, restarted, refused again
        assert worker.proc.poll() is None, worker.log_tail()
        assert time.monotonic() < deadline, f"no refusal logged twice:\n{worker.log_tail()}"
        time.sleep(1)
    assert group_lag(settings, [topic]) == PURCHASES  # nothing committed past a refused list
    assert list(scan(settings, recs_topic)) == []

    _limit_record_size(settings, None)  # the operator fixes the topic: the broker's default again
    wait_drained(settings, [topic], [worker], timeout=240)
    final = worker.metrics()
    assert worker.stop() == 0
    assert metric_sum(final, "persona_supervisor_restarts_total") >= 2

    want = Counter(p.user_id for p in purchases)
    assert {u: p.counts.get("purchase", 0) for u, p in all_profiles(settings).items()} == dict(want)
    latest: dict[str, int] = {}
    for _, value, _, _, _ in scan(settings, recs_topic):
        message = decode_recommendations(value or b"")
        latest[message.user_id] = max(latest.get(message.user_id, 0), message.profile_version)
    assert latest == dict(want)  # every user's list was computed from all of its purchases
