"""``persona bench load``: event->emit latency of one worker under offered load, through the
real broker, up to saturation.

Each level offers a steady ``rate`` of events for ``seconds``: 10% reviews with their text
(Amazon Musical Instruments 5-core: the encoder runs on them), the rest clicks (60%) and
purchases (30%) of the same users and items. Every level has its own user ids, so each
user's profile versions start at 0 there. An event's event time is its produce time (a live
stream, not a replay), and the producer records when each event was handed over.

Two latencies, from the ``recommendations`` topic after the level drained:

* **per event**: from an event's produce to the first message whose ``profile_version``
  counts it (the user's k-th event is counted by the first message with version >= k; a
  review overtaken by a later click of the same user is attributed that click's slot: exact
  for a user's own order, approximate across topics). It includes the coalescing wait: a
  user's second change within ``PERSONA_EMIT_INTERVAL_S`` is emitted when the interval ends;
* **per message**: ``generated_at`` minus the trigger's event time (how fresh what it shows is).

A level is *saturated* when, as its offer ends, more than a second of its input is still not
applied (:func:`saturated`): the latency then measures the queue. The group's uncommitted
records are reported too, but they are no measure of it: offsets are committed once a
second, so a worker that keeps up leaves up to a second of input uncommitted (the rule before
2026-12-07 counted those and called 200-300 events/s saturated at applied/offered 0.996-1.000
and p50 24-74 ms). The worker drains between levels; once a level saturates, higher ones are
reported as not run.

The baseline, in the same run, is the offered rate itself: ``applied/offered`` per level.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import bench_settings, broker, workdir
from bench.reviews import AMAZON
from deploy.workers import WorkerProcess, group_lag, metric_sum
from scoring.messages import decode as decode_recs
from state.events import Click, Event, Item, Purchase, Review, encode, key_of, kind_of
from stream_app.inspect import scan
from stream_app.producer import make_producer, publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from stream_app.topics import ensure_topics

LEVELS = (100, 500, 1_000, 2_000)
GOAL_P99_S = 1.0
GOAL_AT = 1_000


def _pairs(data_dir: Path) -> tuple[list[Event], list[Review]]:
    """The catalog (items of the reviews, with no text: Musical Instruments has no metadata)
    and the reviews, in file order. No category either: a category name alone is an item's
    text (``state.events.item_text``), so every item would get one and the same text vector,
    which beats the review centroids; the content index then held 900 copies of one vector."""
    reviews = [e for e in read_events("amazon", data_dir / AMAZON) if isinstance(e, Review)]
    items = sorted({r.item_id for r in reviews})
    catalog: list[Event] = [Item(event_id=f"load-item-{i}", ts=0.0, item_id=i) for i in items]
    return catalog, reviews


def offer(settings: Settings, level: int, rate: int, seconds: float, reviews: list[Review], seed: int) -> dict[str, list[float]]:
    """Produce ``rate`` events/s for ``seconds``; returns each user's produce times, in order."""
    rng = random.Random(seed)
    producer = make_producer(settings)
    sent: dict[str, list[float]] = defaultdict(list)
    total = int(rate * seconds)
    started = time.monotonic()
    for n in range(total):
        src = reviews[rng.randrange(len(reviews))]
        user = f"L{level}-{src.user_id}"
        now = time.time()
        roll = rng.random()
        event: Event
        if roll < 0.10:
            event = Review(event_id=f"L{level}-r{n}", ts=now, user_id=user, item_id=src.item_id, rating=src.rating, text=src.text,
                           summary=src.summary)
        elif roll < 0.40:
            event = Purchase(event_id=f"L{level}-p{n}", ts=now, user_id=user, item_id=src.item_id)
        else:
            event = Click(event_id=f"L{level}-c{n}", ts=now, user_id=user, item_id=src.item_id)
        while True:
            try:
                producer.produce(settings.topic(kind_of(event)), key=key_of(event).encode(), value=encode(event))
                break
            except BufferError:
                producer.poll(0.01)
        sent[user].append(now)
        producer.poll(0)
        ahead = (n + 1) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(60)
    return sent


def latencies(settings: Settings, level: int, sent: dict[str, list[float]]) -> tuple[list[float], list[float], int]:
    """Per-event and per-message latencies of one level's users; events never counted by a message."""
    messages: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
    prefix = f"L{level}-"
    for key, value, *_ in scan(settings, settings.recommendations_topic, idle_s=2.0):
        if key is None or value is None or not key.startswith(prefix.encode()):
            continue
        m = decode_recs(value)
        messages[m.user_id].append((m.generated_at, m.profile_version, m.trigger_event_ts))
    per_event, missing = event_latencies(sent, messages)
    return per_event, [g - t for ms in messages.values() for g, _, t in ms], missing


def event_latencies(
    sent: dict[str, list[float]], messages: dict[str, list[tuple[float, int, float]]]
) -> tuple[list[float], int]:
    """Each sent event's latency: from its produce time to the first message (by
    ``generated_at``) whose profile version counts it (a user's k-th event: version >= k);
    and how many events no message counts. ``messages``: user -> (generated_at, version, trigger ts)."""
    per_event: list[float] = []
    missing = 0
    for user, times in sent.items():
        ms = sorted(messages.get(user, []))
        # Running max of versions in emission order: bisect finds the first counting event k.
        best: list[int] = []
        top = 0
        for _, v, _ in ms:
            top = max(top, v)
            best.append(top)
        for k, produced in enumerate(times, 1):
            i = bisect.bisect_left(best, k)
            if i == len(ms):
                missing += 1
            else:
                per_event.append(max(0.0, ms[i][0] - produced))
    return per_event, missing


def saturated(events: int, applied: float, rate: int) -> bool:
    """More than a second of the level's input (``rate`` events) not applied when its offer ended."""
    return events - applied > rate


def _applied(worker: WorkerProcess) -> float:
    m = worker.metrics()
    return metric_sum(m, "persona_events_total")


def _ranking(worker: WorkerProcess) -> tuple[float, float, float, float]:
    """(rankings, their wall seconds, their CPU seconds, seconds the encoder was encoding) so far."""
    m = worker.metrics()
    return (metric_sum(m, "persona_ranking_seconds_count"), metric_sum(m, "persona_ranking_seconds_sum"),
            metric_sum(m, "persona_ranking_cpu_seconds_total"), metric_sum(m, "persona_encode_batch_seconds_sum"))


def run(
    bootstrap: str | None, data_dir: Path, registry: Path, *, levels: tuple[int, ...] = LEVELS, seconds: float = 30.0
) -> dict[str, Any]:
    from encoders.registry import Registry

    if Registry(registry).current() is None:
        raise FileNotFoundError(f"no encoder in {registry}: reviews need one (make test-models, or PERSONA_MODEL_REGISTRY)")
    catalog, reviews = _pairs(data_dir)
    report: dict[str, Any] = {"levels": [], "seconds_per_level": seconds, "goal_p99_s": GOAL_P99_S, "goal_at_eps": GOAL_AT}
    with broker(bootstrap) as bs, workdir("persona-bench-load-") as work:
        settings = bench_settings(bs, f"load{int(time.time())}", work / "state").model_copy(update={"model_registry": registry})
        report["emit_interval_s"] = settings.emit_interval_s
        ensure_topics(settings)
        publish(settings, catalog)
        worker = WorkerProcess(settings, work / "worker.log")
        inputs = [settings.topic(k) for k in ("click", "purchase", "review")]
        try:
            worker.wait_ready(180)
            # Warm-up: the encoder's first batches and the first rankings stay off the clock.
            offer(settings, 0, 50, 4.0, reviews, seed=0)
            _drain(settings, inputs, worker, 120)
            saturated_at: int | None = None
            for n, rate in enumerate(levels, 1):
                row: dict[str, Any] = {"offered_eps": rate}
                if saturated_at is not None:
                    row["not_run"] = f"saturated at {saturated_at} events/s"
                    report["levels"].append(row)
                    continue
                before, ranked, t0 = _applied(worker), _ranking(worker), time.monotonic()
                sent = offer(settings, n, rate, seconds, reviews, seed=n)
                elapsed = time.monotonic() - t0
                applied = _applied(worker) - before
                backlog = group_lag(settings, inputs)
                drain_started = time.monotonic()
                _drain(settings, inputs, worker, 600)
                per_event, per_message, missing = latencies(settings, n, sent)
                count, wall, cpu, encoding = (b - a for a, b in zip(ranked, _ranking(worker), strict=True))
                # Share of the level (offer and drain) the encoder spent encoding: near 1, it is the limit.
                row["encoder_busy"] = encoding / (time.monotonic() - t0)
                if count:
                    # Wall time well above CPU time: the rankings wait for the cores, not compute.
                    row.update(rankings=int(count), ranking_ms_mean=1000 * wall / count, ranking_cpu_ms_mean=1000 * cpu / count)
                events = sum(len(t) for t in sent.values())
                row.update(
                    events=events,
                    offered_actual_eps=events / elapsed,
                    applied_eps_during=applied / elapsed,
                    applied_vs_offered=applied / max(1, events),
                    unapplied_at_end=int(events - applied),
                    uncommitted_at_end=backlog,
                    drain_s=time.monotonic() - drain_started,
                    never_emitted=missing,
                    messages=len(per_message),
                )
                for name, xs in (("event", per_event), ("message", per_message)):
                    if xs:
                        row[f"{name}_p50_s"] = float(np.percentile(xs, 50))
                        row[f"{name}_p99_s"] = float(np.percentile(xs, 99))
                        row[f"{name}_max_s"] = float(max(xs))
                row["saturated"] = saturated(events, applied, rate)
                if row["saturated"]:
                    saturated_at = rate
                report["levels"].append(row)
        finally:
            worker.stop()
    return report


def _drain(settings: Settings, topics: list[str], worker: WorkerProcess, timeout: float) -> None:
    from deploy.workers import wait_drained

    wait_drained(settings, topics, [worker], timeout=timeout)
    time.sleep(1.5)  # the last coalesced messages go when their interval ends (a tick later) or at a commit
