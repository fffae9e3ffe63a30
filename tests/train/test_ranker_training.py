"""The trained ranker: point-in-time examples, BCE fitting, ONNX parity, the quality gate.

Trainer environment only (torch). Every expectation is recomputed here: features straight
from a pipeline that replayed only the events before the label, a numpy forward pass from the
exported parameters, the gate's outcome from the figures it recorded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.train]
torch = pytest.importorskip("torch", reason="needs the trainer environment (.venv-train)")

from encoders.ranker_model import WEIGHTS_FILE, load_ranker, read_ranker_manifest  # noqa: E402
from encoders.registry import Registry  # noqa: E402
from export.ranker import Arrays, RankerNet, fit, scores, write_version  # noqa: E402
from scoring.evaluation import Interactions  # noqa: E402
from scoring.ranker import FEATURES, features, linear  # noqa: E402
from state.errors import ModelError  # noqa: E402
from state.events import Event, Purchase  # noqa: E402
from state.paths import data_dir  # noqa: E402
from stream_app.evaluate import Replay  # noqa: E402
from stream_app.settings import Settings  # noqa: E402
from stream_app.sources import read_events  # noqa: E402
from stream_app.train import gate_ranker, train_once  # noqa: E402
from stream_app.training_data import collect  # noqa: E402

LIMIT = 9000


@pytest.fixture(scope="module")
def movielens() -> list[Event]:
    return list(read_events("movielens", data_dir() / "movielens-100k", limit=LIMIT))


def _state_before(events: list[Event], settings: Settings, position: int) -> Replay:
    """A pipeline that applied exactly ``events[:position]`` (nothing is scored)."""
    run = Replay(events[:position], settings, ks=(settings.top_k,), variants=(), emit_interval_s=0.0, trace=None)
    run.window = (position, position)
    run.run("prefix", False)
    return run


def test_examples_are_point_in_time_and_the_positive_is_labelled(movielens: list[Event]) -> None:
    settings = Settings()
    examples = collect(movielens, settings, window=(0.0, 1.0), negatives=5, seed=1)
    assert examples.stats["positives"] > 0 and len(examples) > 0
    assert examples.features.shape == (len(examples), len(FEATURES))
    # One positive per group, listed first; the rest of the group are its sampled negatives.
    groups = np.unique(examples.groups)
    for g in groups:
        rows = np.flatnonzero(examples.groups == g)
        assert examples.labels[rows[0]] == 1.0 and not examples.labels[rows[1:]].any()
        assert 1 <= len(rows) <= 6
    # Independent: where are the evaluated positives? The same rule, recomputed.
    interactions, positions = Interactions(), []
    for n, e in enumerate(movielens):
        label = interactions.label(e, movielens[n + 1] if n + 1 < len(movielens) else None)
        if label is not None and label.positive and label.evaluated:
            positions.append((n, label.user_id, label.item_id))
        interactions.record(e)
    assert len(positions) == examples.stats["positives"]
    # For a few labels: features computed from a pipeline that saw only the events before the
    # label equal the collected positive row. A feature that peeked at the label's own event
    # (its purchase moving popularity or co-occurrence) would differ here.
    rng = np.random.default_rng(0)
    in_pool = [(g, p) for g, p in enumerate(positions) if (examples.groups == g).any()]
    for g, (position, user, item) in [in_pool[i] for i in rng.choice(len(in_pool), 4, replace=False)]:
        run = _state_before(movielens, settings, position)
        profile = run.store.cached(user.encode())
        assert profile is not None
        pipe = run.pipeline
        pool = features(profile, catalog=pipe.catalog, shared=pipe.shared, params=pipe.params, k=settings.top_k, weights=pipe.weights)
        assert pool is not None
        want = pool.f[:, pool.items.index(item)]
        got = examples.features[np.flatnonzero(examples.groups == g)[0]]
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=0, atol=0)
        assert isinstance(movielens[position], Purchase)


def test_bce_fit_learns_and_the_onnx_export_scores_like_torch_and_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = rng.random((6000, len(FEATURES)), dtype=np.float32)
    # Positives are likelier where cooc is high and the negative (sentiment) feature low.
    logit = 4.0 * x[:, 0] - 3.0 * x[:, 6] + 1.5 * x[:, 0] * x[:, 2] - 1.5
    y = (rng.random(6000) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    data = Arrays(x, y, np.arange(6000, dtype=np.int64))
    prior = (1.0, 0.0, 0.5, 0.0, 0.0, 0.0, -1.0)  # a production ranker to start from
    # Untrained, the network is that ranker exactly: training starts from production's order.
    # Exactly up to float32 rounding: torch 2.15 sums the product in another order than numpy,
    # and a relative bound alone failed on scores near zero (-0.00093836 against -0.00093842).
    start = RankerNet(len(FEATURES), 16, np.array(prior))
    with torch.no_grad():
        np.testing.assert_allclose(
            start(torch.from_numpy(x[:100])).numpy(), x[:100] @ np.array(prior, dtype=np.float32), rtol=1e-6, atol=1e-6
        )
    fitted = fit(data, seed=3, epochs=25, batch=512, prior=prior)
    base = y.mean()
    constant_bce = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert fitted.history["holdout_bce"] < constant_bce - 0.05
    # Same seed, same model (deterministic on CPU).
    again = fit(data, seed=3, epochs=25, batch=512, prior=prior)
    np.testing.assert_array_equal(scores(fitted, x[:50]), scores(again, x[:50]))

    staging, manifest = write_version(
        fitted, tmp_path, feature_names=FEATURES, golden=x, training={"source": "synthetic"}, metrics={}, seed=3
    )
    ranker = load_ranker(staging, FEATURES)
    probe = rng.random((300, len(FEATURES)), dtype=np.float32)
    onnx_scores = ranker(probe.T.astype(np.float64))
    np.testing.assert_allclose(onnx_scores, scores(fitted, probe), atol=1e-5)
    with np.load(staging / WEIGHTS_FILE) as w:
        hidden = np.maximum(probe @ w["hidden_weight"].T + w["hidden_bias"], 0.0)
        residual = (hidden @ w["out_weight"].T + w["out_bias"]).reshape(-1)
        by_hand = w["scale"] * (probe @ w["prior"]) + w["bias"] + residual
        np.testing.assert_array_equal(w["prior"], np.array(prior, dtype=np.float32))
    np.testing.assert_allclose(onnx_scores, by_hand, atol=1e-5)
    assert manifest.features == list(FEATURES) and manifest.seed == 3
    # A tampered graph is refused.
    (staging / "model.onnx").write_bytes((staging / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_ranker(staging, FEATURES)
    with pytest.raises(ModelError, match="features"):
        load_ranker(staging, FEATURES[:-1])


def test_the_gate_publishes_only_a_candidate_that_wins(movielens: list[Event], tmp_path: Path) -> None:
    settings = Settings(ranker_registry=tmp_path / "rankers")
    registry = Registry(settings.ranker_registry)
    kwargs = {"source": {"dataset": "movielens-100k", "limit": LIMIT}, "encoder": "none", "epochs": 5, "negatives": 5, "announce": False}
    refused = train_once(movielens, settings, margin=10.0, **kwargs)  # type: ignore[arg-type]
    assert not refused.published and registry.current_name() is None
    gate = read_ranker_manifest(refused.path).metrics["gate"]
    assert gate["passed"] is False and gate == refused.gate
    assert gate["candidate"]["ndcg@10"] < gate["production"]["ndcg@10"] * 11.0
    accepted = train_once(movielens, settings, margin=-1.0, **kwargs)  # type: ignore[arg-type]
    assert accepted.published and registry.current_name() == accepted.version
    manifest = read_ranker_manifest(accepted.path)
    assert manifest.training["positions"][1] <= manifest.metrics["gate"]["window"][0] * len(movielens)
    assert manifest.metrics["gate"]["passed"] is True
    # The next run's production is the published ranker, not the hand-set weights.
    third = train_once(movielens, settings, margin=10.0, **kwargs)  # type: ignore[arg-type]
    assert third.gate["production"]["version"] == accepted.version
    assert registry.current_name() == accepted.version


def test_a_deliberately_degraded_ranker_is_refused_by_the_gate(movielens: list[Event], tmp_path: Path) -> None:
    """Trained on inverted labels, the ranker learns to put the items users chose last: the
    gate (margin 0, the default) must refuse it, while the same network trained on the true
    labels from the same examples is not far below production."""
    settings = Settings(ranker_registry=tmp_path / "rankers")
    train, gate_window = (0.0, 0.5), (0.5, 0.75)
    examples = collect(movielens, settings, window=train, negatives=5, seed=2)
    prior = linear(settings.rank_weights())  # as train_once starts: from production's weights
    candidates = {}
    for name, labels in (("true", examples.labels), ("inverted", 1.0 - examples.labels)):
        fitted = fit(Arrays(examples.features, labels, examples.groups), seed=2, epochs=10, prior=prior)
        staging, manifest = write_version(
            fitted, tmp_path / name, feature_names=FEATURES, golden=examples.features, training={}, metrics={}, seed=2
        )
        candidates[name] = gate_ranker(
            movielens, settings, load_ranker(staging, FEATURES), gate_window=gate_window, margin=0.0, encoder=None
        )
    bad, good = candidates["inverted"], candidates["true"]
    assert bad["passed"] is False
    # Independently of the gate's own rule: the degraded model is far below production.
    assert bad["candidate"]["ndcg@10"] < 0.5 * bad["production"]["ndcg@10"]
    assert good["candidate"]["ndcg@10"] > 2.0 * bad["candidate"]["ndcg@10"]
    assert bad["production"] == good["production"]


def test_impression_study_learns_from_every_shown_item_and_scores_later_impressions() -> None:
    from state.events import Impression
    from stream_app.impressions import study

    events = list(read_events("mind", data_dir() / "mind-small-sample"))
    report = study(events, Settings(), train=0.7, test=(0.7, 1.0), negatives=2, epochs=5)
    stats = report["stats"]
    impressions = [e for e in events if isinstance(e, Impression)]
    assert stats["impressions"] == len(impressions)
    assert stats["train"] > 0 and stats["test"] > 0
    n, cut = len(events), int(0.7 * len(events))
    position = {e.event_id: i for i, e in enumerate(events)}
    # Every distinct shown item of a training impression is one example (users with history
    # only, which is why this is an upper bound), its clicks the positives.
    train_imps = [e for e in impressions if position[e.event_id] < cut]
    assert report["rankers"]["impression_negatives"]["examples"] <= sum(len(set(e.items)) for e in train_imps)
    assert report["rankers"]["impression_negatives"]["positives"] == report["rankers"]["sampled_negatives"]["positives"]
    for name in ("impression_negatives", "sampled_negatives", "hand_set_weights"):
        r = report["rankers"][name]
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["ndcg@10"] <= 1.0
        assert r["impressions"] == stats["test"] <= sum(1 for e in impressions if position[e.event_id] >= cut)
    assert n == report["events"]
