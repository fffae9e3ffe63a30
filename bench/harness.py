"""What every broker-backed benchmark shares: a broker for the run, a worker's settings and
environment, and the drain that times a worker from its own ``/metrics`` while reading, over
the same window, the CPU its process tree and the whole machine spent (``/proc``).

Split out of :mod:`bench.stream`, whose trivial agent, bare consumer and footprint run stay there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from state.paths import REPO_ROOT
from stream_app.settings import Settings

if TYPE_CHECKING:
    from deploy.workers import WorkerProcess


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


#: Where the logs of a run that failed are kept: its working directory is removed with it.
FAILED_LOGS = REPO_ROOT / "var" / "bench" / "failed"


@contextmanager
def workdir(prefix: str, keep: Path = FAILED_LOGS) -> Iterator[Path]:
    """A temporary working directory for one benchmark run. If the run raises, every ``*.log``
    under it (the workers', the agents', the broker's) is copied to ``keep/<prefix><time>/``
    first and the copy's path is printed on stderr: a worker restarted by its supervisor, or
    one that stopped, makes the benchmark refuse its figures, and the cause is in its log,
    not in the refusal (one such restart, 2026-12-07, went unexplained for want of it)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        try:
            yield root
        except BaseException:
            logs = [log for log in sorted(root.rglob("*.log")) if not _store_file(log)]
            if logs:
                dest = keep / f"{prefix}{time.strftime('%Y%m%dT%H%M%S')}"
                for log in logs:
                    target = dest / log.relative_to(root)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(log, target)
                print(f"benchmark failed: {len(logs)} log(s) kept in {dest}", file=sys.stderr)
            raise


def _store_file(path: Path) -> bool:
    """A RocksDB write-ahead log (beside its ``CURRENT``) or a Kafka segment (beside its
    ``.index``): also named ``*.log``, data rather than a process's output."""
    return (path.parent / "CURRENT").exists() or path.with_suffix(".index").exists()


def bench_settings(bootstrap: str, tag: str, state: Path, **extra: Any) -> Settings:
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


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    from deploy.workers import settings_env

    env = dict(os.environ)
    env.update(settings_env(settings))
    env.update(extra)
    return env


def terminate(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the worker runs under a supervisor)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass(frozen=True)
class Drain:
    """One drain: events/s, and where the CPU went meanwhile (from /proc, in seconds per event)."""

    rate: float
    #: CPU of the worker's process tree (supervisor and worker) per event
    worker_cpu_per_event: float
    #: CPU of the whole machine per event (worker, broker and anything else running)
    machine_cpu_per_event: float
    #: (events applied, RSS bytes of the worker's tree) every ``rss_every`` events, when asked
    rss_curve: tuple[tuple[int, int], ...] = ()


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its children (the worker runs under a supervisor)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``'s process tree so far (/proc/PID/stat)."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(values[:8]) - values[3] - values[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def drain_rate(worker: WorkerProcess, n: int, timeout: float = 900.0, **labels: str) -> float:
    """Events/s of ``worker`` until ``persona_events_total{labels}`` reaches ``n`` (:func:`drain`)."""
    return drain(worker, n, timeout, rss_every=0, on_sample=None, **labels).rate


#: Seconds between scrapes of the worker's /metrics while it drains: each scrape renders every
#: series on the worker's event loop (~4 ms), and at 10 scrapes a second that was a tenth of the
#: loop's busy time in `bench reviews` (py-spy), a load production's 15 s scrapes never put on it.
POLL_FAR_S = 0.5
#: ... and near the end, where the poll interval delays the observed finish and biases the rate
#: (start and count are read together, so a late first scrape biases nothing).
POLL_NEAR_S = 0.05
POLL_START_S = 0.1


def poll_pause(done: float, n: int, *, started: bool) -> float:
    """The pause before the next scrape: fine before the first applied event and within the
    last tenth of ``n``, coarse in between."""
    if not started:
        return POLL_START_S
    return POLL_NEAR_S if done >= 0.9 * n else POLL_FAR_S


def drain(
    worker: WorkerProcess, n: int, timeout: float = 900.0, *, rss_every: int = 0,
    on_sample: Callable[[int, int], None] | None = None, **labels: str,
) -> Drain:
    """Events/s of ``worker`` until ``persona_events_total{labels}`` reaches ``n``, timed from
    the first scrape that shows any (start-up and model loading stay outside the clock), and
    the CPU the worker and the machine spent per event over the same window. ``rss_every``:
    also sample the worker's RSS each time another ``rss_every`` events are applied (the
    curve that tells a bounded footprint from one that grows with users), and hand each sample
    to ``on_sample`` as it is taken (a long run keeps what it measured if it is stopped)."""
    from deploy.workers import metric_sum

    curve: list[tuple[int, int]] = []
    first_t, first_n = 0.0, 0.0
    first_cpu, first_machine = 0.0, 0.0
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
            first_cpu, first_machine = cpu_seconds(worker.proc.pid), machine_cpu_seconds()
        if rss_every and done >= (len(curve) + 1) * rss_every:
            curve.append((int(done), rss_bytes(worker.proc.pid)))
            if on_sample is not None:
                on_sample(*curve[-1])
        if done >= n:
            counted = max(done - first_n, 1.0)
            return Drain(
                rate=(done - first_n) / (time.monotonic() - first_t),
                worker_cpu_per_event=(cpu_seconds(worker.proc.pid) - first_cpu) / counted,
                machine_cpu_per_event=(machine_cpu_seconds() - first_machine) / counted,
                rss_curve=tuple(curve),
            )
        time.sleep(poll_pause(done, n, started=bool(first_t)))
    raise RuntimeError("worker did not finish in time")
