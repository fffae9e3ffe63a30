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

``agreement``: whether a replica that reads the same deltas in another interleaving holds the
same state. Worker A's deltas are split by user into :data:`PARTITIONS` partitions (each keeps
its order, as a partition of the deltas topic does) and read a record of :data:`RECORD` deltas
at a time from each in turn, last partition first; a fresh state folds them in. Each part is
order-free but the co-occurrence cut (``scoring.knn``: a row that reaches 2N neighbours keeps
its N largest counts), so what is reported is the rows that differ and, for every user A holds,
whether A's pipeline ranks the same list over the other state (items and order).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from msgspec.structs import replace
from rich.console import Console
from rich.table import Table

from bench.ranking import _Replay
from scoring.shared import ENGAGE, FOLLOW, Delta, SharedState, decode_record, encode_delta
from state.events import Event, Item
from stream_app.settings import Settings
from stream_app.snapshots import new_state

#: workers in the projected scaling curve (16: the device machine's cores)
WORKERS: Final[tuple[int, ...]] = (1, 2, 4, 8, 16)
#: partitions the agreement check splits the deltas into, by user (as the input topics are)
PARTITIONS: Final = 4
#: deltas per record of the deltas topic (``PERSONA_DELTA_BATCH``'s default): read at once
RECORD: Final = 256


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
        "agreement": agreement(own, deltas, settings),
    }


def interleaved(deltas: Sequence[Delta], partitions: int = PARTITIONS, record: int = RECORD) -> list[Delta]:
    """``deltas`` as another replica may read them (module docstring): split by user into
    ``partitions`` sources, each in its order (offsets renumbered, so none is skipped as seen),
    then ``record`` deltas at a time from each in turn, the last partition first."""
    parts: list[list[Delta]] = [[] for _ in range(partitions)]
    for d in deltas:
        p = zlib.crc32(d.user.encode()) % partitions
        parts[p].append(replace(d, source=f"{d.source}/{p}", offset=len(parts[p])))
    out: list[Delta] = []
    for start in range(0, max((len(p) for p in parts), default=0), record):
        for part in reversed(parts):
            out.extend(part[start : start + record])
    return out


def _rows(state: SharedState) -> dict[str, dict[str, float]]:
    snap = state.knn.snapshot()
    out: dict[str, dict[str, float]] = {}
    for item, nb, co in zip(snap.ids, snap.neighbours, snap.counts, strict=True):
        rows = np.frombuffer(nb, dtype="<i8")
        out[item] = dict(zip((snap.ids[int(r)] for r in rows), np.frombuffer(co, dtype="<f8").tolist(), strict=True))
    return out


def agreement(own: _Replay, deltas: Sequence[Delta], settings: Settings) -> dict[str, Any]:
    """Worker A's state against one built from the same deltas interleaved (:func:`interleaved`):
    the co-occurrence rows that differ and the users whose list differs."""
    again = new_state(settings)  # the deltas in A's order: must be A's state to the byte
    for d in deltas:
        again.apply(d)
    other = new_state(settings)
    for d in interleaved(deltas):
        other.apply(d)
    mine, theirs = _rows(own.pipeline.shared), _rows(other)
    users = sorted(own.store.profiles)
    identical = same_items = 0
    overlap = 0.0
    shared = own.pipeline.shared
    try:
        for key in users:
            profile = own.store.profiles[key]
            own.pipeline.shared = shared
            a = [s.item_id for s in own.pipeline.recommend(profile).items]
            own.pipeline.shared = other
            b = [s.item_id for s in own.pipeline.recommend(profile).items]
            identical += a == b
            same_items += set(a) == set(b)
            overlap += len(set(a) & set(b)) / len(a) if a else 1.0
    finally:
        own.pipeline.shared = shared
    return {
        "partitions": PARTITIONS,
        "record": RECORD,
        "same_order_identical": again.snapshot() == shared.snapshot(),
        "snapshot_identical": other.snapshot() == shared.snapshot(),
        "rows": len(mine),
        "rows_differing": sum(theirs.get(item) != row for item, row in mine.items()) + len(theirs.keys() - mine.keys()),
        "cut_rows": shared.knn.cuts,
        "users": len(users),
        "lists_identical": identical,
        "lists_same_items": same_items,
        "mean_overlap": overlap / len(users) if users else 1.0,
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
    a = report["agreement"]
    console.print(
        f"the same deltas read in another interleaving ({a['partitions']} partitions by user, {a['record']} deltas "
        f"per record): {a['rows_differing']:,} of {a['rows']:,} co-occurrence rows differ ({a['cut_rows']:,} cuts); "
        f"{a['lists_identical']:,} of {a['users']:,} users' lists identical, {a['lists_same_items']:,} with the same "
        f"items, mean overlap {a['mean_overlap']:.4f}"
        + ("" if a["same_order_identical"] else " [red](the same order did NOT rebuild the same state)[/red]")
    )
