"""``persona bench stream``: behaviour-update throughput of one worker, against baselines
measured in the same run on the same topic and broker.

* (a) a trivial Faust agent that only counts events: the framework's own ceiling; and the same
  agent consuming the stream in batches (``take_events`` of :data:`TAKE_BATCH`), which shows
  whether batching the stream moves that ceiling (it did not: ``docs/PERFORMANCE.md``);
* (b) a bare confluent-kafka consumer draining the topic;
* Persona: decode, idempotent profile update in RocksDB, coalesced scoring and emission;
  twice, on the same broker and the same events with the same settings but the ranker:
  ``blend`` (the full ranker, the default) and ``baseline`` (category affinity x popularity).
  Each ranker gets its own topic prefix, with the same events published to both before any
  clock starts: the ``scoring.deltas`` topic is named from the prefix and every worker tails
  it, so on a shared prefix the second worker would also fold in the first one's deltas. The
  emit interval stays at the settings' default, so coalescing applies as in production; the
  ratio blend/baseline is printed (goal :data:`GOAL_BLEND_VS_BASELINE`), with the
  recommendations each worker emitted.

The events are MovieLens-100k (movies with genres, users with attributes, ratings as
purchases) when the data is there, else SYNTHETIC purchases with the same shape: a catalog of
items with categories, users with attributes, and users who come back, mostly to their
favourite categories and to popular items, so both rankers have history, co-occurrence and
category affinity to work on.

Then a footprint run: one purchase for each of ``--profiles`` synthetic users, and the
worker's resident memory and on-disk state, scaled to bytes per 100k profiles.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from rich.console import Console

from bench.against import Run, against_pairs
from bench.harness import bench_settings, broker, disk_bytes, drain, rss_bytes, terminate, workdir, worker_env
from state.events import AttributeValue, Event, Item, Purchase, User
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
#: events/s of the blend-ranker worker over the baseline-ranker worker (printed, not asserted)
GOAL_BLEND_VS_BASELINE = 0.8
#: Events per batch of the batched trivial agent (``stream.take_events(n, within=0.5)``).
TAKE_BATCH = 1000
#: A user's events per batch record in the batched run (``persona produce --batch``); 0: skip it.
BATCH = 16


def bare_consumer(settings: Settings, topic: str, n: int) -> float:
    """Events/s of a confluent-kafka consumer that only counts records."""
    conf = settings.kafka_config() | {
        "group.id": f"{settings.app_id}-bare",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
    }
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    seen, first = 0, 0.0
    deadline = time.monotonic() + 300
    try:
        while seen < n and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                if msg.error() is None:
                    if seen == 0:
                        first = time.monotonic()
                    seen += 1
        return seen / (time.monotonic() - first)
    finally:
        consumer.close()


def trivial_agent(
    settings: Settings, topic: str, n: int, workdir: Path, cpu: dict[str, float] | None = None, take: int = 0,
    timeout_s: float = 600.0, variant: str = "", count_events: bool = False,
) -> float:
    """Events/s of :mod:`bench.trivial_agent` (``take`` > 0: in batches of that many); ``cpu``
    gets its CPU microseconds per event. The batched agent is a consumer group of its own, so
    after the per-event one on the same settings it still reads ``topic`` from the start; so is
    each ``variant`` (a name for a run on other settings)."""
    result = workdir / f"trivial-{take}{variant}.json"
    log = workdir / f"trivial-{take}{variant}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.trivial_agent"],
        cwd=REPO,
        env=worker_env(
            settings, BENCH_TOPIC=topic, BENCH_EVENTS=str(n), BENCH_RESULT=str(result), BENCH_TAKE=str(take),
            BENCH_VARIANT=variant, BENCH_COUNT_EVENTS="1" if count_events else "0",
        ),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not result.exists() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"trivial agent exited {proc.returncode}; see {log}")
            time.sleep(0.2)
        if not result.exists():
            raise RuntimeError(f"the trivial agent did not see {n} events in {timeout_s:.0f} s; see {log}")
        data = json.loads(result.read_text())
        if cpu is not None:
            cpu["trivial_cpu_us_per_event"] = float(data["cpu"]) / float(data["events"]) * 1e6
        return float(data["events"]) / float(data["last"] - data["first"])
    finally:
        terminate(proc)


#: The parts of a worker's memory it estimates itself: ``part -> (gauge, labels)``.
MEMORY_GAUGES: dict[str, tuple[str, dict[str, str]]] = {
    "profile_cache": ("persona_profile_cache_bytes", {}),
    "live_quality": ("persona_live_quality_bytes", {}),
    "social_quiet": ("persona_social_quiet_bytes", {}),
    "rocksdb_memtables": ("persona_rocksdb_memory_bytes", {"part": "memtables"}),
    "rocksdb_block_cache": ("persona_rocksdb_memory_bytes", {"part": "block_cache"}),
    "rocksdb_table_readers": ("persona_rocksdb_memory_bytes", {"part": "table_readers"}),
}


def persona_worker(
    settings: Settings,
    n: int,
    workdir: Path,
    code: Path = REPO,
    *,
    vectors_first: int = 0,
    then: list[Event] | None = None,
    cpu: dict[str, float] | None = None,
    curve: list[tuple[int, int]] | None = None,
    memory: dict[str, float] | None = None,
    on_sample: Callable[[int, int], None] | None = None,
    batching: dict[str, float] | None = None,
) -> tuple[float, int, int, int]:
    """Events/s of the Persona worker over ``n`` behaviour events, its RSS and state bytes, and
    the recommendation messages it emitted (after coalescing). ``code``: the source tree.
    ``vectors_first``: wait until the worker holds that many item vectors (it encodes the
    catalog) before publishing ``then`` (the behaviour), so every purchase finds its vector.
    ``cpu``: filled with the drain's CPU per event, in microseconds (worker tree, whole machine).
    ``curve``: filled with the worker's RSS every twentieth of ``n`` (:attr:`Drain.rss_curve`).
    ``memory``: filled with the worker's own memory gauges at the end (:data:`MEMORY_GAUGES`,
    as last sampled: run it with a short ``ops_sample_s``). ``batching``: filled with the batch
    records the worker read and the events in them (``persona_batch_events``)."""
    from deploy.workers import WorkerProcess, metric_sum

    worker = WorkerProcess(settings, workdir / f"{settings.app_id}.log", code=code)
    try:
        if vectors_first:
            worker.wait_until(lambda m: metric_sum(m, "persona_item_vectors") >= vectors_first, timeout=600)
        if then:
            publish(settings, then)
        # A million new users take ~20 minutes at a few hundred events/s, and full profiles
        # (interest vectors) ran at 225/s: the timeout grows with n, at 100 events/s.
        drained = drain(
            worker, n, timeout=max(900.0, n / 100.0), rss_every=max(1, n // 20) if curve is not None else 0, on_sample=on_sample,
            topic=settings.topic("purchase"),
        )
        if curve is not None:
            curve.extend(drained.rss_curve)
        if cpu is not None:
            cpu["worker_cpu_us_per_event"] = drained.worker_cpu_per_event * 1e6
            cpu["machine_cpu_us_per_event"] = drained.machine_cpu_per_event * 1e6
        time.sleep(2.0)  # let the last commit and compaction settle
        final = worker.metrics()
        emitted = int(metric_sum(final, "persona_recommendations_emitted_total"))
        if memory is not None:
            memory.update({part: metric_sum(final, name, **labels) for part, (name, labels) in MEMORY_GAUGES.items()})
        if batching is not None:
            batching["records"] = metric_sum(final, "persona_batch_events_count")
            batching["events"] = metric_sum(final, "persona_batch_events_sum")
        return drained.rate, rss_bytes(worker.proc.pid), disk_bytes(settings.state_dir), emitted
    finally:
        worker.stop()


def movielens_events(data_dir: Path, limit: int | None) -> tuple[list[Event], list[Event]]:
    from stream_app.sources import read_events

    events = list(read_events("movielens", data_dir / "movielens-100k"))
    catalog: list[Event] = [e for e in events if isinstance(e, (Item, User))]
    behaviour: list[Event] = [e for e in events if isinstance(e, Purchase)]
    behaviour = behaviour[:limit]
    return catalog, behaviour


def synthetic_profiles(n: int, items: int = 1000, *, titled: bool = False) -> tuple[list[Event], list[Event]]:
    """The footprint run's events: one purchase for each of ``n`` users. ``titled``: each item
    has its own title, so an encoder gives each its own text vector (interest vectors differ)."""
    catalog: list[Event] = [
        Item(event_id=f"syn-i-{i}", ts=0.0, item_id=f"syn-i-{i}", categories=[f"syn-cat-{i % 20}"],
             title=f"Synthetic item {i}" if titled else "")
        for i in range(items)
    ]
    behaviour: list[Event] = [
        Purchase(event_id=f"syn-p-{u}", ts=1_700_000_000.0 + u, user_id=f"syn-u-{u}", item_id=f"syn-i-{(u * 7919) % items}")
        for u in range(n)
    ]
    return catalog, behaviour


def synthetic_purchases(
    n: int, users: int = 2_000, items: int = 1_000, categories: int = 20, seed: int = 7
) -> tuple[list[Event], list[Event]]:
    """SYNTHETIC stand-in for MovieLens when it is absent: ``items`` items in ``categories``
    categories (one or two each) with Zipf-like popularity, ``users`` users with attributes
    and two favourite categories, and ``n`` purchases by users of log-normal activity (most
    buy a little, a few a lot), 80% in a favourite category, one event-time minute apart. Deterministic."""
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    cats: list[list[str]] = []
    by_cat: list[list[int]] = [[] for _ in range(categories)]
    for i in range(items):
        first = i % categories
        chosen = [first] if rng.random() < 0.5 else sorted({first, rng.randrange(categories)})
        cats.append([f"syn-cat-{c}" for c in chosen])
        for c in chosen:
            by_cat[c].append(i)
    # The r-th most popular item is drawn ~1/r as often; which item is r-th is shuffled.
    order = list(range(items))
    rng.shuffle(order)
    pop = [0.0] * items
    for r, i in enumerate(order, 1):
        pop[i] = 1.0 / r
    catalog: list[Event] = [
        Item(event_id=f"syn-item-{i}", ts=t0, item_id=f"syn-i-{i}", title=f"Synthetic item {i}", categories=cats[i])
        for i in range(items)
    ]
    cum_all = list(accumulate(pop[i] for i in order))
    cum_by_cat = [list(accumulate(pop[i] for i in pool)) for pool in by_cat]
    favourites = [(rng.randrange(categories), rng.randrange(categories)) for _ in range(users)]
    for u in range(users):
        attributes: dict[str, AttributeValue] = {"age": 18 + u % 57, "gender": "FM"[u % 2], "occupation": f"syn-job-{u % 12}"}
        catalog.append(User(event_id=f"syn-user-{u}", ts=t0, user_id=f"syn-u-{u}", attributes=attributes))
    # Log-normal activity, as in stream_app/sources/synthetic.py: most users buy a little, a few a lot.
    activity = [rng.lognormvariate(0.0, 1.0) for _ in range(users)]
    drawn = rng.choices(range(users), weights=activity, k=n)
    behaviour: list[Event] = []
    for e, u in enumerate(drawn):
        c = rng.choice(favourites[u])
        pool, cum = (by_cat[c], cum_by_cat[c]) if by_cat[c] and rng.random() < 0.8 else (order, cum_all)
        item = rng.choices(pool, cum_weights=cum)[0]
        behaviour.append(
            Purchase(event_id=f"syn-b-{e}", ts=t0 + 60.0 * (e + 1), user_id=f"syn-u-{u}", item_id=f"syn-i-{item}")
        )
    return catalog, behaviour


def source_tree(rev: str, into: Path) -> Path:
    """The project's files at git revision ``rev``, unpacked into ``into`` (``git archive``):
    an older worker to measure against in the same run, on the same broker and events."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _compared_worker(
    bs: str, tag: str, work: Path, catalog: list[Event], behaviour: list[Event], code: Path, extra: dict[str, Any],
    batch: int = 0,
) -> Run:
    """One worker run of ``code`` with ``extra`` settings on its own topics with the same events
    (``batch`` > 1: as batch records of up to that many of a user's events)."""
    settings = bench_settings(bs, tag, work / f"state-{tag}", **extra)
    ensure_topics(settings)
    publish(settings, catalog)
    if batch > 1:
        publish(settings, behaviour, batch=batch)
    else:
        publish(settings, behaviour)
    cpu: dict[str, float] = {}
    rate, _, _, emitted = persona_worker(settings, len(behaviour), work, code=code, cpu=cpu)
    return rate, cpu["worker_cpu_us_per_event"], cpu["machine_cpu_us_per_event"], emitted


def run(
    bootstrap: str | None,
    data_dir: Path,
    events: int | None,
    profiles: int = 100_000,
    against: str | None = None,
    against_set: dict[str, Any] | None = None,
    pairs: int = 1,
    batch: int = BATCH,
    against_batched: bool = False,
) -> dict[str, Any]:
    """``pairs`` > 1: that many runs of this tree and of the compared worker in all, the pairs
    after the first in alternating order (:func:`against_pairs`). ``batch`` > 1: the same events
    also as batch records of up to that many of a user's events (:func:`batched`);
    ``against_batched``: the compared runs on those batch records (the first pair's tree run
    then a run of its own, not the per-event worker's)."""
    if against_batched and batch < 2:
        raise ValueError("against_batched needs batch records (batch >= 2)")
    # Wall-clock figures: say how busy the machine was.
    report: dict[str, Any] = {"cpus": os.cpu_count() or 0, "load_1m_start": os.getloadavg()[0]}
    with broker(bootstrap) as bs, workdir("persona-bench-") as work:
        tag = f"bench{int(time.time())}"
        # The same events for both rankers, each on its own topics (module docstring): only the
        # ranker, the topic prefix, the consumer group, the state dir and the web port differ.
        settings = bench_settings(bs, tag, work / "state", ranker="blend")
        base_settings = bench_settings(bs, f"{tag}b", work / "state-baseline", ranker="baseline")
        ensure_topics(settings)
        ensure_topics(base_settings)
        if (data_dir / "movielens-100k").is_dir():
            catalog, behaviour = movielens_events(data_dir, events)
            report["data"] = f"MovieLens-100k purchases ({len(behaviour)})"
        else:
            catalog, behaviour = synthetic_purchases(events or 100_000)
            report["data"] = f"SYNTHETIC purchases ({len(behaviour)})"
        for target in (settings, base_settings):
            publish(target, catalog)
            publish(target, behaviour)
        n = len(behaviour)
        topic = settings.topic("purchase")
        report["emit_interval_s"] = settings.emit_interval_s
        report["bare_consumer_eps"] = bare_consumer(settings, topic, n)
        tcpu: dict[str, float] = {}
        report["trivial_faust_eps"] = trivial_agent(settings, topic, n, work, cpu=tcpu)
        report["trivial_cpu_us_per_event"] = tcpu["trivial_cpu_us_per_event"]
        # The agent above takes at most max_poll_records at once, as the worker does; Faust's
        # default (no bound) beside it says what the bound does to the framework alone.
        ucpu: dict[str, float] = {}
        unbounded = settings.model_copy(update={"max_poll_records": 0})
        report["trivial_poll_unbounded_eps"] = trivial_agent(unbounded, topic, n, work, cpu=ucpu, variant="poll0")
        report["trivial_poll_unbounded_cpu_us_per_event"] = ucpu["trivial_cpu_us_per_event"]
        report["trivial_vs_trivial_poll_unbounded"] = report["trivial_faust_eps"] / report["trivial_poll_unbounded_eps"]
        # Does consuming the stream in batches beat the per-event agent? (The question:
        # if it did, the batched agent would be the ceiling to compare with.)
        kcpu: dict[str, float] = {}
        report["trivial_take_batch"] = TAKE_BATCH
        report["trivial_take_eps"] = trivial_agent(settings, topic, n, work, cpu=kcpu, take=TAKE_BATCH)
        report["trivial_take_cpu_us_per_event"] = kcpu["trivial_cpu_us_per_event"]
        report["trivial_take_vs_trivial"] = report["trivial_take_eps"] / report["trivial_faust_eps"]
        cpu: dict[str, float] = {}
        rate, rss, disk, emitted = persona_worker(settings, n, work, cpu=cpu)
        # Where an event's time goes: the worker's own CPU, and the rest of the machine's
        # (the broker serving fetches and taking the worker's changelog, deltas and lists).
        report["persona_worker_cpu_us_per_event"] = cpu["worker_cpu_us_per_event"]
        report["persona_machine_cpu_us_per_event"] = cpu["machine_cpu_us_per_event"]
        report["persona_eps"] = rate  # the blend ranker: the default, what production runs
        report["persona_recommendations"] = emitted
        report["rss_bytes_small"] = rss  # the throughput run's few profiles: the fixed cost
        report["disk_bytes_small"] = disk
        brate, _, _, bemitted = persona_worker(base_settings, n, work)
        report["persona_baseline_eps"] = brate
        report["persona_baseline_recommendations"] = bemitted
        report["blend_vs_baseline"] = rate / brate
        report["blend_vs_baseline_goal"] = GOAL_BLEND_VS_BASELINE
        if against or against_set:
            # The same events through an older commit's worker (or this one with other settings):
            # a change's before/after in one run. The worker reads every setting from this run's
            # environment (deploy.workers.settings_env), the older commit's defaults never: a
            # changed default is compared with `against_set` holding the old value.
            extra = {"ranker": "blend", **(against_set or {})}
            code = source_tree(against, work / "against") if against else REPO
            on = batch if against_batched else 0
            report["against_on"] = f"batch records of up to {batch} events" if on else "records of one event"
            tree_first: Run = (rate, cpu["worker_cpu_us_per_event"], cpu["machine_cpu_us_per_event"], emitted)
            if on:
                tree_first = _compared_worker(bs, f"{tag}t", work, catalog, behaviour, REPO, {"ranker": "blend"}, batch=on)
            other = _compared_worker(bs, f"{tag}o", work, catalog, behaviour, code, extra, batch=on)
            orate, ocpu, _, oemitted = other
            report["persona_against_worker_cpu_us_per_event"] = ocpu
            report["against"] = "this tree" if not against else subprocess.run(
                ["git", "rev-parse", "--short", against], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
            if against_set:
                report["against_settings"] = ", ".join(f"{k}={v}" for k, v in against_set.items())
            report["persona_against_eps"] = orate
            report["persona_against_recommendations"] = oemitted
            report["persona_vs_against"] = tree_first[0] / orate
            if pairs > 1:
                report.update(against_pairs(
                    (tree_first, other),
                    pairs,
                    lambda i, which: _compared_worker(
                        bs, f"{tag}p{i}{which}", work, catalog, behaviour,
                        REPO if which == "t" else code, {"ranker": "blend"} if which == "t" else extra, batch=on,
                    ),
                ))
        if batch > 1:
            report.update(batched(bs, f"{tag}k", work, catalog, behaviour, batch, rate, report["trivial_faust_eps"]))
        report["persona_vs_trivial"] = rate / report["trivial_faust_eps"]
        report["persona_vs_trivial_take"] = rate / report["trivial_take_eps"]
        report["persona_vs_bare"] = rate / report["bare_consumer_eps"]
        report["trivial_vs_bare"] = report["trivial_faust_eps"] / report["bare_consumer_eps"]

        if profiles:  # 0: no footprint run
            ftag = f"{tag}f"
            fsettings = bench_settings(bs, ftag, work / "state-footprint")
            ensure_topics(fsettings)
            fcat, fbeh = synthetic_profiles(profiles)
            publish(fsettings, fcat)
            publish(fsettings, fbeh)
            frate, frss, fdisk, _ = persona_worker(fsettings, len(fbeh), work)
            # Every event a new user's first: the rate a burst of newcomers gets. Its memory is
            # reported as measured; per 100k profiles needs a fixed-cost run of the same kind of
            # users to subtract (`persona bench memory`): the MovieLens run above is not one (its
            # scoring state is larger than 100k one-purchase users' state, seen in bench all).
            report["footprint_profiles"] = profiles
            report["footprint_eps"] = frate
            report["footprint_vs_persona_eps"] = frate / rate
            report["rss_bytes_footprint_run"] = frss
            report["disk_bytes_footprint_run"] = fdisk
    report["load_1m_end"] = os.getloadavg()[0]
    return report


def batched(
    bs: str, tag: str, work: Path, catalog: list[Event], behaviour: list[Event], batch: int, per_event_rate: float,
    trivial_rate: float,
) -> dict[str, Any]:
    """The same events as batch records (``state.batch``, ``persona produce --batch``): the worker
    (blend) and the trivial agent counting the events inside the records, on a topic of their own.
    Against the trivial agent on records of one event (the issue's baseline) and on these."""
    settings = bench_settings(bs, tag, work / "state-batched", ranker="blend")
    ensure_topics(settings)
    publish(settings, catalog)
    publish(settings, behaviour, batch=batch)
    n, topic = len(behaviour), settings.topic("purchase")
    out: dict[str, Any] = {"batch": batch}
    tcpu: dict[str, float] = {}
    out["trivial_batched_eps"] = trivial_agent(settings, topic, n, work, cpu=tcpu, variant="batched", count_events=True)
    out["trivial_batched_cpu_us_per_event"] = tcpu["trivial_cpu_us_per_event"]
    cpu: dict[str, float] = {}
    counts: dict[str, float] = {}
    rate, _, _, emitted = persona_worker(settings, n, work, cpu=cpu, batching=counts)
    out["persona_batched_eps"] = rate
    out["persona_batched_worker_cpu_us_per_event"] = cpu["worker_cpu_us_per_event"]
    out["persona_batched_recommendations"] = emitted
    # Records of one event are not batches: the mean is over the records that were.
    out["batch_records"] = int(counts["records"])
    out["batch_events_in_them"] = int(counts["events"])
    out["events_per_record"] = n / (counts["records"] + (n - counts["events"]))
    out["persona_batched_vs_trivial"] = rate / trivial_rate
    out["persona_batched_vs_trivial_batched"] = rate / out["trivial_batched_eps"]
    out["persona_batched_vs_persona"] = rate / per_event_rate
    return out


def render_rankers(report: dict[str, Any], console: Console) -> None:
    """The two workers side by side: events/s, messages emitted, and the ratio against its goal."""
    from rich.table import Table

    table = Table(title=f"one worker per ranker, same events ({report['data']}), emit interval {report['emit_interval_s']:g} s")
    for col in ("ranker", "events/s", "recommendations emitted"):
        table.add_column(col, justify="left" if col == "ranker" else "right")
    table.add_row("blend (full)", f"{report['persona_eps']:,.0f}", f"{report['persona_recommendations']:,}")
    table.add_row("baseline", f"{report['persona_baseline_eps']:,.0f}", f"{report['persona_baseline_recommendations']:,}")
    console.print(table)
    ratio, goal = report["blend_vs_baseline"], report["blend_vs_baseline_goal"]
    console.print(f"events/s blend / baseline = {ratio:.3f} (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})")
