"""``persona bench replication``: what every worker pays for the other workers' events.

Global scoring state (popularity, co-occurrence, segment shares, the social graph, review
centroids) is the same on every worker: each applied event becomes a
:class:`scoring.shared.Delta` that its worker folds in at once and publishes, and every other
worker of the group folds it in from the ``scoring.deltas`` topic
(:mod:`stream_app.shared_replica`). So a worker's cost per second is its own events' full cost
plus the *replicated* cost of everybody else's, and adding workers divides only the first:

    speedup(n) = n * C / (C + (n - 1) * S)

with ``C`` a worker's cost per own event and ``S`` the cost of one delta replicated from
another worker. The group's throughput can never pass ``1 / S`` events/s, whatever ``n``.

Measured in process, no broker, on MovieLens-100k (or the first ``--events``): worker A (the
worker's :class:`stream_app.pipeline.Pipeline` over a dict store; a user is ranked on their
first change only, so rankings, which cost the same however many workers there are, stay out)
applies every behaviour event and publishes its deltas, encoded as
on the topic; worker B (a fresh pipeline with the same catalog, none of the users) decodes
and folds in every delta, as the shared replica does. ``own_us`` and ``replicated_us`` are
wall microseconds per event; ``parts_us`` times each part of the shared state alone on a
fresh instance over the same deltas, in the same order (where ``S`` goes). ``C`` for the
projection is the worker's measured CPU per event when given (``bench all`` passes the stream
part's), else ``own_us`` (the update path alone: Faust's per-event cost and the rankings left out).
The projected speedup grows with ``C``, so with ``own_us`` it is a lower bound; the ceiling
``1 / S`` does not depend on ``C``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from bench.ranking import _Replay
from scoring.shared import ENGAGE, FOLLOW, Delta, decode_record, encode_delta
from state.events import Event, Item
from stream_app.settings import Settings
from stream_app.snapshots import new_state

#: workers in the projected scaling curve (16: the device machine's cores)
WORKERS: Final[tuple[int, ...]] = (1, 2, 4, 8, 16)


def speedup(workers: int, worker_us: float, replicated_us: float) -> float:
    """Group throughput of ``workers`` workers over one worker's, when each pays ``worker_us``
    per own event and ``replicated_us`` per event of each other worker (module docstring)."""
    if workers < 1 or worker_us <= 0.0 or replicated_us < 0.0:
        raise ValueError(f"need workers >= 1 and positive costs, got {workers}, {worker_us}, {replicated_us}")
    return workers * worker_us / (worker_us + (workers - 1) * replicated_us)


def measure(events: Sequence[Event], settings: Settings, worker_us: float | None = None) -> dict[str, Any]:
    """The report: own and replicated cost per event, where the replicated cost goes, and the
    projected speedup at :data:`WORKERS` (``worker_us``: C for the projection, default own)."""
    published: list[bytes] = []
    # The worker's pipeline as `bench ranking` replays it: only a user's first change ranks, so
    # the update path is what is compared (a ranking costs the same on any number of workers).
    own = _Replay(settings, publish=lambda delta: published.append(encode_delta(delta)))
    behaviour: list[Event] = []
    for event in events:
        if isinstance(event, Item):
            own.feed(event)  # the catalog, untimed
        else:
            behaviour.append(event)
    clock = time.perf_counter
    started = clock()
    for event in behaviour:
        own.feed(event)
    own_s = clock() - started
    if not behaviour or not published:
        raise ValueError("no behaviour events to replicate")
    other = _Replay(settings, catalog=own.catalog)
    started = clock()
    deltas: list[Delta] = []
    for data in published:
        deltas.extend(decode_record(data))
    decode_s = clock() - started
    for delta in deltas:
        other.now = max(other.now, delta.ts)
        other.pipeline.apply_delta(delta, delta.ts)
    replicated_s = clock() - started
    n = len(behaviour)
    own_us, replicated_us = own_s / n * 1e6, replicated_s / n * 1e6
    c = worker_us if worker_us is not None else own_us
    return {
        "events": n,
        "deltas": len(deltas),
        #: deltas worker B folded in (not skipped as seen): all of them, or the cost is not the replicated one
        "replicated_applied": other.pipeline.shared.applied,
        "own_us": own_us,
        "replicated_us": replicated_us,
        "decode_us": decode_s / n * 1e6,
        "parts_us": {name: seconds / n * 1e6 for name, seconds in _parts(deltas, settings).items()},
        "replicated_vs_own": replicated_us / own_us,
        "ceiling_eps": 1e6 / replicated_us if replicated_us > 0 else math.inf,
        "worker_us": c,
        "worker_us_from": "given" if worker_us is not None else "own_us",
        "projection": [{"workers": w, "speedup": speedup(w, c, replicated_us)} for w in WORKERS],
    }


def _parts(deltas: Sequence[Delta], settings: Settings) -> dict[str, float]:
    """Seconds each part of the shared state takes alone over ``deltas`` (fresh instances, the
    calls :meth:`scoring.shared.SharedState.apply` makes, in its order)."""
    engage = [d for d in deltas if d.kind == ENGAGE]
    # Built as the pipeline builds its own, each part used alone.
    fresh = new_state(settings)
    clock = time.perf_counter
    out: dict[str, float] = {}
    popularity = fresh.popularity
    started = clock()
    for d in engage:
        if d.weight:
            popularity.add(d.item, d.weight, d.ts)
    out["popularity"] = clock() - started
    segments = fresh.segments
    started = clock()
    for d in engage:
        if d.weight and d.segments:
            segments.add(d.segments, d.item, d.weight, d.ts)
    out["segments"] = clock() - started
    knn = fresh.knn
    started = clock()
    for d in engage:
        if d.first:
            knn.add(d.recent, d.item)
    out["co-occurrence"] = clock() - started
    social = fresh.social
    started = clock()
    for d in deltas:
        if d.kind == ENGAGE and d.weight:
            social.engaged(d.user, d.item, d.weight, d.ts)
        elif d.kind == FOLLOW:
            social.follow(d.user, d.target, d.ts)
    out["social"] = clock() - started
    return out


def run(data_dir: Path, events: int | None = None, worker_us: float | None = None) -> dict[str, Any]:
    """:func:`measure` on MovieLens-100k in the producer's order (``events``: the first n)."""
    from bench.ranking import load_events

    report = measure(load_events(data_dir, events), Settings(), worker_us)
    report["data"] = "movielens-100k" if events is None else f"movielens-100k (first {events})"
    return report


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"per event, in process ({report['data']}, {report['events']:,} events)")
    table.add_column("cost")
    table.add_column("µs", justify="right")
    table.add_row("own event, update path, no ranking (worker A)", f"{report['own_us']:.1f}")
    table.add_row("another worker's delta, decoded and folded in (worker B)", f"{report['replicated_us']:.1f}")
    table.add_row("  of which decoding", f"{report['decode_us']:.1f}")
    for name, us in sorted(report["parts_us"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {name} alone", f"{us:.1f}")
    console.print(table)
    console.print(
        f"replicated / own = {report['replicated_vs_own']:.3f}; a group of any size stays under "
        f"{report['ceiling_eps']:,.0f} events/s"
    )
    console.print(f"projected speedup with C = {report['worker_us']:.1f} µs per own event ({report['worker_us_from']}):")
    curve = Table()
    curve.add_column("workers", justify="right")
    curve.add_column("speedup", justify="right")
    for row in report["projection"]:
        curve.add_row(str(row["workers"]), f"{row['speedup']:.2f}")
    console.print(curve)
