"""``persona bench scale``: behaviour throughput of 1, 2 and 4 workers in one consumer group
on 8 partitions, and how long processing pauses when a worker joins or leaves under load.

For each worker count, on topics of their own: the catalog is published, the workers start
and the group settles (every worker a member) before the behaviour events (MovieLens-100k
ratings as purchases, or the SYNTHETIC stand-in) are published; the clock runs from the
first applied event to the last, summed over the workers. The baseline, in the same run, is
the one-worker rate: ``speedup = rate(N) / rate(1)``. On a machine with fewer cores than
workers (and the broker and the producer on the same cores) the curve measures contention,
not the design: the report gives the cores and the load.

Then a rebalance run with two workers: when a third of the events are applied a third
worker joins; at two thirds one worker is stopped (SIGTERM). The pause is the longest time
without any applied event in the 60 s after each change (sampled every 0.2 s).

Last, two restart runs with two workers: at a third of the events one worker is killed
(SIGKILL, as a crashed pod) and started again at once on its state dir, once as a dynamic
member and once with a group instance id (static membership, ``PERSONA_GROUP_INSTANCE_ID``).
Each reports the group's longest pause after the kill and ``back_s``, the time from the kill to
the restarted worker's first applied event.

And four scale-down runs with two workers: at a third of the events one worker is stopped for
good (SIGTERM): a dynamic member (it leaves the group as it closes), a static member (it does not:
its partitions wait for its session to time out), a static member removed at once with
``persona group leave`` (``stream_app.membership.leave``), and a static member that removes
itself as it stops because its StatefulSet no longer wants it (``PERSONA_STATIC_LEAVE=kubernetes``,
``stream_app.scale_down``; the API is ``deploy.kubernetes_api``'s local stand-in, which lowers
``spec.replicas`` from 2 to 1 just before the stop, as ``kubectl scale`` does). Each reports the
group's longest pause after the stop.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import bench_settings, broker, workdir
from bench.stream import movielens_events, synthetic_purchases
from deploy.kubernetes_api import StatefulSetApi
from deploy.workers import WorkerProcess, free_port, group_lag, metric_sum, wait_group_stable
from state.events import Event
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.topics import ensure_topics

PARTITIONS = 8
#: the scale-down run whose stopped static member ``persona group leave`` removes
STATIC_REMOVED = "static, then persona group leave"
#: the scale-down run whose stopped static member removes itself (PERSONA_STATIC_LEAVE=kubernetes)
STATIC_SCALED = "static, PERSONA_STATIC_LEAVE=kubernetes"
#: the StatefulSet the bench's static workers are pods of (instance ids bench-worker-0, -1, ...)
STATEFULSET = "bench-worker"
NAMESPACE = "persona"


def _events(data_dir: Path, limit: int | None) -> tuple[list[Event], list[Event], str]:
    if (data_dir / "movielens-100k").is_dir():
        catalog, behaviour = movielens_events(data_dir, limit)
        return catalog, behaviour, f"MovieLens-100k purchases ({len(behaviour)})"
    catalog, behaviour = synthetic_purchases(limit or 100_000)
    return catalog, behaviour, f"SYNTHETIC purchases ({len(behaviour)})"


class Group:
    """Workers of one consumer group; counters of stopped workers are kept at their last value."""

    def __init__(self, settings: Settings, work: Path, *, static: bool = False, extra: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.work = work
        #: give each worker a group instance id (static membership)
        self.static = static
        #: more settings for every worker
        self.extra = dict(extra or {})
        work.mkdir(parents=True, exist_ok=True)
        self.workers: list[WorkerProcess] = []
        self._last: dict[int, float] = {}
        #: counts of earlier incarnations (a supervisor restart starts the counters at zero)
        self._base: dict[int, float] = {}
        self._stopped = 0.0
        self._restarts: dict[int, int] = {}
        #: worker -> its number (state dir, instance id), and how many processes were started
        self._index: dict[int, int] = {}
        self._started = 0

    def add(self, n: int | None = None) -> WorkerProcess:
        n = len(self.workers) if n is None else n
        update: dict[str, Any] = {"state_dir": self.work / f"state-{n}", "web_port": free_port(), **self.extra}
        if self.static:
            update["group_instance_id"] = f"{STATEFULSET}-{n}"
        s = self.settings.model_copy(update=update)
        # Restarts allowed: a restart under rebalance is a finding to report, not a crash.
        self._started += 1
        w = WorkerProcess(s, self.work / f"worker-{n}-{self._started}.log", allow_restarts=True)
        self._index[id(w)] = n
        self.workers.append(w)
        return w

    def instance_id(self, w: WorkerProcess) -> str | None:
        return f"{STATEFULSET}-{self._index[id(w)]}" if self.static else None

    def restart(self, w: WorkerProcess) -> WorkerProcess:
        """SIGKILL ``w`` and start it again at once on its state dir (and instance id)."""
        n = self._index.pop(id(w))
        self._stopped += self._last.pop(id(w), 0.0) + self._base.pop(id(w), 0.0)
        self._restarts.pop(id(w), None)  # a new process may get the old one's id()
        w.kill()
        w.stop()
        self.workers.remove(w)
        return self.add(n)

    def stop(self, w: WorkerProcess) -> None:
        self._stopped += self._last.pop(id(w), 0.0) + self._base.pop(id(w), 0.0)
        w.stop()
        self.workers.remove(w)

    def applied(self) -> float:
        total = self._stopped
        for w in self.workers:
            try:
                m = w.metrics()
            except OSError:
                m = None
            if m is not None:
                now = metric_sum(m, "persona_events_total", topic=self.settings.topic("purchase"))
                # The supervisor hands each incarnation the count of restarts so far: a new
                # value is a new incarnation, whose counters began again at zero.
                restarts = int(metric_sum(m, "persona_supervisor_restarts_total"))
                if restarts != self._restarts.get(id(w), 0):
                    self._base[id(w)] = self._base.get(id(w), 0.0) + self._last.get(id(w), 0.0)
                    self._restarts[id(w)] = restarts
                    self._last[id(w)] = 0.0
                self._last[id(w)] = now
            total += self._last.get(id(w), 0.0) + self._base.get(id(w), 0.0)
        return total

    def applied_by(self, w: WorkerProcess) -> float:
        """What ``w``'s process applied, as of the last :meth:`applied`."""
        return self._last.get(id(w), 0.0)

    @property
    def restarts(self) -> int:
        """Supervisor restarts of every worker so far (the gap guard's, faust#596)."""
        return sum(self._restarts.values())

    def close(self) -> None:
        for w in list(self.workers):
            w.stop()


def _longest_pause(samples: list[tuple[float, float]], start: float, window: float = 60.0) -> float:
    """Longest time between two samples (time, applied) that show progress, counted from
    ``start`` on, for progress within ``window`` after it (the run's end is not a pause)."""
    longest, last_progress, prev = 0.0, start, None
    for t, n in samples:
        if t > start + window:
            break
        if prev is not None and n > prev and t >= start:
            longest = max(longest, t - max(last_progress, start))
            last_progress = t
        elif prev is not None and n > prev:
            last_progress = t
        prev = n
    return longest


def _pauses(changes: list[tuple[str, float]], samples: list[tuple[float, float]]) -> dict[str, float]:
    """``{change}_pause_s`` for each ``(change, time)``: the longest pause after it, in a window
    that ends at the next change (a pause is charged to the change before it) or at the run's
    last sample. No changes (a plain throughput run), no pauses."""
    if not changes:
        return {}
    ends = [at for _, at in changes[1:]] + [samples[-1][0]]
    return {
        f"{what}_pause_s": _longest_pause(samples, at, window=min(60.0, end - at))
        for (what, at), end in zip(changes, ends, strict=True)
    }


def throughput(bs: str, tag: str, work: Path, workers: int, catalog: list[Event], behaviour: list[Event],
               rebalance: bool = False, restart: bool = False, static: bool = False,
               stop: bool = False, remove: bool = False, scaled: bool = False) -> dict[str, Any]:
    """One run; ``stop``: one worker stopped for good at a third, and with ``remove`` (static
    members) removed from the group at once by ``persona group leave``'s request, or with
    ``scaled`` (static members) removing itself as its StatefulSet asks (module docstring)."""
    with ExitStack() as stack:
        extra: dict[str, Any] = {}
        api: StatefulSetApi | None = None
        if scaled:
            api = stack.enter_context(StatefulSetApi())
            api.replicas[(NAMESPACE, STATEFULSET)] = workers
            extra = {"static_leave": "kubernetes", "kubernetes_api": api.url, "kubernetes_namespace": NAMESPACE}
        return _throughput(bs, tag, work, workers, catalog, behaviour, rebalance, restart, static, stop, remove, api, extra)


def _throughput(bs: str, tag: str, work: Path, workers: int, catalog: list[Event], behaviour: list[Event],
                rebalance: bool, restart: bool, static: bool, stop: bool, remove: bool,
                api: StatefulSetApi | None, extra: dict[str, Any]) -> dict[str, Any]:
    settings = bench_settings(bs, tag, work / "unused", partitions=PARTITIONS)
    ensure_topics(settings)
    publish(settings, catalog)
    group = Group(settings, work / tag, static=static, extra=extra)
    restarted: WorkerProcess | None = None
    n = len(behaviour)
    row: dict[str, Any] = {"workers": workers}
    try:
        for _ in range(workers):
            group.add().wait_ready(180)
        wait_group_stable(settings, workers, timeout=180)
        publish(settings, behaviour)
        samples: list[tuple[float, float]] = []
        first_t, first_n = 0.0, 0.0
        changes: list[tuple[str, float]] = []
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            done = group.applied()
            now = time.monotonic()
            samples.append((now, done))
            if done > 0 and not first_t:
                first_t, first_n = now, done
            if rebalance and not changes and done >= n / 3:
                changes.append(("join", now))
                group.add()
            elif rebalance and len(changes) == 1 and done >= 2 * n / 3:
                changes.append(("leave", now))
                group.stop(group.workers[0])
            elif stop and not changes and done >= n / 3:
                changes.append(("stop", now))
                gone = group.workers[-1]
                ident = group.instance_id(gone)
                if api is not None:  # kubectl scale: spec.replicas first, then the highest pod stops
                    api.replicas[(NAMESPACE, STATEFULSET)] = len(group.workers) - 1
                group.stop(gone)
                row["stopped_s"] = time.monotonic() - now
                if remove and ident is not None:
                    from stream_app.membership import leave

                    outcome = leave(settings, [ident])[0].outcome
                    if outcome != "removed":
                        raise RuntimeError(f"persona group leave {ident}: {outcome}")
                    row["removed_s"] = time.monotonic() - now
            elif restart and not changes and done >= n / 3:
                changes.append(("restart", now))
                restarted = group.restart(group.workers[-1])
            if restarted is not None and "back_s" not in row and group.applied_by(restarted) > 0:
                row["back_s"] = now - changes[0][1]
            # Until the restarted worker applies again the run is not done, whatever the counters say.
            waiting = restarted is not None and "back_s" not in row
            if not waiting and done >= n:
                break
            if not waiting and len(samples) % 25 == 0 and group_lag(settings, [settings.topic("purchase")]) == 0 and done > 0:
                break  # all committed (a restart's re-processing makes the counters overshoot or lag)
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{workers} workers did not finish in time")
        row["eps"] = (samples[-1][1] - first_n) / (samples[-1][0] - first_t)
        row["seconds"] = samples[-1][0] - first_t
        row.update(_pauses(changes, samples))
        row["worker_restarts"] = group.restarts
    finally:
        group.close()
        _keep_logs(work / tag)
    return row


LOGS = Path("var/bench/scale-logs")


def _keep_logs(folder: Path) -> None:
    """The workers' logs outlive the temporary folder (a restart's reason is in them)."""
    import shutil

    LOGS.mkdir(parents=True, exist_ok=True)
    for log in folder.glob("*.log"):
        shutil.copy(log, LOGS / f"{folder.name}-{log.name}")


def run(bootstrap: str | None, data_dir: Path, events: int | None = None, counts: tuple[int, ...] = (1, 2, 4),
        restarts: bool = True, stops: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {"cpus": os.cpu_count() or 0, "partitions": PARTITIONS, "load_1m_start": os.getloadavg()[0], "rows": []}
    catalog, behaviour, what = _events(data_dir, events)
    report["data"] = what
    with broker(bootstrap) as bs, workdir("persona-bench-scale-") as work:
        stamp = int(time.time())
        for workers in counts:
            report["rows"].append(throughput(bs, f"scale{stamp}w{workers}", work, workers, catalog, behaviour))
        if report["rows"]:
            base = report["rows"][0]["eps"]
            for row in report["rows"]:
                row["speedup"] = row["eps"] / base
        report["rebalance"] = throughput(bs, f"scale{stamp}rb", work, 2, catalog, behaviour, rebalance=True)
        if restarts:
            report["restart"] = {
                kind: throughput(bs, f"scale{stamp}rs{kind[0]}", work, 2, catalog, behaviour, restart=True, static=kind == "static")
                for kind in ("dynamic", "static")
            }
        if stops:
            report["stop"] = {
                kind: throughput(bs, f"scale{stamp}st{i}", work, 2, catalog, behaviour, stop=True,
                                 static=kind != "dynamic", remove=kind == STATIC_REMOVED,
                                 scaled=kind == STATIC_SCALED)
                for i, kind in enumerate(("dynamic", "static", STATIC_REMOVED, STATIC_SCALED))
            }
    report["load_1m_end"] = os.getloadavg()[0]
    return report
