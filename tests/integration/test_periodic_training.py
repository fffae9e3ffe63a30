"""The periodic training job against the real broker, end to end.

A worker serves the base encoder and the hand-set weights while the first 70% of the Amazon
2018 Magazines stream (catalog, purchases, reviews with text) is produced. Then ``persona
train --from-topics --every 1s --runs 1`` (the trainer environment, a separate process, as
in production) reads that history from the input topics, fine-tunes the encoder, fits the
ranker under it, and publishes both (``--margin -1``: this test is about the rollout, the
gate's refusals are pinned in tests/train). The worker must follow both announcements
without a restart and serve the rest of the stream with them: every later message made by
the new ranker, every event applied once, and the interest of users seen on both sides of
the swap moved to the new encoder version with what it knew before (not restarted from the
first new vector).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from deploy.workers import WorkerProcess, metric_sum, settings_env, wait_drained
from encoders.artifact import read_manifest
from encoders.registry import Registry
from scoring.messages import decode as decode_recs
from state.events import Event, Item, Purchase, Review
from state.paths import REPO_ROOT
from stream_app.inspect import all_profiles, scan
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from tests.integration.test_reviews_encoder import _registry_copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAGAZINES = "amazon2018-small-5core/Magazine_Subscriptions_5.json.gz"
TRAINER = REPO_ROOT / ".venv-train" / "bin" / "persona"


def test_a_periodic_run_publishes_encoder_and_ranker_and_the_worker_serves_both(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    data_dir: Path,
    encoder_registry: tuple[Path, list[str]],
    tmp_path: Path,
) -> None:
    if not TRAINER.exists():
        pytest.skip("needs the trainer environment (.venv-train): make setup-train")
    root, versions = encoder_registry
    base = versions[0]
    registry = _registry_copy(root, tmp_path / "encoders", [base], base)
    settings = topic_factory(
        model_registry=registry, ranker_registry=tmp_path / "rankers", model_poll_s=900.0, emit_interval_s=0.0
    )
    events: list[Event] = list(read_events("amazon", data_dir / MAGAZINES))
    cut = int(0.7 * len(events))
    before, after = events[:cut], events[cut:]
    inputs = [settings.topic("purchase"), settings.topic("review"), settings.topic("item"), settings.encoded_reviews_topic]
    worker = worker_factory(settings)
    worker.wait_ready()
    publish(settings, before)
    wait_drained(settings, inputs, [worker], timeout=600)
    pid = worker.proc.pid

    report_path = tmp_path / "train.json"
    run = subprocess.run(
        [
            str(TRAINER), "train", "--from-topics", "--every", "1s", "--runs", "1", "--models", "encoder,ranker",
            "--margin", "-1", "--encoder-pairs", "128", "--freeze", "5", "--epochs", "10", "--negatives", "5",
            "--train-slice", "0:0.8", "--gate-slice", "0.8:1", "--no-progress", "--report-json", str(report_path),
        ],
        env={**os.environ, **settings_env(settings), "HF_HUB_OFFLINE": "1"},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    said = " ".join(run.stderr.split())  # the CLI reports on stderr; rich wraps long lines
    assert "runs: {'published': 1, 'rejected': 0, 'failed': 0}" in said, said[-2000:]
    report = json.loads(report_path.read_text())
    new_encoder, new_ranker = report["encoder"]["version"], report["ranker"]["version"]
    assert report["encoder"]["published"] and report["ranker"]["published"]
    assert Registry(registry).current_name() == new_encoder
    assert Registry(settings.ranker_registry).current_name() == new_ranker
    # The encoder's manifest: checked parity, pairs only from the training slice, the gate's
    # figures (with both sentiment Spearmans) and the topics' offsets it learned from.
    em = read_manifest(registry / new_encoder)
    assert em.parity.checked and em.parity.min_cos is not None and em.parity.min_cos >= 0.9999
    read = em.training["events_read"]
    assert em.training["positions"][1] < 0.8 * read <= em.gate["window"][0] * read
    assert em.gate == report["encoder"]["gate"] and em.gate["production"]["version"] == base
    for role in ("candidate", "production"):
        rho = em.gate[role]["sentiment_spearman"]
        assert rho is not None and 0.0 < rho < 1.0
    assert em.training["offsets"] and em.training["steps"] == 2
    # The ranker learned its features under the new encoder, from the topics' offsets.
    ranker_manifest = json.loads((Path(settings.ranker_registry) / new_ranker / "manifest.json").read_text())
    assert ranker_manifest["training"]["encoder"] == new_encoder
    assert ranker_manifest["training"]["offsets"]

    # The announcements swap both (the registry poll is 900 s away, past the whole test; a swap re-encodes the catalog).
    worker.wait_until(
        lambda m: metric_sum(m, "persona_model_info", name="ranker", version=new_ranker) == 1
        and metric_sum(m, "persona_model_info", version=new_encoder) == 1
        and metric_sum(m, "persona_item_vectors_ready") == 1,
        timeout=120,
    )
    applied = Counter(e.user_id for e in before if isinstance(e, Purchase | Review))
    later: set[tuple[str, int]] = set()
    for e in after:
        if isinstance(e, Purchase | Review):
            applied[e.user_id] += 1
            later.add((e.user_id, applied[e.user_id]))
    publish(settings, after)
    wait_drained(settings, inputs, [worker], timeout=600)
    m = worker.metrics()
    assert worker.proc.pid == pid and metric_sum(m, "persona_supervisor_restarts_total") == 0
    assert metric_sum(m, "persona_model_reload_failures_total") == 0
    assert worker.stop() == 0

    # Every message answering a later event was ranked by the new ranker.
    made_by: Counter[str] = Counter()
    for k, v, *_ in scan(settings, settings.recommendations_topic):
        if k and v:
            msg = decode_recs(v)
            if (msg.user_id, msg.profile_version) in later:
                made_by[msg.model] += 1
    assert sum(made_by.values()) == len(later) and set(made_by) == {new_ranker}, made_by

    # 0 lost, 0 double-applied: a profile's version counts the events applied to it.
    profiles = all_profiles(settings)
    assert {u: p.version for u, p in profiles.items()} == dict(applied)

    # The interest moved to the new version and kept the history: for users engaged with
    # texted items on both sides, the stored interest is not the last new vector alone.
    texted = {e.item_id for e in events if isinstance(e, Item) and e.text.strip()}
    first = {e.user_id for e in before if isinstance(e, Purchase | Review) and e.item_id in texted}
    second: dict[str, list[str]] = {}
    for e in after:
        if isinstance(e, Purchase | Review) and e.item_id in texted and e.user_id in first:
            second.setdefault(e.user_id, []).append(e.item_id)
    both = {u for u, items in second.items() if len(set(items)) == 1}
    assert len(both) >= 5, len(both)
    from encoders import load_encoder
    from state.events import item_text

    encoder = load_encoder(registry / new_encoder, device="cpu")
    catalog = {e.item_id: e for e in events if isinstance(e, Item)}
    carried = 0
    for user in sorted(both):
        interest = profiles[user].interest
        assert interest is not None and interest.version == new_encoder, user
        stored = np.frombuffer(interest.sum, dtype="<f4")
        item = catalog[second[user][0]]
        only = encoder.encode([item_text(item.title, item.categories, item.text)])[0]
        cos = float(stored @ only / (np.linalg.norm(stored) * np.linalg.norm(only)))
        carried += cos < 0.999
    assert carried == len(both), (carried, len(both))
