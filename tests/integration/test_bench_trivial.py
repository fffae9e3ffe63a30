"""``bench stream``'s framework baselines on the real broker: the trivial Faust agent, per event
and in ``take`` batches, each reads the whole topic in a consumer group of its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.stream import trivial_agent
from state.events import Purchase
from stream_app.inspect import scan
from stream_app.producer import publish
from stream_app.settings import Settings

pytestmark = [pytest.mark.integration]

EVENTS = 600


def _purchases(n: int) -> list[Purchase]:
    return [Purchase(event_id=f"e{i}", user_id=f"u{i % 37}", item_id=f"i{i % 11}", ts=1_700_000_000.0 + i) for i in range(n)]


@pytest.mark.parametrize("take", [0, 100])
def test_the_trivial_agent_counts_every_event_of_the_topic_once(
    take: int, topic_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = topic_factory()
    publish(settings, _purchases(EVENTS))
    cpu: dict[str, float] = {}
    rate = trivial_agent(settings, settings.topic("purchase"), EVENTS, tmp_path, cpu=cpu, take=take, timeout_s=120)
    result = json.loads((tmp_path / f"trivial-{take}.json").read_text())
    # In batches the clock starts at the first batch: its events (at most `take`), read before
    # it started, are not timed.
    timed = result["events"]
    if take:
        assert EVENTS - take <= timed <= EVENTS
    else:
        assert timed == EVENTS
    assert rate == pytest.approx(timed / (result["last"] - result["first"]))
    assert cpu["trivial_cpu_us_per_event"] > 0


def test_the_batched_agent_after_the_per_event_one_reads_the_topic_in_a_group_of_its_own(
    topic_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """bench stream runs both on one topic with one settings: in the per-event agent's group the
    batched one would start at its committed end of the topic and never see an event. The same
    holds for the run without the poll bound."""
    settings = topic_factory()
    publish(settings, _purchases(EVENTS))
    topic = settings.topic("purchase")
    trivial_agent(settings, topic, EVENTS, tmp_path, timeout_s=120)
    assert trivial_agent(settings, topic, EVENTS, tmp_path, take=100, timeout_s=60) > 0
    assert (tmp_path / "trivial-100.json").exists()
    # So does the run without the poll bound (bench stream's Faust-default baseline).
    unbounded = settings.model_copy(update={"max_poll_records": 0})
    assert trivial_agent(unbounded, topic, EVENTS, tmp_path, timeout_s=60, variant="poll0") > 0
    assert json.loads((tmp_path / "trivial-0poll0.json").read_text())["events"] == EVENTS


def test_the_trivial_agent_counts_the_events_inside_batch_records(
    topic_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """bench stream's baseline on batch records (state.batch): the agent counts events, not
    records, so its rate compares with the worker's events/s on the same topic."""
    settings = topic_factory()
    delivered = publish(settings, _purchases(EVENTS), batch=8)
    assert delivered[settings.topic("purchase")] == EVENTS
    records = sum(1 for _ in scan(settings, settings.topic("purchase")))
    assert EVENTS / 8 <= records < EVENTS / 2
    rate = trivial_agent(settings, settings.topic("purchase"), EVENTS, tmp_path, timeout_s=120, variant="b", count_events=True)
    result = json.loads((tmp_path / "trivial-0b.json").read_text())
    # The clock starts at the first record: its events (at most 8), read before it, are not timed.
    assert EVENTS - 7 <= result["events"] <= EVENTS
    assert rate == pytest.approx(result["events"] / (result["last"] - result["first"]))
