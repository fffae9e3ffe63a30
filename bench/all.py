"""``persona bench all``: every benchmark in one run, one JSON and one Markdown report in
``var/bench/``, each figure next to the baseline it was measured against in the same run,
with the machine's cores, load and the settings used.

Parts: ``stream`` (one worker against a trivial Faust agent and a bare consumer, the blend
ranker against the baseline, the footprint run), ``ranking`` (in process), ``memory`` (before
and after the bounded caches), ``encoder`` (the encode path against bare onnxruntime), ``padding`` (a token budget per
inference call against a row count alone),
``replication`` (in process: what each worker pays per event of the others, and the
scale-out ceiling it sets), ``restore`` (through the broker: a worker's start-up catch-up from the
whole deltas topic against the latest snapshot and the deltas after it), ``reviews`` (the review pipeline
against the encoder alone), ``load`` (event->emit latency at
offered loads with 10% reviews, against the offered rate) and ``scale`` (1, 2, 4 workers on 8
partitions against one, the pause when a worker joins or leaves, and when one is killed and
restarted as a dynamic against a static member), ``new-users`` (in
process: a new user's ranking against a MovieLens repeat user's, both with item vectors). A part that cannot run here (no
encoder registry, no dataset) is recorded with the reason, never left out silently.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTS = (
    "stream", "ranking", "replication", "restore", "memory", "catalog", "encoder", "padding", "reviews", "load", "scale", "new-users",
)


def _settings_summary() -> dict[str, Any]:
    from stream_app.settings import Settings

    s = Settings()
    keys = ("partitions", "commit_every", "commit_interval_s", "emit_interval_s", "ranker", "top_k", "profile_cache_bytes",
            "rocksdb_write_buffer_bytes", "rocksdb_block_cache_bytes", "review_batch", "model_threads", "model_device")
    return {k: getattr(s, k) for k in keys if hasattr(s, k)}


def stream_worker_us(parts: dict[str, Any]) -> float | None:
    """The stream part's worker CPU per event, when it ran (before): ``C`` of the replication
    part's scaling projection, the whole worker's cost rather than the pipeline's alone."""
    value = (parts.get("stream", {}).get("result") or {}).get("persona_worker_cpu_us_per_event")
    return float(value) if value else None


def new_user_costs(measure: Callable[..., dict[str, Any]], quick: bool) -> dict[str, Any]:
    """The ``new-users`` part: ``bench new-users``'s ms per ranking for a burst of new users and
    for the MovieLens replay's repeat users (``PERSONA_DATA_DIR`` must hold MovieLens), both
    with random item vectors in this tree, and the first over the second."""
    n = 300 if quick else 1_500
    burst = measure(rankings=n)
    repeat = measure(data="movielens", rankings=n)
    return {"new_users": burst, "movielens": repeat, "new_vs_repeat": burst["mean_ms"] / repeat["mean_ms"]}


def run(parts: tuple[str, ...], bootstrap: str | None, data_dir: Path, registry: Path, quick: bool) -> dict[str, Any]:
    from bench import catalog, encoder, load, memory, new_users, padding, ranking, replication, restore, reviews, scale, stream

    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count() or 0, "platform": platform.platform(), "python": platform.python_version(),
                    "load_1m_start": os.getloadavg()[0]},
        "quick": quick,
        "settings": _settings_summary(),
        "parts": {},
    }

    jobs: dict[str, Callable[[], Any]] = {
        "stream": lambda: stream.run(bootstrap, data_dir, 20_000 if quick else None, 10_000 if quick else 100_000),
        "ranking": lambda: ranking.run(data_dir, rankings=200 if quick else 2_000, eval_events=3_000 if quick else 30_000),
        "memory": lambda: memory.run(bootstrap, profiles=20_000 if quick else 100_000),
        "catalog": lambda: catalog.run(data_dir, items=20_000 if quick else 100_000),
        "encoder": lambda: [
            {**r.__dict__, "ratio": r.ratio} for r in encoder.run(registry, texts=128 if quick else 1024, export_missing=False)
        ],
        "padding": lambda: [
            {**r.__dict__, "ratio": r.ratio} for r in padding.run(registry, texts=128 if quick else 1024, export_missing=False)
        ],
        "reviews": lambda: reviews.run(bootstrap, data_dir, registry, reviews=300 if quick else 2_000, export_missing=False),
        "load": lambda: load.run(
            bootstrap, data_dir, registry, levels=(100, 500) if quick else load.LEVELS, seconds=10.0 if quick else 30.0
        ),
        "scale": lambda: scale.run(bootstrap, data_dir, 20_000 if quick else None, (1, 2) if quick else (1, 2, 4)),
        "replication": lambda: replication.run(data_dir, 20_000 if quick else None, stream_worker_us(report["parts"])),
        "new-users": lambda: new_user_costs(new_users.measure, quick),
        "restore": lambda: restore.run(bootstrap, data_dir, 20_000 if quick else None, 0.9),
    }
    for part in parts:
        started = time.monotonic()
        try:
            result: Any = jobs[part]()
            report["parts"][part] = {"ok": True, "seconds": round(time.monotonic() - started, 1), "result": result}
        except Exception as exc:  # one part failing must not lose the others' figures
            report["parts"][part] = {"ok": False, "seconds": round(time.monotonic() - started, 1),
                                     "not_measured": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
    report["machine"]["load_1m_end"] = os.getloadavg()[0]
    return report


def _ratios(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(part, figure, value): the ratios against same-run baselines, for the Markdown summary."""
    rows: list[tuple[str, str, str]] = []
    parts = report["parts"]
    s = parts.get("stream", {}).get("result") or {}
    for key in (
        "persona_vs_trivial", "persona_vs_trivial_take", "trivial_take_vs_trivial", "persona_vs_bare", "blend_vs_baseline",
        "trivial_vs_bare", "persona_vs_against", "trivial_vs_trivial_poll_unbounded",
        # The same events as batch records (state.batch): against the per-event trivial agent,
        # the one on the batch records, and the worker on records of one event.
        "persona_batched_vs_trivial", "persona_batched_vs_trivial_batched", "persona_batched_vs_persona", "events_per_record",
    ):
        if key in s:
            rows.append(("stream", key, f"{s[key]:.3f}"))
    for key in (
        "persona_eps", "trivial_faust_eps", "trivial_take_eps", "trivial_poll_unbounded_eps", "bare_consumer_eps", "footprint_eps",
        "rss_bytes_footprint_run", "persona_batched_eps", "trivial_batched_eps",
    ):
        if key in s:
            rows.append(("stream", key, f"{s[key]:,.0f}"))
    if "footprint_vs_persona_eps" in s:
        rows.append(("stream", "footprint_vs_persona_eps (new users / repeat users)", f"{s['footprint_vs_persona_eps']:.3f}"))
    # CPU per event over the same drains: what the worker itself spends, apart from the broker.
    for key in (
        "persona_worker_cpu_us_per_event", "persona_machine_cpu_us_per_event", "trivial_cpu_us_per_event",
        "trivial_take_cpu_us_per_event", "trivial_poll_unbounded_cpu_us_per_event", "persona_batched_worker_cpu_us_per_event",
        "trivial_batched_cpu_us_per_event",
    ):
        if key in s:
            rows.append(("stream", key, f"{s[key]:,.1f}"))
    if s.get("persona_worker_cpu_us_per_event") and "trivial_cpu_us_per_event" in s:
        ratio = s["trivial_cpu_us_per_event"] / s["persona_worker_cpu_us_per_event"]
        rows.append(("stream", "trivial/persona CPU per event", f"{ratio:.3f}"))
    r = parts.get("replication", {}).get("result") or {}
    if r:
        rows.append(("replication", "own event / another worker's delta, in process (µs)", f"{r['own_us']:.1f} / {r['replicated_us']:.1f}"))
        rows.append(("replication", "replicated_vs_own", f"{r['replicated_vs_own']:.3f}"))
        rows.append(("replication", "group ceiling, any number of workers (events/s)", f"{r['ceiling_eps']:,.0f}"))
        curve = ", ".join(f"{p['workers']}: {p['speedup']:.2f}" for p in r["projection"])
        rows.append(("replication", f"projected speedup by workers (C {r['worker_us']:.0f} µs, {r['worker_us_from']})", curve))
        a = r.get("agreement")
        if a:
            rows.append(("replication", "another interleaving of the same deltas: co-occurrence rows differing; lists identical "
                         "/ same items / users", f"{a['rows_differing']:,} of {a['rows']:,}; {a['lists_identical']:,} / "
                         f"{a['lists_same_items']:,} / {a['users']:,}"))
    r = parts.get("restore", {}).get("result") or {}
    if r:
        rows.append(("restore", "start-up catch-up: whole deltas topic / snapshot + last 10% (s)",
                     f"{r['full_replay_s']:.2f} / {r['snapshot_restore_s']:.2f}"))
        rows.append(("restore", "snapshot / whole topic", f"{r['restore_vs_full']:.3f}"))
        if "snapshot_max_loop_stall_s" in r:
            rows.append(("restore", "longest event-loop stall: whole topic / snapshot; the restore in one call (s)",
                         f"{r['full_replay_max_loop_stall_s']:.3f} / {r['snapshot_max_loop_stall_s']:.3f}; {r['restore_in_one_go_s']:.3f}"))
    m = parts.get("memory", {}).get("result") or {}
    for name in ("before", "after"):
        if name in m:
            rows.append(("memory", f"{name} RSS per 100k profiles (MB)", f"{m[name]['rss_bytes_per_100k_profiles'] / 1e6:.1f}"))
            tail = m[name].get("rss_bytes_per_100k_tail")
            if tail is not None:
                rows.append(("memory", f"{name} RSS per 100k further profiles, second half of the run (MB)", f"{tail / 1e6:.1f}"))
            parts_grown = m[name].get("parts_bytes_per_100k_profiles") or {}
            if parts_grown:
                shown = ", ".join(f"{p} {b / 1e6:.1f}" for p, b in parts_grown.items())
                rows.append(("memory", f"{name} per 100k profiles, by the worker's own gauges (MB)", shown))
    if "rss_after_vs_before" in m:
        rows.append(("memory", "rss_after_vs_before", f"{m['rss_after_vs_before']:.3f}"))
    c = parts.get("catalog", {}).get("result") or {}
    for name, row in (c.get("parts") or {}).items():
        rows.append(("catalog", f"{name}: MB per 100k items", f"{row['bytes_per_100k_items'] / 1e6:.1f}"))
    for key in ("catalog_vs_catalog_text", "vectors_vs_vectors_f32", "content_f16_vs_content_f32", "worker_vs_worker_before"):
        if key in c:
            rows.append(("catalog", key, f"{c[key]:.3f}"))
    for row in parts.get("encoder", {}).get("result") or []:
        rows.append(("encoder", f"{row.get('variant')} batch {row.get('batch')}: path/bare", f"{row.get('ratio', float('nan')):.3f}"))
    for row in parts.get("padding", {}).get("result") or []:
        figure = f"{row.get('variant')} budget {row.get('budget')}: texts/s budget/rows alone"
        rows.append(("padding", figure, f"{row.get('ratio', float('nan')):.3f}"))
    for row in parts.get("reviews", {}).get("result") or []:
        rows.append(("reviews", f"{row.get('variant')}: pipeline/encoder", f"{row.get('ratio', float('nan')):.3f}"))
    for row in (parts.get("load", {}).get("result") or {}).get("levels", []):
        if "not_run" in row:
            rows.append(("load", f"{row['offered_eps']}/s offered", row["not_run"]))
        else:
            p50, p99 = row.get("event_p50_s", float("nan")), row.get("event_p99_s", float("nan"))
            rows.append(("load", f"{row['offered_eps']}/s offered: applied/offered, event p50/p99 s",
                         f"{row['applied_vs_offered']:.3f}, {p50:.3f}/{p99:.3f}"))
    nu = parts.get("new-users", {}).get("result") or {}
    if nu:
        rows.append(("new-users", "ms per ranking: a new user / a MovieLens repeat user (in process)",
                     f"{nu['new_users']['mean_ms']:.3f} / {nu['movielens']['mean_ms']:.3f} ({nu['new_vs_repeat']:.3f})"))
    sc = parts.get("scale", {}).get("result") or {}
    for row in sc.get("rows", []):
        rows.append(("scale", f"{row['workers']} workers: events/s (speedup vs 1)", f"{row['eps']:,.0f} ({row['speedup']:.2f})"))
    if "rebalance" in sc:
        rb = sc["rebalance"]
        join, leave = rb.get("join_pause_s", float("nan")), rb.get("leave_pause_s", float("nan"))
        rows.append(("scale", "pause after a join / a leave (s)", f"{join:.1f} / {leave:.1f}"))
    for kind, rs in (sc.get("restart") or {}).items():
        rows.append(("scale", f"a worker killed and restarted, {kind} members: group pause / back after (s)",
                     f"{rs.get('restart_pause_s', float('nan')):.1f} / {rs.get('back_s', float('nan')):.1f}"))
    for kind, rs in (sc.get("stop") or {}).items():
        rows.append(("scale", f"a worker stopped for good, {kind}: group pause (s)", f"{rs.get('stop_pause_s', float('nan')):.1f}"))
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# persona bench all, {report['started']}", "",
             f"{m['cpus']} cores, {m['platform']}, Python {m['python']}; load {m['load_1m_start']:.1f} -> {m.get('load_1m_end', 0):.1f}"
             + ("; QUICK (reduced sizes)" if report["quick"] else ""), "",
             "| part | figure (ratio: against a baseline measured in this run) | value |", "|---|---|---|"]
    lines += [f"| {p} | {f} | {v} |" for p, f, v in _ratios(report)]
    missing = [(p, r["not_measured"]) for p, r in report["parts"].items() if not r["ok"]]
    if missing:
        lines += ["", "Not measured:", ""] + [f"- {p}: {why}" for p, why in missing]
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items())]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"all-{time.strftime('%Y%m%d-%H%M%S')}"
    js, md = stem.with_suffix(".json"), stem.with_suffix(".md")
    js.write_text(json.dumps(report, indent=2, default=str))
    md.write_text(markdown(report))
    return js, md
