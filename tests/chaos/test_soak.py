"""The soak: minutes of MovieLens-100k under a killer schedule, then the consistency check.

Not in ``make test`` nor the heavy tier: ``make soak`` (20 minutes; ``SOAK_MINUTES=N`` for
another length) runs it. Two workers in one group on a broker of the test's own. The replay is
spread over 80% of the run. A killer stops a random worker every 30-90 s (SIGTERM, a clean
stop, or SIGKILL of its whole process group, like a lost host) and starts it again 2-8 s later
with the same state directory; at half time the broker is SIGKILLed and restarted. After the
run: every record delivered, the group drained, every profile equal to the independent
recomputation and every user's last recommendation at the final profile version.

The RSS of each worker's processes (supervisor and child) is sampled every 10 s; the report
(printed, and written to ``var/soak/``) gives per worker incarnation its RSS at start and end
and the slope over its life (MB/min), so a leak shows as a slope that does not flatten.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream_app.producer import publish
from stream_app.topics import ensure_topics
from tests.chaos.bouncing import bounce, own_broker_settings
from tests.movielens_replay import check_against_truth, check_recommendations, input_topics, publish_catalog, split_catalog
from tests.support import REPO, WorkerProcess, free_port, wait_drained

MINUTES = float(os.environ.get("PERSONA_SOAK_MINUTES", "0") or 0)
#: Up to this many of a user's events per record (``persona produce --batch``; 1: one event per
#: record): the kills then also land inside batch records (state.batch).
BATCH = int(os.environ.get("PERSONA_SOAK_BATCH", "1") or 1)

pytestmark = [
    pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow, pytest.mark.soak,
    pytest.mark.skipif(MINUTES <= 0, reason="the soak runs with make soak (PERSONA_SOAK_MINUTES)"),
    pytest.mark.timeout(int(MINUTES * 60 + 1_500)),
]


def _rss_mb(pid: int) -> float:
    """Resident memory of every process in ``pid``'s process group (the supervisor and its
    worker child), MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
            if pgrp == pid:
                rss_pages = int((entry / "statm").read_text().split()[1])
                total += rss_pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e6


def test_soak_under_a_killer_schedule(
    own_broker: tuple[int, Path], worker_factory: Callable[..., WorkerProcess], data_dir: Path, tmp_path: Path
) -> None:
    port, data = own_broker
    rng = random.Random(11)
    duration = MINUTES * 60
    settings = own_broker_settings(port, "soak", tmp_path, data_dir)
    ensure_topics(settings)
    catalog, rest = split_catalog(data_dir)
    publish_catalog(settings, catalog)
    slots = [{"state_dir": tmp_path / f"state-{n}", "web_port": free_port()} for n in range(2)]
    workers = [worker_factory(settings, allow_restarts=True, **slot) for slot in slots]
    for w in workers:
        w.wait_ready(timeout=180)

    started = time.monotonic()
    delivered: Counter[str] = Counter()
    failure: list[BaseException] = []
    rate = len(rest) / (0.8 * duration)

    def produce() -> None:
        try:
            delivered.update(publish(settings, rest, rate=rate, batch=BATCH))
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    samples: list[tuple[float, int, int, float]] = []  # (minute, worker slot, incarnation, RSS MB)
    incarnation = [0, 0]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(10.0):
            for n, w in enumerate(workers):
                if w.alive:
                    samples.append(((time.monotonic() - started) / 60, n, incarnation[n], _rss_mb(w.proc.pid)))

    producer = threading.Thread(target=produce)
    sampler = threading.Thread(target=sample, daemon=True)
    producer.start()
    sampler.start()
    kills: list[str] = []
    bounced = False
    next_kill = started + rng.uniform(30, 90)
    while time.monotonic() - started < duration:
        now = time.monotonic()
        if not bounced and now - started >= duration / 2:
            stopped_at, back_at = bounce(port, data, signal.SIGKILL)
            kills.append(f"{(now - started) / 60:.1f} min: broker SIGKILL, back after {back_at - stopped_at:.1f} s")
            bounced = True
        elif now >= next_kill:
            n = rng.randrange(len(workers))
            how = rng.choice([signal.SIGTERM, signal.SIGKILL])
            if how == signal.SIGTERM:
                workers[n].stop(timeout=60)
            else:
                workers[n].kill()
            time.sleep(rng.uniform(2, 8))
            workers[n] = worker_factory(settings, allow_restarts=True, **slots[n])
            incarnation[n] += 1
            kills.append(f"{(now - started) / 60:.1f} min: worker {n} {how.name}")
            next_kill = time.monotonic() + rng.uniform(30, 90)
        time.sleep(0.5)
    producer.join()
    assert not failure, failure
    assert sum(delivered.values()) == len(rest)
    wait_drained(settings, input_topics(settings), workers, timeout=900)
    drained_after = (time.monotonic() - started) / 60
    stop_sampling.set()
    for w in workers:
        assert w.stop(timeout=60) == 0

    profiles = check_against_truth(settings, data_dir)
    check_recommendations(settings, profiles, sorted(profiles))

    trend = []
    for n in range(len(workers)):
        for inc in range(incarnation[n] + 1):
            rows = [(m, rss) for m, slot, i, rss in samples if slot == n and i == inc]
            if len(rows) >= 3:
                minutes, rss = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
                slope = float(np.polyfit(minutes, rss, 1)[0]) if minutes[-1] - minutes[0] >= 1 else float("nan")
                trend.append({
                    "worker": n, "incarnation": inc, "from_min": round(float(minutes[0]), 1), "to_min": round(float(minutes[-1]), 1),
                    "rss_first_mb": round(float(rss[0]), 1), "rss_last_mb": round(float(rss[-1]), 1),
                    "rss_max_mb": round(float(rss.max()), 1), "slope_mb_per_min": round(slope, 2),
                })
    report = {"minutes": MINUTES, "events": len(rest), "profiles_checked": len(profiles), "drained_after_min": round(drained_after, 1),
              "kills": kills, "rss": trend}
    out = REPO / "var" / "soak"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    print(f"\nsoak {MINUTES:g} min: {len(rest):,} events, {len(kills)} kills/bounces, drained after {drained_after:.1f} min, "
          f"{len(profiles):,} profiles equal to the recomputation")
    for line in kills:
        print("  " + line)
    for row in trend:
        print("  worker {worker} #{incarnation}: {from_min}-{to_min} min, RSS {rss_first_mb} -> {rss_last_mb} MB "
              "(max {rss_max_mb}), {slope_mb_per_min} MB/min".format(**row))
