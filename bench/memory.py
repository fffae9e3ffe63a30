"""``persona bench memory``: resident memory and disk per 100k profiles, before and after the
byte-bounded profile cache and the bounded RocksDB memory, in the same run on the same broker.

Each configuration runs a worker twice on synthetic users with one purchase each (the
footprint run of ``bench stream``): once with ``--small`` users (the fixed cost: interpreter,
Faust, catalog, scoring state) and once with ``--profiles`` users; the difference, scaled, is
the memory per 100k profiles. "before" is the previous setting: a cache bounded at 50,000
entries (about 107 MB of one-event profiles) and Faust's RocksDB defaults (64 MiB memtables,
a 2 GiB block cache per partition); "after" is the current defaults. Without ``--registry``
profiles carry behaviour only (no encoder is loaded, so no interest vectors: say so when
quoting it); with it, each synthetic item has its own title, the worker encodes the catalog
before the purchases are published, and every profile carries a 384-d interest vector.

The large run also samples the worker's RSS every twentieth of its users: the slope over the
second half of that curve (``rss_bytes_per_100k_tail``) is what another 100k users cost once
the bounded parts (profile cache, memtables, block cache, live-quality lists) are full, the
figure that says whether a million users fit. ``--cache-bytes`` adds runs of the current
defaults with other profile cache settings, to show the RSS follows the setting, not the users;
``--poll-records`` adds runs with other bounds on the records taken from the Kafka client at once
(0: none, Faust's default). The large run drains a backlog (every purchase is published before
the worker starts), so without that bound the read-ahead is in its RSS.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import bench_settings, broker, workdir
from bench.stream import persona_worker, synthetic_profiles
from stream_app.producer import publish
from stream_app.topics import ensure_topics

#: The old entry bound (50,000) in bytes of one-event profiles (2,134 B decoded each, measured).
BEFORE: dict[str, Any] = {
    "profile_cache_bytes": 50_000 * 2_134,
    "rocksdb_write_buffer_bytes": 64 * 1024 * 1024,
    "rocksdb_block_cache_bytes": 2 * 1024**3,
    # Faust's default: every record fetched so far handed out at once (a backlog's prefetch).
    "max_poll_records": 0,
}


def tail_slope(curve: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> int | None:
    """RSS bytes per 100k events over the second half of an (events, RSS) curve: from the
    first sample at or past half the last one's events to the last. None with too few samples."""
    if len(curve) < 2:
        return None
    end_n, end_rss = curve[-1]
    mid_n, mid_rss = next((n, r) for n, r in curve if n >= end_n / 2)
    if end_n == mid_n:
        mid_n, mid_rss = curve[-2]
    return int((end_rss - mid_rss) * 100_000 / (end_n - mid_n))


def partial_writer(path: Path | None, report: dict[str, Any], name: str, rss_fixed: int) -> Callable[[int, int], None] | None:
    """What ``run`` hands the large run's drain: at each RSS sample, ``path`` gets the report so
    far with this configuration's fixed cost and its curve up to that sample; written to a
    temporary file first, never half a document."""
    if path is None:
        return None
    curve: list[tuple[int, int]] = []

    def write(users: int, rss: int) -> None:
        curve.append((users, rss))
        doc = {**report, "partial": True, name: {"rss_bytes_fixed": rss_fixed, "rss_curve": list(curve)}}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(path)

    return write


def per_100k(small: dict[str, float], large: dict[str, float], scale: float) -> dict[str, int]:
    """Growth of each part from the small run to the large, scaled to 100k profiles, and
    ``accounted``: their sum."""
    out = {part: int((large.get(part, 0.0) - small.get(part, 0.0)) * scale) for part in large}
    out["accounted"] = sum(out.values())
    return out


def _footprint(
    bootstrap: str, work: Path, tag: str, users: int, overrides: dict[str, Any], registry: Path | None = None,
    curve: list[tuple[int, int]] | None = None, memory: dict[str, float] | None = None,
    on_sample: Callable[[int, int], None] | None = None,
) -> tuple[float, int, int]:
    # Gauges sampled every second, so the ones read at the end are the end's (bench.stream.MEMORY_GAUGES).
    settings = bench_settings(bootstrap, tag, work / f"state-{tag}", ops_sample_s=1.0, **overrides)
    if registry is not None:
        settings = settings.model_copy(update={"model_registry": registry})
    ensure_topics(settings)
    catalog, behaviour = synthetic_profiles(users, titled=registry is not None)
    publish(settings, catalog)
    if registry is None:
        publish(settings, behaviour)
        rate, rss, disk, _ = persona_worker(settings, len(behaviour), work, curve=curve, memory=memory, on_sample=on_sample)
    else:
        # Every purchase adds its item's text vector to the buyer's interest: the full profile.
        rate, rss, disk, _ = persona_worker(
            settings, len(behaviour), work, vectors_first=len(catalog), then=behaviour, curve=curve, memory=memory,
            on_sample=on_sample,
        )
    return rate, rss, disk


def run(
    bootstrap: str | None, profiles: int = 100_000, small: int = 1_000, configs: tuple[str, ...] = ("before", "after"),
    registry: Path | None = None, cache_bytes: tuple[int, ...] = (), partial: Path | None = None,
    poll_records: tuple[int, ...] = (),
) -> dict[str, Any]:
    """``configs``: "before" and/or "after" (a million-user run of the current defaults alone).
    ``registry``: an encoder registry; the workers load it and every profile carries an interest
    vector (both runs: the encoder's own memory is in the fixed cost, not per profile).
    ``cache_bytes``: also run the current defaults with each of these profile cache settings
    (reported as ``cache-<bytes>``). ``poll_records``: also run the current defaults with each
    of these ``max_poll_records`` (``poll-<n>``; 0 is no bound). ``partial``: rewritten with what was measured so far at
    every RSS sample of a large run (a million users take over an hour: a stopped run keeps
    its fixed cost and its curve)."""
    report: dict[str, Any] = {"cpus": os.cpu_count() or 0, "profiles": profiles, "small": small, "load_1m_start": os.getloadavg()[0],
                              "interest_vectors": registry is not None}
    scale = 100_000 / (profiles - small)
    with broker(bootstrap) as bs, workdir("persona-bench-memory-") as work:
        tag = f"mem{int(time.time())}"
        from stream_app.settings import Settings

        defaults = Settings()
        after = {k: getattr(defaults, k) for k in BEFORE}
        runs = [(name, o) for name, o in (("before", BEFORE), ("after", after)) if name in configs]
        runs += [(f"cache-{b}", {**after, "profile_cache_bytes": b}) for b in cache_bytes]
        runs += [(f"poll-{n}", {**after, "max_poll_records": n}) for n in poll_records]
        for name, overrides in runs:
            parts_small: dict[str, float] = {}
            _, rss_small, disk_small = _footprint(bs, work, f"{tag}{name}s", small, overrides, registry, memory=parts_small)
            curve: list[tuple[int, int]] = []
            parts: dict[str, float] = {}
            sampled = partial_writer(partial, report, name, rss_small)
            rate, rss, disk = _footprint(bs, work, f"{tag}{name}l", profiles, overrides, registry, curve, parts, sampled)
            report[name] = {
                "settings": overrides,
                "rss_bytes_fixed": rss_small,
                "rss_bytes_run": rss,
                "rss_bytes_per_100k_profiles": int(max(0, rss - rss_small) * scale),
                "rss_bytes_per_100k_tail": tail_slope(curve),
                "rss_curve": curve,
                "disk_bytes_per_100k_profiles": int(max(0, disk - disk_small) * scale),
                "events_per_s": rate,
                # What the worker's own gauges account for, at the end of each run, and their
                # growth per 100k profiles: the rest of the RSS growth is what they do not see.
                "parts_bytes_fixed": parts_small,
                "parts_bytes_run": parts,
                "parts_bytes_per_100k_profiles": per_100k(parts_small, parts, scale),
            }
    if "before" in report and "after" in report:
        before, after_ = report["before"]["rss_bytes_per_100k_profiles"], report["after"]["rss_bytes_per_100k_profiles"]
        report["rss_after_vs_before"] = after_ / max(1, before)
        report["eps_after_vs_before"] = report["after"]["events_per_s"] / report["before"]["events_per_s"]
    report["goal_rss_bytes_per_100k"] = 50 * 1000 * 1000
    report["load_1m_end"] = os.getloadavg()[0]
    return report
