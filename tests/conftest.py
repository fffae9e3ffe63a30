"""Shared fixtures: a real Kafka broker, fresh topic sets, events, and worker processes."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from encoders.registry import Registry
from state.events import Click, Follow, Item, Purchase, Review, User
from state.paths import REPO_ROOT as REPO
from stream_app.settings import DEFAULT_DATA_DIR, Settings
from tests.support import TEST_MODEL_REGISTRY, WorkerProcess, free_port

log = logging.getLogger("persona.tests")

DATA_DIR = Path(os.environ.get("PERSONA_DATA_DIR") or DEFAULT_DATA_DIR)
_BROKER_KEY = pytest.StashKey[str]()
_NODE_BROKERS_KEY = pytest.StashKey[list[str]]()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker: $KAFKA_BOOTSTRAP_SERVERS, else testcontainers'
    Kafka when a Docker engine answers, else the launcher in deploy/kafka."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        _note_broker(request, f"KAFKA_BOOTSTRAP_SERVERS={env}")
        yield env
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            bootstrap = container.get_bootstrap_server()
            _note_broker(request, f"testcontainers Kafka at {bootstrap}")
            yield bootstrap
        return
    from deploy.kafka import launcher

    data_dir = tmp_path_factory.mktemp("kafka")
    handle = launcher.start(port=free_port(), data_dir=data_dir)
    _note_broker(
        request, f"deploy/kafka launcher: Apache Kafka {launcher.KAFKA_VERSION} (KRaft) at {handle.bootstrap}, pid {handle.pid}"
    )
    log.info("kafka broker: %s", request.config.stash[_BROKER_KEY])
    try:
        yield handle.bootstrap
    finally:
        launcher.stop(handle)


def _note_broker(request: pytest.FixtureRequest, text: str) -> None:
    """Record the broker for the run's summary; under pytest-xdist (deploy/run-tests.sh) each
    process has a broker of its own, and only the controller prints a summary."""
    request.config.stash[_BROKER_KEY] = text
    workeroutput = getattr(request.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["kafka_broker"] = text


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: a process ended; keep the broker it reported."""
    used = getattr(node, "workeroutput", {}).get("kafka_broker")
    if used:
        node.config.stash.setdefault(_NODE_BROKERS_KEY, []).append(used)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    used = [config.stash[_BROKER_KEY]] if _BROKER_KEY in config.stash else []
    # Once each: processes given KAFKA_BOOTSTRAP_SERVERS share one broker.
    for text in dict.fromkeys(used + sorted(config.stash.get(_NODE_BROKERS_KEY, []))):
        terminalreporter.write_line(f"Kafka broker used by integration tests: {text}")


_counter = itertools.count()


@pytest.fixture
def topic_factory(kafka_broker: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a fresh, isolated topic set (own prefix, app id, state dir), topics created."""
    from stream_app.topics import ensure_topics

    def make(**overrides: Any) -> Settings:
        n = next(_counter)
        tag = f"t{os.getpid()}x{n}"
        values: dict[str, Any] = {
            "bootstrap_servers": kafka_broker,
            "topic_prefix": f"{tag}.",
            "app_id": f"persona-{tag}",
            "state_dir": tmp_path / f"state-{n}",
            "web_port": free_port(),
            "commit_interval_s": 0.5,
            "session_timeout_s": 6.0,
            "stall_timeout_s": 30.0,
            "data_dir": DATA_DIR,
            # Hermetic: no encoder unless a test passes its own registry.
            "model_registry": tmp_path / "no-models",
        }
        values.update(overrides)
        settings = Settings(**values)
        ensure_topics(settings)
        return settings

    return make


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``persona worker`` subprocesses; all are stopped (or killed) at teardown."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, *, allow_restarts: bool = False, **overrides: Any) -> WorkerProcess:
        if overrides:
            settings = settings.model_copy(update=overrides)
        w = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log", allow_restarts=allow_restarts)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(timeout=20)


class EventFactory:
    """Valid events with unique, deterministic ids."""

    def __init__(self) -> None:
        self._n = itertools.count()

    def _id(self, kind: str) -> str:
        return f"test-{kind}-{next(self._n)}"

    def click(self, user: str, item: str, ts: float) -> Click:
        return Click(event_id=self._id("c"), ts=ts, user_id=user, item_id=item)

    def purchase(self, user: str, item: str, ts: float, price: float | None = None) -> Purchase:
        return Purchase(event_id=self._id("p"), ts=ts, user_id=user, item_id=item, price=price)

    def review(self, user: str, item: str, ts: float, text: str = "fine", rating: float | None = 4.0) -> Review:
        return Review(event_id=self._id("r"), ts=ts, user_id=user, item_id=item, text=text, rating=rating)

    def follow(self, user: str, followee: str, ts: float, action: str = "follow") -> Follow:
        return Follow(event_id=self._id("f"), ts=ts, user_id=user, followee_id=followee, action=action)  # type: ignore[arg-type]

    def item(self, item: str, categories: list[str], ts: float = 0.0, title: str = "") -> Item:
        return Item(event_id=self._id("i"), ts=ts, item_id=item, title=title, categories=categories)

    def user(self, user: str, ts: float = 0.0, **attributes: str | int | float | bool) -> User:
        return User(event_id=self._id("u"), ts=ts, user_id=user, attributes=attributes)


@pytest.fixture
def event_factory() -> EventFactory:
    return EventFactory()


@pytest.fixture
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"datasets not found at {DATA_DIR} (set PERSONA_DATA_DIR)")
    return DATA_DIR


MODEL_REGISTRY = TEST_MODEL_REGISTRY
#: The trained ranker `make test-models` fits on a MovieLens prefix (deploy/test-models.sh),
#: in a folder keyed by the trainer's code (the same digest as the script's).
_TRAINER_CODE = b"".join((REPO / name).read_bytes() for name in ("export/ranker.py", "stream_app/training_data.py"))
RANKER_REGISTRY = TEST_MODEL_REGISTRY.parent / f"ranker-{hashlib.sha256(_TRAINER_CODE).hexdigest()[:12]}"


@pytest.fixture(scope="session")
def trained_ranker() -> Path:
    """The published version folder of the test ranker registry."""
    current = Registry(RANKER_REGISTRY).current()
    if current is None:
        pytest.skip(f"no trained ranker in {RANKER_REGISTRY}: run `make test-models` (trainer env)")
    return current


@pytest.fixture(scope="session")
def encoder_registry() -> tuple[Path, list[str]]:
    """A registry with an fp32 and an int8 export of the packaged all-MiniLM-L6-v2.

    `make test` builds it with the trainer environment (`make test-models`); exports are
    build outputs, so they live under var/ and are never committed.
    """
    registry = Registry(MODEL_REGISTRY)
    fp32, int8 = registry.latest("fp32"), registry.latest("int8")
    if fp32 is None or int8 is None:
        pytest.skip(f"no fp32+int8 encoder exports in {MODEL_REGISTRY}: run `make test-models` (trainer env)")
    return MODEL_REGISTRY, [fp32.name, int8.name]
