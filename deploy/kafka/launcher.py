"""Start and stop a single-node Apache Kafka broker (KRaft) without Docker.

The broker runs from jars resolved by Maven into a per-user cache; each data
directory holds its own config, KRaft storage, pid file and log.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from deploy import ports
from deploy.kafka.secure import BrokerSecurity
from state.errors import BrokerError, ConfigError

KAFKA_VERSION = "4.1.1"

_POM = Path(__file__).resolve().with_name("pom.xml")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_HOST = "127.0.0.1"
_PID_FILE = "broker.pid"
_BOOTSTRAP_FILE = "bootstrap"
_LOG_FILE = "kafka.log"
_JARS_MARKER = ".jars-complete"
_JVM_OPTS = ("-Xms256m", "-Xmx768m", "-XX:+UseG1GC")

_log = logging.getLogger(__name__)

# Brokers spawned by this process. Holding the Popen lets us reap them: an
# unreaped child stays a zombie that os.kill(pid, 0) still reports as alive.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LauncherError(BrokerError):
    """The local broker could not be set up: no Maven to fetch the jars, a busy port, a
    JVM that exited or was not ready in time, a failing command."""

PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class BrokerHandle:
    bootstrap: str
    pid: int
    data_dir: Path
    log_file: Path


def cache_dir() -> Path:
    """Where the broker jars live; per user and outside the repo so clones share it."""
    env = os.environ.get("PERSONA_KAFKA_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "persona" / f"kafka-{KAFKA_VERSION}"


def default_data_dir() -> Path:
    env = os.environ.get("PERSONA_KAFKA_DATA")
    if env:
        return Path(env).expanduser().resolve()
    root = _REPO_ROOT if (_REPO_ROOT / ".git").exists() else Path.cwd()
    return root / "var" / "kafka"


def ensure_jars() -> Path:
    """Resolve the broker classpath into ``cache_dir()/libs`` once; return that dir."""
    cache = cache_dir()
    libs = cache / "libs"
    marker = cache / _JARS_MARKER
    # Keyed on the pom so a version bump re-resolves instead of mixing jar sets.
    fingerprint = hashlib.sha256(_POM.read_bytes()).hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    # Parallel test workers can all hit a cold cache; the lock keeps any of them
    # from launching a JVM against a half-copied libs/.
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if libs.is_dir() and _read_text(marker) == fingerprint:
            return libs
        partial = cache / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        if shutil.which("mvn") is None:
            raise LauncherError("mvn is not on PATH; it is needed once to fetch the Kafka jars")
        _run(["mvn", "-q", "-B", "-f", str(_POM), "dependency:copy-dependencies",
              f"-DoutputDirectory={partial}"])
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        marker.write_text(fingerprint)
    return libs


def start(
    port: int = 9092, data_dir: Path | None = None, *, timeout_s: float = 60, security: BrokerSecurity | None = None
) -> BrokerHandle:
    """Launch a detached broker and wait until it serves metadata.

    If ``data_dir`` already records a live broker, that broker's handle is
    returned (whatever port it listens on): a second JVM would only die on the
    log-dir lock. With ``security``, the broker serves SASL_SSL with SCRAM-SHA-512 and
    required client certificates, with ACLs enforced (:mod:`deploy.kafka.secure`).
    """
    if not 0 < port < 65536:
        raise ConfigError(f"port must be in 1..65535, got {port}")
    data_dir = (data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = _recorded(data_dir)
    if existing is not None:
        _wait_ready(existing, time.monotonic() + timeout_s, security)
        return existing
    if not ports.bindable(port, _HOST, reuse_addr=True):
        raise LauncherError(f"port {port} on {_HOST} is already in use")
    # The controller's listener: port + 1 by convention (9093 beside 9092), unless that lies in
    # the ephemeral range, where an outgoing connection may take it while the JVM starts
    # (deploy/ports.py); then a free port outside it.
    cport = port + 1 if not ports.is_ephemeral(port + 1) and ports.bindable(port + 1, _HOST, reuse_addr=True) else ports.free_port(_HOST)

    classpath = f"{ensure_jars()}/*"
    log_file = data_dir / _LOG_FILE
    props = data_dir / "server.properties"
    props.touch(mode=0o600)  # it may hold the keystore and admin passwords
    props.write_text(_server_properties(port, cport, data_dir, security))
    log4j = data_dir / "log4j2.properties"
    log4j.write_text(_log4j_properties(log_file))
    jvm = ["java", *_JVM_OPTS, "-cp", classpath, f"-Dlog4j2.configurationFile={log4j}"]
    if not (data_dir / "logs" / "meta.properties").exists():
        cluster_id = _run([*jvm, "kafka.tools.StorageTool", "random-uuid"]).split()[-1]
        extra = security.format_args() if security is not None else []
        _run([*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), *extra], secret=security is not None)

    bootstrap = f"{_HOST}:{port}"
    # Written before the pid so that whoever sees a pid file can also read the address.
    (data_dir / _BOOTSTRAP_FILE).write_text(bootstrap + "\n")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(props)],
            cwd=data_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # outlive the caller and let stop() signal the whole group
        )
    _CHILDREN[proc.pid] = proc
    (data_dir / _PID_FILE).write_text(f"{proc.pid}\n")
    handle = BrokerHandle(bootstrap, proc.pid, data_dir, log_file)
    started = time.monotonic()
    try:
        _wait_ready(handle, started + timeout_s, security)
    except BaseException:
        stop(handle, timeout_s=5)
        raise
    _log.info("Kafka %s up at %s (pid %d) in %.1fs", KAFKA_VERSION, handle.bootstrap,
              proc.pid, time.monotonic() - started)
    return handle


def stop(handle_or_data_dir: BrokerHandle | PathArg | None = None, *, timeout_s: float = 20) -> bool:
    """SIGTERM the broker's process group, SIGKILL after ``timeout_s``; True if one was running."""
    if isinstance(handle_or_data_dir, BrokerHandle):
        data_dir, pid = handle_or_data_dir.data_dir, handle_or_data_dir.pid
    else:
        data_dir = Path(handle_or_data_dir) if handle_or_data_dir is not None else default_data_dir()
        data_dir = data_dir.resolve()
        pid = _read_pid(data_dir) or 0
    stopped = False
    if pid > 0 and _alive(pid) and _is_our_broker(pid, data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            if not _wait_exit(pid, timeout_s):
                _log.warning("Kafka pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
                os.killpg(pid, signal.SIGKILL)
                _wait_exit(pid, 5)
        stopped = True
    # A stale handle must not drop the pid file of a newer broker in the same dir.
    recorded = _read_pid(data_dir)
    if recorded is not None and (recorded == pid or not _alive(recorded)):
        (data_dir / _PID_FILE).unlink(missing_ok=True)
    return stopped


def status(data_dir: PathArg | None = None) -> BrokerHandle | None:
    """The recorded broker if its process is alive and its port accepts connections."""
    path = Path(data_dir).resolve() if data_dir is not None else default_data_dir()
    handle = _recorded(path)
    if handle is not None and _port_open(handle.bootstrap):
        return handle
    return None


def _recorded(data_dir: Path) -> BrokerHandle | None:
    """Handle for the broker in the pid file, dropping the file when it is stale."""
    pid = _read_pid(data_dir)
    if pid is None:
        return None
    bootstrap = (_read_text(data_dir / _BOOTSTRAP_FILE) or "").strip()
    if not bootstrap or not _alive(pid) or not _is_our_broker(pid, data_dir):
        (data_dir / _PID_FILE).unlink(missing_ok=True)
        return None
    return BrokerHandle(bootstrap, pid, data_dir, data_dir / _LOG_FILE)


def _wait_ready(handle: BrokerHandle, deadline: float, security: BrokerSecurity | None = None) -> None:
    admin: AdminClient | None = None
    conf: dict[str, Any] = security.admin_config(handle.bootstrap) if security is not None else {"bootstrap.servers": handle.bootstrap}
    while True:
        alive = _alive(handle.pid)
        if not alive or time.monotonic() > deadline:
            problem = "was not ready in time" if alive else "exited during startup"
            raise LauncherError(f"Kafka at {handle.bootstrap} (pid {handle.pid}) {problem}; "
                                f"{handle.log_file} ends with:\n{_tail(handle.log_file)}")
        # Plain TCP until the port listens: librdkafka backs off reconnects up to
        # 10 s, which would pad every start if it were aimed at a closed port.
        if admin is None and _port_open(handle.bootstrap):
            admin = AdminClient(conf, logger=_log)
        # A broker appears in metadata only once the controller unfences it, so
        # an answer with a broker in it also means topics can be created.
        with contextlib.suppress(KafkaException):
            timeout = min(max(deadline - time.monotonic(), 0.1), 5.0)
            if admin is not None and admin.list_topics(timeout=timeout).brokers:
                return
        time.sleep(0.2)


def _run(cmd: list[str], *, secret: bool = False) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # A command line with a password in it is not repeated in the error.
        shown = " ".join(cmd[:6]) + " ..." if secret else " ".join(cmd)
        raise LauncherError(f"{shown} failed with exit code {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _server_properties(port: int, cport: int, data_dir: Path, security: BrokerSecurity | None = None) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{_HOST}:{cport}",
        "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        # Single node: internal topics must not ask for replicas that cannot exist.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        # Apps must declare their topics, as they will against a real cluster.
        "auto.create.topics.enable": "false",
        # Tests on compacted (changelog) topics should not wait 15 s per cleaner pass;
        # the default 128 MiB dedupe buffer is wasted on a 768 MiB heap.
        "log.cleaner.backoff.ms": "1000",
        "log.cleaner.min.cleanable.ratio": "0.1",
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    }
    if security is not None:
        props.update(security.server_properties(port, cport, _HOST))
    return "".join(f"{key}={value}\n" for key, value in props.items())


def _log4j_properties(log_file: Path) -> str:
    return f"""\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# Kafka still logs while the JVM exits; log4j's own hook would then complain into the log.
shutdownHook = disable
# Per-request logging floods the file; Kafka's own default config silences it too.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.channel.name = kafka.network.RequestChannel$
logger.channel.level = WARN
"""


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Another parent may not have reaped it yet; a zombie still answers kill(0).
    stat = _read_text(Path(f"/proc/{pid}/stat"))
    return stat is None or stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: only signal a Kafka JVM started for this data dir."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no procfs (macOS): trust the pid file
    return b"kafka.Kafka" in argv and str(data_dir / "server.properties").encode() in argv


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _port_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _read_pid(data_dir: Path) -> int | None:
    text = (_read_text(data_dir / _PID_FILE) or "").strip()
    return int(text) if text.isdigit() else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        fh.seek(max(fh.seek(0, os.SEEK_END) - 16384, 0))  # the log is never rotated
        return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    return "(no log)"
