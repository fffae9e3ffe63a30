"""A real Prometheus server on loopback, with the project's own config and alert rules: for the
operations test, the dashboard snapshot and a local look at the workers.

The config is deploy/prometheus/prometheus.yml, copied with alerts.yml into a working folder
(its relative paths resolve against the file's folder), with the scrape interval shortened
and the workers' ``host:port`` written to ``targets/workers.json`` there (file service
discovery: Prometheus re-reads it on change). ``deploy/prometheus/install.sh`` installs the
Debian package when the binary is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from state.errors import PersonaError

HERE = Path(__file__).resolve().parent / "prometheus"


class PrometheusUnavailable(PersonaError):
    """No prometheus binary, or it did not become ready."""


@dataclass
class PrometheusServer:
    url: str
    folder: Path
    proc: subprocess.Popen[bytes]

    def set_targets(self, targets: list[str]) -> None:
        path = self.folder / "targets" / "workers.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]))
        os.replace(tmp, path)  # atomic: Prometheus never reads half a file

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            raise PersonaError(f"Prometheus {path}: {body.get('error', exc)}") from exc
        if body.get("status") != "success":
            raise PersonaError(f"Prometheus {path}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("/api/v1/query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr`` (None: no series)."""
        result = self.query(expr, at)
        if not result:
            return None
        if len(result) != 1:
            raise PersonaError(f"{expr!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusUnavailable("no `prometheus` on PATH: run deploy/prometheus/install.sh (Debian's prometheus package)")
    return found


def start(
    folder: Path, port: int, *, scrape_interval: str = "1s", targets: list[str] | None = None, timeout: float = 60.0
) -> PrometheusServer:
    """Prometheus on ``127.0.0.1:port`` with the project's config and rules, data in ``folder``."""
    exe = binary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "targets").mkdir(exist_ok=True)
    config = yaml.safe_load((HERE / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["scrape_timeout"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for rule_file in config.get("rule_files", []):
        shutil.copy(HERE / rule_file, folder / rule_file)
    log = open(folder / "prometheus.log", "ab")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = PrometheusServer(f"http://127.0.0.1:{port}", folder, proc)
    server.set_targets(targets or [])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrometheusUnavailable(f"prometheus exited with {proc.returncode}: {(folder / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise PrometheusUnavailable(f"prometheus not ready after {timeout:.0f} s")
