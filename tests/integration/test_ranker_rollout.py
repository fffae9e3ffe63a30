"""A trained ranker rolled out to a running worker on the real broker: promote, shadow, an A/B
share, rollback, each without a restart, with every event applied once.

MovieLens-100k ratings are produced in phases; before each phase the registry changes and
the test waits until the worker's ``persona_model_info`` says it followed. Every
recommendation message names the ranker that made it (``model``), so each phase's messages
are checked against what should have served them: the hand-set weights (``blend-v1``), the
published version, or, on a share, the candidate for exactly the users the stable hash puts
in its arm. The live hit rate must be counted for the shadow candidate too, whose lists are
never emitted.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from encoders.ranker_model import MANIFEST_FILE, RankerManifest
from encoders.registry import Registry
from scoring.messages import decode as decode_recs
from state.events import Event, Item, Purchase, User
from stream_app.experiment import assigned
from stream_app.inspect import all_profiles, scan
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from tests.support import WorkerProcess, metric_sum, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHASE = 500


def _version_copy(src: Path, root: Path, name: str) -> None:
    """The test ranker under another version name (the manifest is not among the hashed files)."""
    shutil.copytree(src, root / name)
    manifest = msgspec.json.decode((root / name / MANIFEST_FILE).read_bytes(), type=RankerManifest)
    (root / name / MANIFEST_FILE).write_bytes(msgspec.json.encode(msgspec.structs.replace(manifest, version=name)))


def _two_versions(trained_ranker: Path, tmp_path: Path) -> tuple[Path, Registry]:
    """A registry holding the test ranker as ``ranker-a`` and ``ranker-b``, nothing published."""
    root = tmp_path / "rankers"
    root.mkdir()
    for name in ("ranker-a", "ranker-b"):
        _version_copy(trained_ranker, root, name)
    return root, Registry(root)


def test_promote_shadow_share_and_rollback_on_a_running_worker(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    data_dir: Path,
    trained_ranker: Path,
    tmp_path: Path,
) -> None:
    root, registry = _two_versions(trained_ranker, tmp_path)
    settings = topic_factory(ranker_registry=root, model_poll_s=0.5, emit_interval_s=0.0)
    events = list(read_events("movielens", data_dir / "movielens-100k"))
    items = [e for e in events if isinstance(e, Item)]
    ratings = [e for e in events if isinstance(e, Purchase)][: 5 * PHASE]
    raters = {e.user_id for e in ratings}
    people = [e for e in events if isinstance(e, User) and e.user_id in raters]
    inputs = [settings.topic("purchase"), settings.topic("user")]
    worker = worker_factory(settings)
    worker.wait_ready()
    publish(settings, items)
    # A message answers one event: user u's n-th applied event yields the message of profile
    # version n. So each phase's messages are known by (user, version), whenever they arrive.
    applied: Counter[str] = Counter()
    phases: list[set[tuple[str, int]]] = []

    def phase(batch: list[Event]) -> None:
        keys: set[tuple[str, int]] = set()
        for e in batch:
            user = e.user_id  # type: ignore[attr-defined]
            applied[user] += 1
            keys.add((user, applied[user]))
        phases.append(keys)
        publish(settings, batch)
        wait_drained(settings, inputs, [worker], timeout=300)

    def models(n: int) -> Counter[tuple[bool, str]]:
        """Phase ``n``'s messages: (user in a 50% share?, ranker that made the list)."""
        out: Counter[tuple[bool, str]] = Counter()
        for k, v, *_ in scan(settings, settings.recommendations_topic):
            if k and v:
                msg = decode_recs(v)
                if (msg.user_id, msg.profile_version) in phases[n]:
                    out[(assigned(msg.user_id, 0.5), msg.model)] += 1
        return out

    def follows(name: str, version: str) -> None:
        worker.wait_until(lambda m: metric_sum(m, "persona_model_info", name=name, version=version) == 1, timeout=60)

    chunks = [ratings[i * PHASE : (i + 1) * PHASE] for i in range(5)]
    # 1. Nothing published: the hand-set weights.
    phase([*people, *chunks[0]])
    # 2. Promoted: every list from now on is ranker-a's.
    registry.publish("ranker-a")
    follows("ranker", "ranker-a")
    phase(chunks[1])
    # 3. ranker-b in shadow: still only ranker-a is emitted; ranker-b's lists are scored.
    registry.set_candidate("ranker-b", "shadow")
    follows("ranker-shadow", "ranker-b")
    phase(chunks[2])
    m = worker.metrics()
    assert metric_sum(m, "persona_live_positives_total", ranker="ranker-b", role="shadow") > 0
    served = metric_sum(m, "persona_live_positives_total", ranker="ranker-a", role="served")
    assert 0 < metric_sum(m, "persona_live_hits_total", ranker="ranker-a", role="served") <= served
    # 4. ranker-b on a 50% share: exactly the users in its arm get its lists.
    registry.set_candidate("ranker-b", "share", 0.5)
    follows("ranker-share", "ranker-b")
    phase(chunks[3])
    assert metric_sum(worker.metrics(), "persona_live_positives_total", ranker="ranker-b", role="served") > 0
    # 5. Trial over, ranker-b published, then rolled back: ranker-a serves everyone again.
    registry.clear_candidate()
    registry.publish("ranker-b")
    follows("ranker", "ranker-b")
    assert registry.rollback() == "ranker-a"
    follows("ranker", "ranker-a")
    phase(chunks[4])
    assert metric_sum(worker.metrics(), "persona_model_reload_failures_total") == 0
    assert worker.stop() == 0
    # Every message of a phase came from the ranker that served it.
    rankers = {0: "blend-v1", 1: "ranker-a", 2: "ranker-a", 4: "ranker-a"}
    for n, name in rankers.items():
        got = models(n)
        assert sum(got.values()) == len(phases[n]), n
        assert {model for _, model in got} == {name}, (n, got)
    share = models(3)
    assert sum(share.values()) == len(phases[3])
    assert set(share) == {(True, "ranker-b"), (False, "ranker-a")}, share
    # 0 lost, 0 double-applied: a profile's version counts the events applied to it.
    profiles = all_profiles(settings)
    assert {u: p.version for u, p in profiles.items()} == dict(applied)



def test_an_announcement_on_the_control_topic_swaps_at_once_not_at_the_next_poll(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    trained_ranker: Path,
    tmp_path: Path,
) -> None:
    from stream_app.control import announce

    root, registry = _two_versions(trained_ranker, tmp_path)
    # A poll period no test waits for: only the announcement can make the worker look.
    settings = topic_factory(ranker_registry=root, model_poll_s=3600.0)
    worker = worker_factory(settings)
    worker.wait_ready()
    registry.publish("ranker-a")
    assert announce(settings, "ranker", "publish", "ranker-a")
    worker.wait_until(lambda m: metric_sum(m, "persona_model_info", name="ranker", version="ranker-a") == 1, timeout=30)
    registry.set_candidate("ranker-b", "shadow")
    assert announce(settings, "ranker", "shadow", "ranker-b")
    worker.wait_until(lambda m: metric_sum(m, "persona_model_info", name="ranker-shadow", version="ranker-b") == 1, timeout=30)
    assert worker.stop() == 0
    # A broker nobody answers on: the announcement fails softly (the registry stays the truth).
    dead = settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    assert announce(dead, "ranker", "publish", "ranker-a", timeout_s=2.0) is False
