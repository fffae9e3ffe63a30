"""``persona bench new-users``: what a burst of new users costs the ranker, in process.

When every event is a user's first, the worker ranks on every event (the coalescer emits a
user's first change at once), so the ranking is the worker's cost. This replays ``users``
synthetic first purchases (``bench.stream.synthetic_profiles``: ``items`` items in 20
categories) into the worker's pipeline over a dict store, each item with a seeded random
384-d text vector so every profile carries an interest vector and the content candidates run,
and times the ranking that follows each of the last ``rankings`` purchases (the best of
``repeats`` calls, which removes most of the machine's noise without changing the state).

``--data movielens`` times the same in the MovieLens-100k replay instead (the ranking after
each of the last ``rankings`` events, for its user; every movie with a seeded random vector,
so every generator runs, the attribute segments included): repeat users with long
histories, where co-occurrence, the content search and the segment shares cost most.
``--no-vectors`` leaves the item vectors out (no content candidates).

Every behaviour event's ``Pipeline.apply_event`` is timed too (``update_us_per_event``: the
update path in process, no broker and no Faust; a user's first change is ranked inside it, as
in the worker): the cost `bench stream` cannot separate from the framework's.

``--against REV`` runs git revision REV's code on the same events at the same time, one
process per core (``taskset``), so both meet the same machine: on two shared cores,
back-to-back runs of one revision differed by half. It also compares a checksum of every
list (items, scores and reasons): a change meant to be a pure speed-up must keep it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: The project's root (where ``python -m bench.new_users`` runs from).
REPO = Path(__file__).resolve().parent.parent


#: What ``--data`` may name.
DATA = ("new-users", "movielens")


def measure(
    users: int = 6_000,
    rankings: int = 1_500,
    items: int = 1_000,
    repeats: int = 3,
    data: str = "new-users",
    limit: int = 0,
    vectors_on: bool = True,
) -> dict[str, Any]:
    """Times, in this process and this tree, the ranking after each of the last ``rankings``
    of ``users`` first purchases (``data="movielens"``: of the MovieLens-100k replay's events,
    ``users`` and ``items`` unused; ``limit`` > 0: its first ``limit`` events only); ms per
    ranking and the lists' checksum. ``vectors_on=False``: no item vectors, so no interest
    vectors and no content candidates (the behaviour-only worker of ``bench stream``)."""
    from bench.stream import synthetic_profiles
    from state.catalog import Catalog
    from state.events import Event, Item, kind_of
    from state.interest import ItemVector, item_vector_bytes
    from state.profile import Origin
    from stream_app.pipeline import Pipeline
    from stream_app.settings import Settings
    from stream_app.stores import DictStore, DictVectors

    settings = Settings()
    clock = [0.0]
    catalog, vectors = Catalog(), DictVectors("bench-v1")

    def now() -> float:
        return clock[0]

    def discard(key: bytes, value: bytes | None) -> None:
        pass

    store = DictStore()
    pipeline = Pipeline.from_settings(settings, store=store, catalog=catalog, vectors=vectors, emit=discard,
                                      emit_interval_s=math.inf, monotonic=now, wall=now)
    items_ev: list[Event]
    behaviour: list[Event]
    if data == "movielens":
        from bench.ranking import load_events
        from state.paths import data_dir

        events = load_events(data_dir(), limit=limit or None)  # the catalog first, as the producer sends it
        items_ev = [e for e in events if isinstance(e, Item)]
        behaviour = [e for e in events if not isinstance(e, Item)]
    elif data == "new-users":
        items_ev, behaviour = synthetic_profiles(users, items, titled=True)
    else:
        raise ValueError(f"data: one of {', '.join(DATA)}, not {data!r}")
    rng = np.random.default_rng(0)
    for item in items_ev:
        assert isinstance(item, Item)
        catalog.upsert(item)
        if not vectors_on:
            continue
        v = rng.standard_normal(384).astype(np.float32)
        vec = ItemVector(item_id=item.item_id, version="bench-v1", digest="-", vector=item_vector_bytes(v / np.linalg.norm(v)))
        vectors.vectors[item.item_id] = vec
        pipeline.add_item_vector(vec)
    digest = hashlib.sha256()
    costs: list[float] = []
    offsets: dict[str, int] = {}
    split = len(behaviour) - rankings
    update_ns = 0
    for i, event in enumerate(behaviour):
        clock[0] = max(clock[0], event.ts)
        kind = kind_of(event)
        offset = offsets.get(kind, 0)
        offsets[kind] = offset + 1
        t0 = time.perf_counter_ns()
        pipeline.apply_event(event, Origin(settings.topic(kind), 0, offset), 0, event.ts)
        update_ns += time.perf_counter_ns() - t0
        if i < split:
            continue
        assert not isinstance(event, Item)
        profile = store.profiles[event.user_id.encode()]
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            message = pipeline.recommend(profile)
            best = min(best, time.perf_counter_ns() - t0)
        costs.append(best / 1e6)
        digest.update(repr([(s.item_id, s.score, s.reasons) for s in message.items]).encode())
    c = np.asarray(costs)
    return {"rankings": len(costs), "mean_ms": float(c.mean()), "p50_ms": float(np.percentile(c, 50)),
            "p99_ms": float(np.percentile(c, 99)), "lists_sha256": digest.hexdigest()[:16],
            "events": len(behaviour), "update_us_per_event": update_ns / 1e3 / max(len(behaviour), 1)}


def _child(tree: Path, script: Path, cpu: int | None, args: dict[str, int | str | bool]) -> subprocess.Popen[str]:
    """This file's :func:`measure` (a copy: an older revision has no such module) over the
    packages of ``tree``."""
    cmd = [sys.executable, str(script), json.dumps(args)]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    from state.paths import data_dir

    # The default data dir is relative to a tree, and the other revision's tree is a temporary
    # copy: both children read this process's (PERSONA_DATA_DIR or the default beside this repo).
    env = dict(os.environ, PYTHONPATH=str(tree), PERSONA_DATA_DIR=str(data_dir().resolve()))
    return subprocess.Popen(cmd, cwd=script.parent, env=env, stdout=subprocess.PIPE, text=True)


def run(against: str | None = None, **args: int | str | bool) -> dict[str, Any]:
    """This tree's figures, and with ``against`` that revision's, measured at the same time."""
    from bench.stream import source_tree

    report: dict[str, Any] = {"cpus": os.cpu_count() or 0, **args}
    with tempfile.TemporaryDirectory(prefix="persona-bench-new-users-") as tmp:
        script = Path(tmp) / "run" / "persona_bench_new_users.py"
        script.parent.mkdir()
        shutil.copyfile(__file__, script)
        two = against is not None and (os.cpu_count() or 1) >= 2
        old = source_tree(against, Path(tmp) / "against") if against is not None else None
        procs = {"this tree": _child(REPO, script, 0 if two else None, args)}
        if against is not None and old is not None:
            procs[against] = _child(old, script, 1 if two else None, args)
        for name, proc in procs.items():
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"bench new-users: {name} failed (exit {proc.returncode})")
            report[name] = json.loads(out.strip().splitlines()[-1])
    if against is not None:
        mine, theirs = report["this tree"], report[against]
        report["against"] = against
        report["mean_vs_against"] = mine["mean_ms"] / theirs["mean_ms"]
        report["update_vs_against"] = mine["update_us_per_event"] / theirs["update_us_per_event"]
        report["same_lists"] = mine["lists_sha256"] == theirs["lists_sha256"]
    return report


if __name__ == "__main__":
    print(json.dumps(measure(**json.loads(sys.argv[1]))))
