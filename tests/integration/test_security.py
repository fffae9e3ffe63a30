"""Persona against a secured broker: SASL_SSL with SCRAM-SHA-512, required client certificates
(made here), and ACLs enforced. Every client connects with credentials from settings and
never shows the password; a wrong password and a denied topic fail fast and clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.kafka import launcher
from deploy.kafka.secure import BrokerSecurity, add_scram_user, make_pki
from scoring.messages import decode as decode_recs
from state.events import Event
from stream_app import acls
from stream_app.history import read_history
from stream_app.inspect import scan
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.topics import ensure_topics
from tests.conftest import DATA_DIR, EventFactory
from tests.support import REPO, WorkerProcess, free_port, group_lag, settings_env, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = "persona-worker"
PASSWORD = "s3cret-Worker-pw-7731"
WRONG = "not-the-Password-9913"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, BrokerSecurity]]:
    """A broker of its own, secured; the worker's user created through the Admin API."""
    root = tmp_path_factory.mktemp("secure-kafka")
    security = BrokerSecurity(make_pki(root / "pki", clients=("admin", WORKER)))
    handle = launcher.start(port=free_port(), data_dir=root / "kafka", security=security, timeout_s=120)
    try:
        add_scram_user(security.admin_config(handle.bootstrap), WORKER, PASSWORD)
        yield handle.bootstrap, security
    finally:
        launcher.stop(handle)


def _settings(bootstrap: str, security: BrokerSecurity, tmp_path: Path, tag: str, **overrides: Any) -> Settings:
    cert, key = security.pki.client(WORKER)
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": WORKER,
        "sasl_password": PASSWORD,
        "ssl_cafile": security.pki.ca,
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "topic_prefix": f"{tag}.",
        "app_id": f"persona-{tag}",
        "state_dir": tmp_path / f"state-{tag}",
        "web_port": free_port(),
        "commit_interval_s": 0.5,
        "session_timeout_s": 6.0,
        "data_dir": DATA_DIR,
        "model_registry": tmp_path / "no-models",
    }
    values.update(overrides)
    return Settings(**values)


def _persona(settings: Settings, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", *args],
        cwd=REPO, env={**os.environ, **settings_env(settings)}, capture_output=True, text=True, timeout=timeout,
    )
    return out, time.monotonic() - started


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp{,6})."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(addr) == 8 else addr)
    return found


def test_every_client_works_over_sasl_ssl_with_client_certificates_and_acls(
    secure: tuple[str, BrokerSecurity], tmp_path: Path, event_factory: EventFactory
) -> None:
    bootstrap, security = secure
    settings = _settings(bootstrap, security, tmp_path, "sec")
    acls.create(security.admin_config(bootstrap), f"User:{WORKER}", acls.grants(settings))
    assert ensure_topics(settings)  # created by the worker's principal, as a deployment would
    f = event_factory
    catalog = [f.item(f"i{n}", [f"c{n % 3}"], title=f"Item {n}") for n in range(12)]
    events: list[Event] = [f.purchase(u, f"i{(n * 5 + k) % 12}", 100.0 + 10 * n + k) for n, u in enumerate("abcdef") for k in range(3)]
    publish(settings, catalog)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready(timeout=120)
        # The web port (metrics) listens on the loopback only, by default.
        assert _listening_addresses(settings.web_port) == {"127.0.0.1"}
        publish(settings, events)
        wait_drained(settings, [settings.topic("purchase")], [worker])
        latest = {k: decode_recs(v) for k, v, _, _, _ in scan(settings, settings.recommendations_topic) if k and v}
        assert set(latest) == {u.encode() for u in "abcdef"}
        assert all(m.items for m in latest.values())

        snapshot = ("shared", "snapshot", "--truncate", "--json")
        commands = [snapshot, ("status", "--json"), ("tail", settings.recommendations_topic, "--max", "3"),
                    ("inspect", "profile", "a", "--json"), ("produce", "--limit", "5", "--no-progress"), ("erase", "f", "--wait", "60"),
                    ("group", "members", "--json"), ("group", "leave", "gone-for-good"), snapshot]
        shown = [_persona(settings, *args)[0] for args in commands]
        for out in shown:
            assert out.returncode == 0, out.stdout + out.stderr
            assert PASSWORD not in out.stdout + out.stderr
        assert '"user_id":"a"' in shown[3].stdout.replace(" ", "")
        # The group commands under the worker's grants (DESCRIBE and READ on its group).
        assert len(json.loads(shown[6].stdout)["members"]) == 1
        assert shown[7].stdout.startswith("gone-for-good: not a member of group")
        # The snapshot job: written, then built on it and the deltas it covered deleted (the one DELETE grant).
        first, second = json.loads(shown[0].stdout), json.loads(shown[-1].stdout)
        assert first["written"] and second["written"] and second["base"] == first["id"]
        assert second["truncated"] == {p: off for p, off in first["positions"].items() if off > 0} != {}
        # The trainer's Kafka reads: the history it learns from, through the same settings.
        history = read_history(settings)
        assert len([e for e in history.events if type(e).__name__ == "Purchase" and e.user_id in "abcde"]) == 15
    finally:
        assert worker.stop() == 0
    log = worker.log_path.read_text()
    assert PASSWORD not in log and "**********" in log  # the masked configuration, printed at start


def test_a_wrong_password_fails_fast_with_a_clear_error(secure: tuple[str, BrokerSecurity], tmp_path: Path) -> None:
    bootstrap, security = secure
    settings = _settings(bootstrap, security, tmp_path, "wrong", sasl_password=WRONG)
    out, took = _persona(settings, "status")
    assert out.returncode == 3, out.stdout + out.stderr
    text = " ".join((out.stdout + out.stderr).split())
    assert f"refused user '{WORKER}' (SCRAM-SHA-512) over SASL_SSL" in text and "Authentication failed" in text, text
    assert WRONG not in text and PASSWORD not in text
    assert took < 20, f"took {took:.1f} s"

    worker = WorkerProcess(settings, tmp_path / "wrong-worker.log")
    rc = worker.proc.wait(timeout=60)
    log = worker.log_path.read_text()
    assert rc == 3, log[-2000:]
    assert log.count("Persona worker") == 1, "the supervisor restarted a worker that cannot log in"
    assert "AuthenticationError" in log and WRONG not in log


def test_a_denied_topic_is_a_clear_error_not_a_crash_loop(secure: tuple[str, BrokerSecurity], tmp_path: Path) -> None:
    bootstrap, security = secure
    # Authenticated, but no ACL covers this deployment's topics.
    settings = _settings(bootstrap, security, tmp_path, "denied")
    worker = WorkerProcess(settings, tmp_path / "denied-worker.log")
    rc = worker.proc.wait(timeout=60)
    log = " ".join(worker.log_path.read_text().split())
    assert rc == 1, log[-2000:]
    assert f"not authorized to create topic {settings.topic('click')} as '{WORKER}'" in log, log[-2000:]
    assert log.count("Persona worker") == 1

    # No client certificate: the TLS handshake is refused, and said so.
    no_cert = _settings(bootstrap, security, tmp_path, "nocert", ssl_certfile=None, ssl_keyfile=None)
    out, took = _persona(no_cert, "status")
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 3 and "refused user" in text, text
    assert took < 20


def test_a_write_denied_on_the_recommendations_topic_is_never_committed_past(
    secure: tuple[str, BrokerSecurity], tmp_path: Path, event_factory: EventFactory
) -> None:
    """The ACL case of stream_app.flush's DeliveryGuard (tests/chaos/test_output_refused.py has
    the size case): the broker refuses every list with TOPIC_AUTHORIZATION_FAILED; the worker
    restarts from its committed offsets instead of committing past them, and catches up once
    the ACL is fixed."""
    bootstrap, security = secure
    settings = _settings(bootstrap, security, tmp_path, "revoked")
    admin_conf = security.admin_config(bootstrap)
    acls.create(admin_conf, f"User:{WORKER}", acls.grants(settings))
    ensure_topics(settings)
    deny = [acls.Grant("TOPIC", settings.recommendations_topic, "LITERAL", "WRITE", permission="DENY")]  # beats the prefixed allow
    acls.create(admin_conf, f"User:{WORKER}", deny)
    f = event_factory
    events: list[Event] = [f.purchase(u, f"i{(n * 5 + k) % 12}", 100.0 + 10 * n + k) for n, u in enumerate("abcdef") for k in range(3)]
    publish(settings, events)
    topic = settings.topic("purchase")
    worker = WorkerProcess(settings, tmp_path / "revoked-worker.log", allow_restarts=True)
    try:
        refusal = f"output to {settings.recommendations_topic} was not delivered (TopicAuthorizationFailedError"
        deadline = time.monotonic() + 180
        while worker.log_path.read_text().count(refusal) < 2:  # refused, restarted, refused again
            assert worker.proc.poll() is None and time.monotonic() < deadline, worker.log_tail()
            time.sleep(1)
        assert group_lag(settings, [topic]) == len(events)  # nothing committed past a refused list

        acls.delete(admin_conf, f"User:{WORKER}", deny)
        wait_drained(settings, [topic], [worker], timeout=240)
        latest: dict[str, int] = {}
        for _, v, _, _, _ in scan(settings, settings.recommendations_topic):
            m = decode_recs(v or b"")
            latest[m.user_id] = max(latest.get(m.user_id, 0), m.profile_version)
        assert latest == {u: 3 for u in "abcdef"}  # every user's list counts all three purchases
    finally:
        assert worker.stop() == 0
