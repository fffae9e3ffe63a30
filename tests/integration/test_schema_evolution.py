"""Contract versions on the real broker: producers of three generations feed one worker.

- records written before contracts carried a version (no ``v``) and records of this build
  (``"v": "1.0"``) are applied;
- records of a newer minor revision (``"v": "1.4"``, with fields this worker has never heard
  of) are applied: the unknown fields are ignored;
- records of another major (``"v": "2.0"``), whether reshaped or field-for-field readable, are
  dead-lettered as ``incompatible_version`` with a message naming the version the worker reads.

Every user's profile version equals the records of theirs the worker had to apply (counted here
from what was produced), and the dead-letter topic holds exactly the major-2 records.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from state.events import Click, EventKind, Purchase, encode
from stream_app import dlq
from stream_app.dlq_ops import read_letters
from stream_app.inspect import all_profiles
from stream_app.producer import make_producer, publish
from stream_app.settings import Settings
from tests.conftest import EventFactory
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.integration]


def test_older_and_newer_minor_producers_are_applied_and_another_major_is_dead_lettered(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], event_factory: EventFactory, tmp_path: Path
) -> None:
    settings = topic_factory(partitions=2, ranker_registry=tmp_path / "no-rankers")
    publish(settings, [event_factory.item(f"i{n}", ["c"]) for n in range(5)])
    worker = worker_factory(settings)
    worker.wait_ready()

    records: list[tuple[str, str, bytes]] = []  # (topic, user, value)
    applied: Counter[str] = Counter()
    incompatible = 0
    for u in range(8):
        user = f"u{u}"
        for n in range(6):
            ts, item = 100.0 + 10 * n, f"i{n % 5}"
            event: Click | Purchase = event_factory.click(user, item, ts=ts) if n % 2 else event_factory.purchase(user, item, ts=ts)
            kind: EventKind = "click" if isinstance(event, Click) else "purchase"
            doc = json.loads(encode(event))
            generation = (u + n) % 4
            if generation == 0:  # written before versions existed
                del doc["v"]
            elif generation == 1:  # this build
                pass
            elif generation == 2:  # a newer minor revision: new optional fields
                doc |= {"v": "1.4", "device": "ios", "context": {"page": "home", "slot": n}}
            else:  # another major: reshaped, or the same fields under a version this worker does not read
                if n % 3 == 0:
                    doc = {"type": kind, "v": "2.0", "event_id": doc["event_id"], "ts": doc["ts"],
                           "actor": {"id": user}, "object": {"id": doc["item_id"]}}
                else:
                    doc["v"] = "2.0"
                incompatible += 1
                records.append((settings.topic(kind), user, json.dumps(doc).encode()))
                continue
            applied[user] += 1
            records.append((settings.topic(kind), user, json.dumps(doc).encode()))
    assert incompatible >= 8 and sum(applied.values()) >= 30

    producer = make_producer(settings)
    for topic, user, value in records:
        producer.produce(topic, key=user.encode(), value=value)
    assert producer.flush(30) == 0
    inputs = [settings.topic("click"), settings.topic("purchase")]
    wait_drained(settings, inputs, [worker])
    m = worker.wait_until(lambda m: metric_sum(m, "persona_dead_letter_total") >= incompatible)
    assert metric_sum(m, "persona_dead_letter_total", reason="incompatible_version") == incompatible
    assert metric_sum(m, "persona_dead_letter_total") == incompatible
    assert worker.stop() == 0

    assert {u: p.version for u, p in all_profiles(settings).items()} == dict(applied)
    letters = [x for t in inputs for x in read_letters(settings, dlq.dlq_topic(t))]
    assert len(letters) == incompatible
    assert all(x.reason == "incompatible_version" and "this worker reads 1.x" in x.message for x in letters)
