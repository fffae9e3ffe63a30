"""A record whose processing raises (a bug, not bad input): dead-lettered as ``internal``, the
worker restarts once without it and with none of the changes it held in memory, every other
record is applied exactly once, and after a redrive the record is applied too (stream_app.poison).

The failpoint raises *after* the record was applied to the profile cache, as a bug in the
ranking would: a restart that kept the process's memory, or a commit that wrote the cache back
first, would leave the record's purchase in its user's profile."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import msgspec
import pytest

from state.events import Purchase
from stream_app import dlq
from stream_app.dlq_ops import redrive
from stream_app.inspect import all_profiles, scan
from stream_app.poison import FAILPOINT_ENV, LEDGER_NAME, PoisonLedger
from stream_app.producer import publish
from stream_app.settings import Settings
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

PURCHASES = 1_200


def _purchase_counts(settings: Settings) -> dict[str, int]:
    return {u: p.counts.get("purchase", 0) for u, p in all_profiles(settings).items()}


def test_a_record_that_raises_is_dead_lettered_and_restarted_past_then_redriven(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = topic_factory()
    topic = settings.topic("purchase")
    purchases = [
        Purchase(event_id=f"poison-test-{i}", ts=1_700_000_000.0 + i, user_id=f"u{i % 40}", item_id=f"i{i % 97}")
        for i in range(PURCHASES)
    ]
    publish(settings, purchases)
    records = sorted(scan(settings, topic), key=lambda r: (r[3], r[4]))
    assert len(records) == PURCHASES
    key, value, _, partition, offset = records[len(records) // 3]
    victim = msgspec.json.decode(value or b"{}")["user_id"]
    monkeypatch.setenv(FAILPOINT_ENV, f"{topic}:{partition}:{offset}")

    worker = worker_factory(settings, allow_restarts=True)
    wait_drained(settings, [topic], [worker], timeout=300)
    final = worker.metrics()
    assert worker.stop() == 0

    assert metric_sum(final, "persona_supervisor_restarts_total") == 1  # one record, one restart
    assert metric_sum(final, "persona_dead_letter_total", reason="internal") == 1  # counted by the process that passed it by
    assert (topic, partition, offset) in PoisonLedger(settings.state_dir / LEDGER_NAME)
    letters = list(scan(settings, dlq.dlq_topic(topic)))
    assert len(letters) == 1
    dl_key, dl_value, headers, _, _ = letters[0]
    h = {k: v.decode() for k, v in headers}
    assert (dl_key, dl_value) == (key, value)
    assert (h[dlq.H_TOPIC], int(h[dlq.H_PARTITION]), int(h[dlq.H_OFFSET])) == (topic, partition, offset)
    assert (h[dlq.H_REASON], h[dlq.H_CLASS]) == ("internal", "RuntimeError")
    assert FAILPOINT_ENV in h[dlq.H_MESSAGE]

    want = Counter(p.user_id for p in purchases)
    without = dict(want)
    without[victim] -= 1
    assert _purchase_counts(settings) == without  # the victim's purchase only, applied once each

    # The bug "fixed" (no failpoint): the redrive publishes it again and it is applied.
    monkeypatch.delenv(FAILPOINT_ENV)
    report = redrive(settings, "purchase", reasons=["internal"])
    assert report.selected == 1
    worker = worker_factory(settings)
    wait_drained(settings, [topic], [worker], timeout=300)
    assert worker.stop() == 0
    assert _purchase_counts(settings) == dict(want)
