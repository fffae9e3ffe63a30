"""``persona bench ranking``: what one ranking costs, in process (no broker, no Faust).

* latency, per ranker (``blend`` and ``baseline``): the worker's pipeline
  (:meth:`Pipeline.from_settings` over a dict store, a catalog fed by the replayed ``item``
  events and no text vectors) is fed a replay of the whole of MovieLens-100k, in the
  producer's order, and the wall time of one :meth:`Pipeline.recommend` is taken two ways:

  - ``after`` (the replay; the headline): once the replay is done, for a deterministic sample of
    ``rankings`` users (shuffled passes over all of them, seed ``seed``, so every user is
    ranked equally often), after a short untimed warm-up. The state no longer changes, so
    the popularity ranking caches stay warm: the cost of ranking itself.
  - ``interleaved``: the replay's last ``rankings`` behaviour events, each followed by a
    ranking for its user, as the worker's coalescer does on a user's first change: state
    moves between rankings, so caches are rebuilt as they are in a running worker.

  Reported: p50, p99, max and mean in milliseconds, and rankings/s (one core: the ranking is
  single-threaded Python).
* the evaluator: ``stream_app.evaluate.evaluate`` over the first ``eval_events`` events with
  the required variants (``all``, ``popularity``, ``item_knn``) and the settings' ranker;
  ``timing["rankings_per_s"]`` (rankings plus emitted messages per wall second of the whole
  replay) against the goal of :data:`GOAL_EVAL_RANKINGS_PER_S`, and ``all_per_s``.

``persona bench stream`` runs this too, after its broker runs.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from rich.console import Console
from rich.table import Table

from scoring.ranker import Scorer
from state.catalog import Catalog
from state.events import Event, EventKind, Item, kind_of
from state.profile import Origin
from stream_app.evaluate import evaluate
from stream_app.pipeline import Pipeline
from stream_app.settings import Settings
from stream_app.stores import DictStore, NoVectors, Publish

RANKERS: Final[tuple[str, ...]] = ("blend", "baseline")
#: rankings/s of the in-process evaluator on MovieLens-100k, one core
GOAL_EVAL_RANKINGS_PER_S: Final = 2_000.0
DATASET: Final = "movielens-100k"
#: the evaluator's required variants (it adds them whatever it is asked)
EVAL_VARIANTS: Final[tuple[str, ...]] = ("all", "popularity", "item_knn")
AFTER_REPLAY: Final = "after"
INTERLEAVED: Final = "interleaved"


@dataclass(frozen=True)
class Latency:
    """Wall cost of :meth:`Pipeline.recommend` for one ranker, one way (module docstring)."""

    ranker: str
    mode: str
    rankings: int
    users: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    per_s: float
    #: seconds to feed the replay (not part of the figures above; the same for both modes)
    feed_s: float


class _Replay:
    """The worker's pipeline over a dict store and a catalog, fed in the producer's order; the
    clock is the latest event time seen (as in the evaluator)."""

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None, publish: Publish | None = None) -> None:
        self.settings = settings
        self.now = 0.0
        self.catalog = catalog if catalog is not None else Catalog()
        self.store = DictStore()
        self._offsets: dict[EventKind, int] = {}
        # Emission is effectively off (an infinite interval: only each user's first change
        # emits), so feeding does not rank; what is timed is called explicitly.
        self.pipeline = Pipeline.from_settings(
            settings,
            store=self.store,
            catalog=self.catalog,
            vectors=NoVectors(),
            emit=_discard,
            emit_interval_s=math.inf,
            monotonic=self._clock,
            wall=self._clock,
            publish=publish,
        )

    def _clock(self) -> float:
        return self.now

    def feed(self, event: Event) -> str | None:
        """Apply one event (items to the catalog, as the catalog replica does); the user it
        changed, if any."""
        self.now = max(self.now, event.ts)
        if isinstance(event, Item):
            self.catalog.upsert(event)
            return None
        kind = kind_of(event)
        offset = self._offsets.get(kind, 0)
        self._offsets[kind] = offset + 1
        self.pipeline.apply_event(event, Origin(self.settings.topic(kind), 0, offset), 0, event.ts)
        return event.user_id


def _discard(key: bytes, value: bytes | None) -> None:
    pass


def load_events(data_dir: Path, limit: int | None = None) -> list[Event]:
    """MovieLens-100k in the producer's order (catalog first); ``limit`` caps the events."""
    from stream_app.sources import read_events

    folder = data_dir / DATASET
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found (set PERSONA_DATA_DIR)")
    return list(read_events("movielens", folder, limit=limit))


def sample_users(users: Sequence[bytes], n: int, seed: int) -> list[bytes]:
    """``n`` users in shuffled passes over all of ``users`` (sorted first): deterministic, and
    every user appears ``n // len(users)`` or one more times."""
    pool = sorted(users)
    if not pool or n <= 0:
        return []
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def _latency(ranker: str, mode: str, costs_ns: list[int], users: int, feed_s: float) -> Latency:
    costs = np.asarray(costs_ns, dtype=np.float64) / 1e6  # ms
    if not len(costs):
        return Latency(ranker, mode, 0, users, 0.0, 0.0, 0.0, 0.0, 0.0, feed_s)
    total_s = float(costs.sum()) / 1e3
    return Latency(
        ranker=ranker,
        mode=mode,
        rankings=len(costs),
        users=users,
        p50_ms=float(np.percentile(costs, 50)),
        p99_ms=float(np.percentile(costs, 99)),
        max_ms=float(costs.max()),
        mean_ms=float(costs.mean()),
        per_s=len(costs) / total_s if total_s > 0 else 0.0,
        feed_s=feed_s,
    )


def latency(
    events: Sequence[Event],
    settings: Settings,
    *,
    rankings: int = 2_000,
    seed: int = 0,
    warmup: int = 200,
    model: Scorer | None = None,
    name: str | None = None,
) -> list[Latency]:
    """Replay ``events`` into the pipeline of ``settings``, timing :meth:`Pipeline.recommend`
    interleaved with the last ``rankings`` behaviour events, then after the replay for
    ``rankings`` sampled users: ``[after replay, interleaved]``. ``model``: a trained ranker
    the pipeline serves (reported as ``name``)."""
    replay = _Replay(settings)
    if model is not None:
        replay.pipeline.use_ranker(model)
    pipeline, profiles = replay.pipeline, replay.store.profiles
    behaviour = [i for i, e in enumerate(events) if not isinstance(e, Item)]
    split = behaviour[-rankings] if 0 < rankings <= len(behaviour) else len(events)
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for event in events[:split]:
        replay.feed(event)
    interleaved: list[int] = []
    touched: set[str] = set()
    for event in events[split:]:
        user = replay.feed(event)
        profile = profiles.get(user.encode()) if user is not None else None
        if profile is not None:
            touched.add(profile.user_id)
            t0 = clock()
            pipeline.recommend(profile)
            interleaved.append(clock() - t0)
    feed_s = time.perf_counter() - started - sum(interleaved) / 1e9
    sample = sample_users(list(profiles), rankings, seed)
    for key in sample[:warmup]:
        pipeline.recommend(profiles[key])
    after: list[int] = []
    for key in sample:
        profile = profiles[key]
        t0 = clock()
        pipeline.recommend(profile)
        after.append(clock() - t0)
    label = name or settings.ranker
    return [
        _latency(label, AFTER_REPLAY, after, len(set(sample)), feed_s),
        _latency(label, INTERLEAVED, interleaved, len(touched), feed_s),
    ]


def evaluator(events: Sequence[Event], settings: Settings) -> dict[str, Any]:
    """Rankings/s of the in-process evaluator over ``events`` (the required variants)."""
    report = evaluate(events, settings, variants=EVAL_VARIANTS, dataset=DATASET)
    timing = report.timing
    return {
        "events": report.events,
        "evaluated": report.evaluated,
        "ranker": settings.ranker,
        "variants": list(report.variants),
        "seconds": timing["seconds"],
        "rankings": int(timing["rankings"]),
        "messages": int(timing["messages"]),
        "rankings_per_s": timing["rankings_per_s"],
        "all_per_s": timing.get("all_per_s", 0.0),
        "evaluated_per_s": timing["evaluated_per_s"],
        "goal_rankings_per_s": GOAL_EVAL_RANKINGS_PER_S,
        "meets_goal": timing["rankings_per_s"] >= GOAL_EVAL_RANKINGS_PER_S,
    }


def run(
    data_dir: Path | None = None,
    *,
    rankings: int = 2_000,
    eval_events: int = 30_000,
    rankers: Sequence[str] = RANKERS,
    seed: int = 0,
    settings: Settings | None = None,
    trained: Scorer | None = None,
) -> dict[str, Any]:
    """Both in-process measures (module docstring); ``rankings=0`` or ``eval_events=0`` skips one.
    ``settings`` (default: ``Settings()``, i.e. ``PERSONA_*``) is the base; only ``ranker`` varies.
    ``trained``: also time the blend ranker's candidates scored by this trained ranker."""
    from state.paths import data_dir as default_data_dir

    base = settings or Settings()
    events = load_events(data_dir or default_data_dir())
    report: dict[str, Any] = {"data": f"MovieLens-100k ({len(events):,} events)", "latency": []}
    # Wall-clock figures: a busy machine inflates them, so say how busy it was.
    report["cpus"] = os.cpu_count() or 0
    report["load_1m_before"] = os.getloadavg()[0]
    if rankings > 0:
        rows: list[dict[str, Any]] = []
        for ranker in rankers:
            settings_r = base.model_copy(update={"ranker": ranker})
            rows += [asdict(row) for row in latency(events, settings_r, rankings=rankings, seed=seed)]
        if trained is not None:
            settings_t = base.model_copy(update={"ranker": "blend"})
            rows += [asdict(row) for row in latency(events, settings_t, rankings=rankings, seed=seed, model=trained, name="trained")]
            report["trained_ranker"] = trained.version
        report["latency"] = rows
        by = {(r["ranker"], r["mode"]): r for r in rows}
        for mode in (AFTER_REPLAY, INTERLEAVED):
            blend, baseline = by.get(("blend", mode)), by.get(("baseline", mode))
            if blend and baseline and baseline["p50_ms"] > 0 and baseline["p99_ms"] > 0:
                tag = mode.replace(" ", "_")
                report[f"blend_vs_baseline_p50_{tag}"] = blend["p50_ms"] / baseline["p50_ms"]
                report[f"blend_vs_baseline_p99_{tag}"] = blend["p99_ms"] / baseline["p99_ms"]
            trained_row = by.get(("trained", mode))
            if blend and trained_row and blend["p50_ms"] > 0 and blend["p99_ms"] > 0:
                tag = mode.replace(" ", "_")
                report[f"trained_vs_blend_p50_{tag}"] = trained_row["p50_ms"] / blend["p50_ms"]
                report[f"trained_vs_blend_p99_{tag}"] = trained_row["p99_ms"] / blend["p99_ms"]
    if eval_events > 0:
        report["evaluator"] = evaluator(events[:eval_events], base)
    report["load_1m_after"] = os.getloadavg()[0]
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """The figures of :func:`run` as tables."""
    lat: list[dict[str, Any]] = report.get("latency", [])
    if lat:
        table = Table(title=f"one ranking in process (Pipeline.recommend), {report['data']} replayed")
        for col in ("ranker", "when", "rankings", "p50 ms", "p99 ms", "max ms", "per s"):
            table.add_column(col, justify="left" if col in ("ranker", "when") else "right")
        for r in lat:
            table.add_row(
                r["ranker"], r["mode"], f"{r['rankings']:,}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['max_ms']:.3f}",
                f"{r['per_s']:,.0f}",
            )
        console.print(table)
        feeds = ", ".join(f"{r['ranker']} {r['feed_s']:.1f} s" for r in lat if r["mode"] == AFTER_REPLAY)
        console.print(
            f"{AFTER_REPLAY}: sampled users once the replay is done (caches warm); "
            f"{INTERLEAVED}: one ranking after each of the replay's last events, for its user (state moving). "
            f"Feeding the replay took {feeds}."
        )
        for mode in (AFTER_REPLAY, INTERLEAVED):
            tag = mode.replace(" ", "_")
            if f"blend_vs_baseline_p50_{tag}" in report:
                console.print(
                    f"blend / baseline cost, {mode}: p50 x{report[f'blend_vs_baseline_p50_{tag}']:.2f}, "
                    f"p99 x{report[f'blend_vs_baseline_p99_{tag}']:.2f}"
                )
            if f"trained_vs_blend_p50_{tag}" in report:
                console.print(
                    f"trained ({report['trained_ranker']}) / blend cost, {mode}: p50 x{report[f'trained_vs_blend_p50_{tag}']:.2f}, "
                    f"p99 x{report[f'trained_vs_blend_p99_{tag}']:.2f}"
                )
    ev: dict[str, Any] | None = report.get("evaluator")
    if ev:
        table = Table(
            title=f"in-process evaluator: first {ev['events']:,} MovieLens-100k events, ranker {ev['ranker']}, "
            f"variants {', '.join(ev['variants'])}"
        )
        for col in ("measure", "value", "goal"):
            table.add_column(col, justify="left" if col == "measure" else "right")
        verdict = "met" if ev["meets_goal"] else "NOT met"
        table.add_row("rankings/s", f"{ev['rankings_per_s']:,.0f}", f">= {ev['goal_rankings_per_s']:,.0f} ({verdict})")
        table.add_row("all_per_s", f"{ev['all_per_s']:,.0f}", "")
        table.add_row("evaluated positives/s", f"{ev['evaluated_per_s']:,.0f}", "")
        table.add_row("positives evaluated", f"{ev['evaluated']:,}", "")
        table.add_row("rankings + messages", f"{ev['rankings']:,} + {ev['messages']:,}", "")
        table.add_row("seconds", f"{ev['seconds']:.1f}", "")
        console.print(table)
        console.print(
            "rankings/s = (rankings of every variant + messages the pipeline emitted) / wall s of the replay; "
            "all_per_s = positives / s spent in the pipeline's own ranking"
        )
    if "load_1m_before" in report:
        console.print(
            f"load average (1 min) {report['load_1m_before']:.2f} before, {report['load_1m_after']:.2f} after, "
            f"on {report['cpus']} CPUs: figures are wall clock, a busy machine lowers them"
        )
