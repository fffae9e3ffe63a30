"""A record whose processing raises (a bug, not bad input): dead-lettered as ``internal``, the
worker restarts once without it and with none of the changes it held in memory, every other
record is applied exactly once, and after a redrive the record is applied too (stream_app.poison).

The failpoint raises *after* the record was applied to the profile cache, as a bug in the
ranking would: a restart that kept the process's memory, or a commit that wrote the cache back
first, would leave the record's purchase in its user's profile."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from scoring.shared import ENGAGE, Delta, decode_record
from state.events import Purchase
from stream_app import dlq
from stream_app.dlq_ops import redrive
from stream_app.inspect import all_profiles, scan
from stream_app.poison import FAILPOINT_ENV, LEDGER_NAME, PoisonLedger, read_shared
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.supervise import _CHILD_ENV as CHILD_ENV
from stream_app.supervise import RESTART_EXIT_CODE
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

PURCHASES = 1_200


def _events_of(value: bytes | None) -> list[dict[str, object]]:
    """The events a purchase record carries: one, or a batch record's array (state.batch)."""
    decoded = msgspec.json.decode(value or b"{}")
    return decoded if isinstance(decoded, list) else [decoded]


def _deltas(settings: Settings) -> list[Delta]:
    return [d for _, value, _, _, _ in scan(settings, settings.scoring_deltas_topic) for d in decode_record(value or b"")]


def _purchase_counts(settings: Settings) -> dict[str, int]:
    return {u: p.counts.get("purchase", 0) for u, p in all_profiles(settings).items()}


@pytest.mark.parametrize("batch", [1, 16], ids=["one-event-per-record", "batch-records-of-16"])
def test_a_record_that_raises_is_dead_lettered_and_restarted_past_then_redriven(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    """With batch records the failpoint raises after every event of the record was applied in
    memory: the restart must drop them all (none was committed, none of their scoring deltas
    left the process), so that the redrive of the whole record applies each event once."""
    settings = topic_factory()
    topic = settings.topic("purchase")
    purchases = [
        Purchase(event_id=f"poison-test-{i}", ts=1_700_000_000.0 + i, user_id=f"u{i % 40}", item_id=f"i{i % 97}")
        for i in range(PURCHASES)
    ]
    publish(settings, purchases, batch=batch)
    records = sorted(scan(settings, topic), key=lambda r: (r[3], r[4]))
    # The record a third of the way in that carries the most events (one, without batches).
    candidates = records[len(records) // 3 : len(records) // 3 + 20]
    key, value, _, partition, offset = max(candidates, key=lambda r: len(_events_of(r[1])))
    events = _events_of(value)
    assert (len(events) == 1) if batch == 1 else (len(events) >= 2)
    assert sum(len(_events_of(r[1])) for r in records) == PURCHASES
    victim = str(events[0]["user_id"])
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
    without[victim] -= len(events)
    assert _purchase_counts(settings) == without  # the victim's record's purchases only, the rest once each
    # Nor did any of its events reach the other workers' scoring state: the deltas the process
    # held when it exited died with it.
    source = f"{topic}:{partition}"
    assert [d for d in _deltas(settings) if (d.source, d.offset) == (source, offset)] == []

    # The bug "fixed" (no failpoint): the redrive publishes it again and it is applied.
    monkeypatch.delenv(FAILPOINT_ENV)
    report = redrive(settings, "purchase", reasons=["internal"])
    assert report.selected == 1
    worker = worker_factory(settings)
    wait_drained(settings, [topic], [worker], timeout=300)
    assert worker.stop() == 0
    assert _purchase_counts(settings) == dict(want)
    # Each event taught the scoring state once (a replay after the restart sends some deltas
    # again, at the same place, which every receiver skips), the record's from its redriven copy.
    unique = {(d.source, d.offset, d.index): d for d in _deltas(settings) if d.kind == ENGAGE}
    assert Counter(d.user for d in unique.values()) == want


def test_regression_poison_ledger_was_per_worker(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The worker that dead-lettered a record stops for good (a pod gone with its disk); another
    worker of the group, with its own empty state directory, takes the partition over. With the
    ledger on the first worker's disk alone, the second met the record again: a second dead
    letter and a restart. The group's poison topic makes it pass the record by."""
    settings = topic_factory()
    topic = settings.topic("purchase")
    purchases = [
        Purchase(event_id=f"poison-group-{i}", ts=1_700_000_000.0 + i, user_id=f"u{i % 30}", item_id=f"i{i % 53}")
        for i in range(600)
    ]
    publish(settings, purchases)
    records = sorted(scan(settings, topic), key=lambda r: (r[3], r[4]))
    _, value, _, partition, offset = records[len(records) // 2]
    victim = msgspec.json.decode(value or b"{}")["user_id"]
    monkeypatch.setenv(FAILPOINT_ENV, f"{topic}:{partition}:{offset}")

    # Worker A runs without its supervisor: after the dead letter it exits and stays down.
    monkeypatch.setenv(CHILD_ENV, "1")
    first = worker_factory(settings)
    deadline = time.monotonic() + 300
    while first.alive and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.proc.returncode == RESTART_EXIT_CODE, first.log_tail()
    assert len(list(scan(settings, dlq.dlq_topic(topic)))) == 1
    assert read_shared(settings) == {(topic, partition, offset)}

    # Worker B: same group, its own empty state directory, the failpoint still armed.
    monkeypatch.delenv(CHILD_ENV)
    second = worker_factory(settings, state_dir=tmp_path / "second-worker-state")
    wait_drained(settings, [topic], [second], timeout=300)
    final = second.metrics()  # raises if B's supervisor restarted it
    assert second.stop() == 0
    assert not (tmp_path / "second-worker-state" / LEDGER_NAME).exists()  # B knew it from the topic alone
    assert metric_sum(final, "persona_dead_letter_total", reason="internal") == 1  # passed by, counted by B
    assert len(list(scan(settings, dlq.dlq_topic(topic)))) == 1  # no second dead letter
    want = Counter(p.user_id for p in purchases)
    want[victim] -= 1
    assert _purchase_counts(settings) == dict(want)

    # The group has committed past it: the next start forgets it, in the topic too.
    from stream_app.worker import _prune_ledger

    ledger = PoisonLedger(tmp_path / "third" / LEDGER_NAME)
    _prune_ledger(settings, ledger)
    assert len(ledger) == 0 and read_shared(settings) == set()
