"""Stopping and restarting a broker of a test's own (the broker-bounce test and the soak)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from deploy.kafka import launcher
from deploy.ports import bindable
from deploy.workers import free_port
from stream_app.settings import Settings


def bounce(port: int, data: Path, how: signal.Signals) -> tuple[float, float]:
    """Stop the broker with ``how`` and start it again; (stopped at, serving again at)."""
    handle = launcher.status(data)
    assert handle is not None, "the broker is not running"
    stopped = time.time()
    if how == signal.SIGTERM:
        assert launcher.stop(handle, timeout_s=60)
    else:
        os.killpg(handle.pid, signal.SIGKILL)
        launcher.stop(handle, timeout_s=5)  # reaps the process and drops its pid file
    # A SIGKILLed JVM is torn down by the kernel a moment after the signal: its listening
    # socket goes with it, not before.
    deadline = time.monotonic() + 30
    while not bindable(port, reuse_addr=True) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        launcher.start(port=port, data_dir=data, timeout_s=120)
    except launcher.LauncherError:
        import subprocess

        held = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout
        raise AssertionError(f"after {how.name}: " + "\n".join(line for line in held.splitlines() if f":{port} " in line)) from None
    return stopped, time.time()




def own_broker_settings(port: int, tag: str, tmp_path: Path, data_dir: Path, **overrides: object) -> Settings:
    """Settings of a chaos run on its own broker: short commit interval and session timeout,
    no encoder, no trained ranker."""
    values: dict[str, object] = {
        "bootstrap_servers": f"127.0.0.1:{port}", "topic_prefix": f"{tag}.", "app_id": f"persona-{tag}",
        "state_dir": tmp_path / "state-0", "web_port": free_port(), "commit_interval_s": 0.5, "session_timeout_s": 6.0,
        "stall_timeout_s": 30.0, "data_dir": data_dir, "model_registry": tmp_path / "no-models",
        "ranker_registry": tmp_path / "no-rankers",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
