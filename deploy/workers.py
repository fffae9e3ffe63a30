"""Running workers as processes and reading their metrics: for tests, benchmarks and demos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from deploy.ports import free_port as free_port  # re-exported: tests and benchmarks take it from here
from state.paths import DEFAULT_TEST_MODEL_REGISTRY
from stream_app.settings import Settings

REPO = Path(__file__).resolve().parent.parent
#: The encoder registry the tests load (``PERSONA_TEST_MODEL_REGISTRY`` overrides it), where
#: ``make test-models`` (deploy/test-models.sh) exports fp32 and int8: build outputs, never committed.
TEST_MODEL_REGISTRY = Path(os.environ.get("PERSONA_TEST_MODEL_REGISTRY") or DEFAULT_TEST_MODEL_REGISTRY)


#: Samples of a /metrics scrape: ``(name, sorted labels) -> value``.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

def settings_env(settings: Settings) -> dict[str, str]:
    """``PERSONA_*`` variables that make a child process read the same settings: complex values
    (dicts) as JSON, which is what pydantic-settings parses, never as a Python repr. Secrets
    are passed too (a child's environment is not output: nothing prints it)."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            env[f"PERSONA_{name.upper()}"] = value.get_secret_value()
            continue
        env[f"PERSONA_{name.upper()}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return env


def scrape(port: int, timeout: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of the worker's /metrics: ``(name, sorted labels) -> value``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, **labels: str) -> float:
    total = 0.0
    for (n, lbls), v in samples.items():
        if n == metric and all(dict(lbls).get(k) == val for k, val in labels.items()):
            total += v
    return total


def consumer_lags(samples: Samples, topic: str) -> dict[int, float]:
    """``partition -> lag`` of ``topic`` from a worker's per-partition lag gauge (a series for
    every partition it owns)."""
    return {
        int(dict(labels)["partition"]): value
        for (name, labels), value in samples.items()
        if name == "persona_consumer_lag" and dict(labels).get("topic") == topic
    }


def owned_partitions(samples: Samples, topic: str) -> set[int]:
    """The partitions of ``topic`` a worker owns, from its per-partition lag gauge."""
    return set(consumer_lags(samples, topic))


class WorkerProcess:
    """A ``persona worker`` subprocess with its own state dir and web port."""

    def __init__(self, settings: Settings, log_path: Path, *, allow_restarts: bool = False, code: Path = REPO) -> None:
        """``allow_restarts=False`` (the default) makes every scrape fail once the supervisor
        has restarted the worker: its counters start again from zero, and a test reading them
        would see wrong totals (issue 8's false restart) instead of the real cause. ``code``:
        the source tree the worker runs from (a benchmark runs an older commit's beside this one)."""
        self.settings = settings
        self.allow_restarts = allow_restarts
        self.port = settings.web_port
        self.log_path = log_path
        env = dict(os.environ)
        env.update(settings_env(settings))
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app.cli", "worker"],
            cwd=code,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> Samples:
        samples = scrape(self.port)
        restarts = metric_sum(samples, "persona_supervisor_restarts_total")
        if restarts and not self.allow_restarts:
            raise AssertionError(f"worker was restarted {restarts:.0f}x by its supervisor (counters reset):\n{self.log_tail()}")
        return samples

    def wait_until(self, predicate: Callable[[Samples], bool], timeout: float = 120.0) -> Samples:
        deadline = time.monotonic() + timeout
        last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"worker exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                last = self.metrics()
                if predicate(last):
                    return last
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out; last events={metric_sum(last, 'persona_events_total')}\n{self.log_tail()}")

    def wait_owned(self, topic: str, timeout: float = 60.0) -> set[int]:
        """The partitions of ``topic`` this worker owns, once it owns any (the lag gauge is
        sampled every few seconds)."""
        return owned_partitions(self.wait_until(lambda m: bool(owned_partitions(m, topic)), timeout), topic)

    def wait_events(self, n: int, timeout: float = 120.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Wait until the worker handled ``n`` records (any outcome)."""
        return self.wait_until(lambda m: metric_sum(m, "persona_events_total") >= n, timeout)

    def wait_ready(self, timeout: float = 90.0) -> None:
        self.wait_until(lambda m: metric_sum(m, "persona_catalog_ready") >= 1, timeout)

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crashed host."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def group_lag(settings: Settings, topics: list[str]) -> int:
    """Records on ``topics`` not yet committed by the worker group (end - committed)."""
    from confluent_kafka import Consumer, TopicPartition

    conf = settings.kafka_config() | {"group.id": settings.app_id, "enable.auto.commit": False}
    consumer = Consumer(conf)
    try:
        lag = 0
        for topic in topics:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            tps = [TopicPartition(topic, p) for p in parts]
            for tp in consumer.committed(tps, timeout=10):
                end = consumer.get_watermark_offsets(tp, timeout=10)[1]
                lag += end - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def wait_drained(settings: Settings, topics: list[str], workers: list[WorkerProcess], timeout: float = 300.0) -> None:
    """Wait until the group committed everything on ``topics`` (survives worker restarts)."""
    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        for w in workers:
            if not w.alive:
                raise AssertionError(f"worker died: {w.proc.returncode}\n{w.log_tail()}")
        try:
            lag = group_lag(settings, topics)
        except Exception as exc:  # the coordinator may still be loading (NOT_COORDINATOR)
            if "COORDINATOR" not in str(exc):
                raise
            time.sleep(1.0)
            continue
        if lag == 0:
            return
        time.sleep(1.0)
    raise AssertionError(f"group still {lag} records behind after {timeout}s")


def wait_group_stable(settings: Settings, members: int, timeout: float = 120.0) -> None:
    """Wait until the worker group is Stable with ``members`` members (rebalance done)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config())
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            group = admin.describe_consumer_groups([settings.app_id])[settings.app_id].result(timeout=10)
            seen = f"{group.state} with {len(group.members)} members"
            if str(group.state).endswith("STABLE") and len(group.members) == members:
                return
        except Exception as exc:  # the coordinator may still be loading
            seen = str(exc)
        time.sleep(1.0)
    raise AssertionError(f"group {settings.app_id} not stable with {members} members after {timeout}s: {seen}")
