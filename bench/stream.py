"""``persona bench stream``: behaviour-update throughput of one worker, against baselines
measured in the same run on the same topic and broker.

* (a) a trivial Faust agent that only counts events: the framework's own ceiling;
* (b) a bare confluent-kafka consumer draining the topic;
* Persona: decode, idempotent profile update in RocksDB, coalesced scoring and emission.

Then a footprint run: one purchase for each of ``--profiles`` synthetic users, and the
worker's resident memory and on-disk state, scaled to bytes per 100k profiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer

from state.events import Event, Item, Purchase, User
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.topics import ensure_topics

if TYPE_CHECKING:
    from deploy.workers import WorkerProcess

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """The given broker, or a local one started for the run and stopped after it."""
    if bootstrap:
        yield bootstrap
        return
    from deploy.kafka import launcher
    from deploy.workers import free_port

    with tempfile.TemporaryDirectory(prefix="persona-bench-kafka-") as tmp:
        handle = launcher.start(port=free_port(), data_dir=Path(tmp))
        try:
            yield handle.bootstrap
        finally:
            launcher.stop(handle)


def _settings(bootstrap: str, tag: str, state: Path, **extra: Any) -> Settings:
    from deploy.workers import free_port

    return Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"{tag}.",
        app_id=f"persona-{tag}",
        state_dir=state,
        web_port=free_port(),
        # Behaviour updates only: no encoder loaded (its session alone is ~170 MB of RSS).
        model_registry=state / "no-models",
        **extra,
    )


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    from deploy.workers import settings_env

    env = dict(os.environ)
    env.update(settings_env(settings))
    env.update(extra)
    return env


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


def trivial_agent(settings: Settings, topic: str, n: int, workdir: Path) -> float:
    result = workdir / "trivial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.trivial_agent"],
        cwd=REPO,
        env=_env(settings, BENCH_TOPIC=topic, BENCH_EVENTS=str(n), BENCH_RESULT=str(result)),
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "trivial.log", "wb"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not result.exists() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"trivial agent exited {proc.returncode}; see {workdir / 'trivial.log'}")
            time.sleep(0.2)
        data = json.loads(result.read_text())
        return float(data["events"]) / float(data["last"] - data["first"])
    finally:
        _terminate(proc)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the worker runs under a supervisor)."""
    total = 0
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def drain_rate(worker: WorkerProcess, n: int, timeout: float = 900.0, **labels: str) -> float:
    """Events/s of ``worker`` until ``persona_events_total{labels}`` reaches ``n``, timed from
    the first scrape that shows any (start-up and model loading stay outside the clock)."""
    from deploy.workers import metric_sum

    first_t, first_n = 0.0, 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive:
            raise RuntimeError(f"worker exited; see {worker.log_path}")
        try:
            m = worker.metrics()
        except OSError:
            time.sleep(0.2)
            continue
        done = metric_sum(m, "persona_events_total", **labels)
        if done > 0 and not first_t:
            first_t, first_n = time.monotonic(), done
        if done >= n:
            return (done - first_n) / (time.monotonic() - first_t)
        time.sleep(0.1)
    raise RuntimeError("worker did not finish in time")


def persona_worker(settings: Settings, n: int, workdir: Path) -> tuple[float, int, int]:
    """Events/s of the Persona worker over ``n`` behaviour events, its RSS and state bytes."""
    from deploy.workers import WorkerProcess

    worker = WorkerProcess(settings, workdir / f"{settings.app_id}.log")
    try:
        rate = drain_rate(worker, n, topic=settings.topic("purchase"))
        time.sleep(2.0)  # let the last commit and compaction settle
        return rate, _rss_bytes(worker.proc.pid), _disk_bytes(settings.state_dir)
    finally:
        worker.stop()


def movielens_events(data_dir: Path, limit: int | None) -> tuple[list[Event], list[Event]]:
    from stream_app.sources import read_events

    events = list(read_events("movielens", data_dir / "movielens-100k"))
    catalog: list[Event] = [e for e in events if isinstance(e, (Item, User))]
    behaviour: list[Event] = [e for e in events if isinstance(e, Purchase)]
    behaviour = behaviour[:limit]
    return catalog, behaviour


def synthetic_profiles(n: int, items: int = 1000) -> tuple[list[Event], list[Event]]:
    catalog: list[Event] = [
        Item(event_id=f"syn-i-{i}", ts=0.0, item_id=f"syn-i-{i}", categories=[f"syn-cat-{i % 20}"]) for i in range(items)
    ]
    behaviour: list[Event] = [
        Purchase(event_id=f"syn-p-{u}", ts=1_700_000_000.0 + u, user_id=f"syn-u-{u}", item_id=f"syn-i-{(u * 7919) % items}")
        for u in range(n)
    ]
    return catalog, behaviour


def run(bootstrap: str | None, data_dir: Path, events: int | None, profiles: int = 100_000) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with broker(bootstrap) as bs, tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        work = Path(tmp)
        tag = f"bench{int(time.time())}"
        settings = _settings(bs, tag, work / "state")
        ensure_topics(settings)
        if (data_dir / "movielens-100k").is_dir():
            catalog, behaviour = movielens_events(data_dir, events)
            report["data"] = f"MovieLens-100k purchases ({len(behaviour)})"
        else:
            catalog, behaviour = synthetic_profiles(events or 100_000)
            report["data"] = f"SYNTHETIC purchases ({len(behaviour)})"
        publish(settings, catalog)
        publish(settings, behaviour)
        n = len(behaviour)
        topic = settings.topic("purchase")
        report["bare_consumer_eps"] = bare_consumer(settings, topic, n)
        report["trivial_faust_eps"] = trivial_agent(settings, topic, n, work)
        rate, rss, disk = persona_worker(settings, n, work)
        report["persona_eps"] = rate
        report["rss_bytes_small"] = rss  # the throughput run's few profiles: the fixed cost
        report["disk_bytes_small"] = disk
        report["persona_vs_trivial"] = rate / report["trivial_faust_eps"]
        report["persona_vs_bare"] = rate / report["bare_consumer_eps"]
        report["trivial_vs_bare"] = report["trivial_faust_eps"] / report["bare_consumer_eps"]

        ftag = f"{tag}f"
        fsettings = _settings(bs, ftag, work / "state-footprint")
        ensure_topics(fsettings)
        fcat, fbeh = synthetic_profiles(profiles)
        publish(fsettings, fcat)
        publish(fsettings, fbeh)
        frate, frss, fdisk = persona_worker(fsettings, len(fbeh), work)
        scale = 100_000 / profiles
        report["footprint_profiles"] = profiles
        report["footprint_eps"] = frate
        report["rss_bytes_footprint_run"] = frss
        report["rss_bytes_per_100k_profiles"] = int(max(0, frss - rss) * scale)
        report["disk_bytes_per_100k_profiles"] = int(fdisk * scale)
    return report
