"""A trained ranker in the worker's pipeline: hot swap, scores, reasons, refusal, the training loop.

The ranker is the one `make test-models` fits on a MovieLens prefix. Its scores are
recomputed here with numpy from the parameters it was exported with (``weights.npz``),
over the features the ranker's own candidate generation gives.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders.ranker_model import MODEL_FILE, WEIGHTS_FILE, RankerHolder, load_ranker
from encoders.registry import Registry
from scoring.baseline import tie_key
from scoring.ranker import FEATURES, features
from state.errors import ModelError, PersonaError
from state.events import Event
from state.paths import data_dir
from stream_app.evaluate import Replay
from stream_app.settings import Settings
from stream_app.sources import read_events
from stream_app.train import TrainResult, every, parse_duration


def _forward(folder: Path, f: np.ndarray) -> np.ndarray:
    """``scale * (x @ prior) + bias + out(relu(hidden(x)))`` (export.ranker.RankerNet) in numpy."""
    x = f.T.astype(np.float32)
    with np.load(folder / WEIGHTS_FILE) as w:
        hidden = np.maximum(x @ w["hidden_weight"].T + w["hidden_bias"], 0.0)
        residual = (hidden @ w["out_weight"].T + w["out_bias"]).reshape(-1)
        out: np.ndarray = w["scale"] * (x @ w["prior"]) + w["bias"] + residual
    return out


@pytest.fixture(scope="module")
def replayed() -> Replay:
    events: list[Event] = list(read_events("movielens", data_dir() / "movielens-100k", limit=6000))
    settings = Settings()
    run = Replay(events, settings, ks=(10,), variants=(), emit_interval_s=0.0, trace=None)
    run.window = (len(events), len(events))
    run.run("movielens prefix", False)
    return run


def test_pipeline_hot_swaps_to_the_trained_ranker_and_back(replayed: Replay, trained_ranker: Path) -> None:
    pipe = replayed.pipeline
    model = load_ranker(trained_ranker, FEATURES)
    users = sorted(k.decode() for k in replayed.store.profiles)[:25]
    hand = {u: pipe.recommend(replayed.store.cached(u.encode())) for u in users}  # type: ignore[arg-type]
    pipe.use_ranker(model)
    changed = 0
    for u in users:
        profile = replayed.store.cached(u.encode())
        assert profile is not None
        got = pipe.recommend(profile)
        pool = features(profile, catalog=pipe.catalog, shared=pipe.shared, params=pipe.params, k=10, weights=pipe.weights)
        assert pool is not None
        want = _forward(trained_ranker, pool.f)
        order = sorted(range(len(pool.items)), key=lambda j: (-float(want[j]), tie_key(u, pool.items[j])))
        expected = [pool.items[j] for j in order[:10]]
        # float32 graph vs numpy float32: equal up to rounding, so compare scores, then ids
        # wherever the expected scores are not near-tied.
        assert [s.score for s in got.items] == pytest.approx([round(float(want[j]), 6) for j in order[:10]], abs=2e-5)
        gaps = np.diff([float(want[j]) for j in order[:11]])
        if np.all(np.abs(gaps) > 1e-4):
            assert [s.item_id for s in got.items] == expected
        assert all(s.reasons for s in got.items)
        assert not {s.item_id for s in got.items} & set(profile.purchased)
        changed += [s.item_id for s in got.items] != [s.item_id for s in hand[u].items]
    assert changed > 0, "the trained ranker ranked every list exactly like the hand-set weights"
    pipe.use_ranker(None)
    for u in users:
        again = pipe.recommend(replayed.store.cached(u.encode()))  # type: ignore[arg-type]
        assert [(s.item_id, s.score) for s in again.items] == [(s.item_id, s.score) for s in hand[u].items]


def test_ranker_holder_follows_current_and_keeps_serving_when_a_version_is_broken(tmp_path: Path, trained_ranker: Path) -> None:
    root = tmp_path / "rankers"
    root.mkdir()
    registry = Registry(root)
    holder = RankerHolder(root, FEATURES)
    assert holder.refresh() is False and holder.ranker is None  # nothing published yet
    shutil.copytree(trained_ranker, root / "ranker-a")
    shutil.copytree(trained_ranker, root / "ranker-b")
    (root / "ranker-b" / MODEL_FILE).write_bytes(b"not a graph")
    registry.publish("ranker-a")
    assert holder.refresh() is True and holder.ranker is not None
    first = holder.ranker
    assert holder.refresh() is False  # same CURRENT: nothing to do
    registry.publish("ranker-b")
    assert holder.refresh() is False
    assert holder.failures == 1 and holder.ranker is first  # still serving a
    assert holder.refresh() is False and holder.failures == 1  # not retried until CURRENT moves
    with pytest.raises(ModelError, match="sha256"):
        load_ranker(root / "ranker-b", FEATURES)


def test_every_counts_a_failed_run_and_tries_again_next_period(tmp_path: Path) -> None:
    outcomes: list[object] = [PersonaError("broker down"), TrainResult("v2", tmp_path, True, {}), TrainResult("v3", tmp_path, False, {})]
    slept: list[float] = []

    def run() -> TrainResult:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, TrainResult)
        return outcome

    failures: list[BaseException] = []
    counts = every(3600.0, run, runs=3, sleep=slept.append, on_failure=failures.append)
    assert counts == {"published": 1, "rejected": 1, "failed": 1}
    assert len(slept) == 2 and all(3599.0 < s <= 3600.0 for s in slept)
    assert [str(f) for f in failures] == ["broker down"]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("1d", 86400.0), ("45", 45.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1h", "soon"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(PersonaError):
        parse_duration(text)


def test_leakage_changing_or_removing_later_events_leaves_earlier_labels_unchanged() -> None:
    """The trainer's examples of labels before a cut are the same whatever follows the cut:
    later events removed, or changed (other users, other items, other ratings)."""
    import msgspec

    from state.events import Purchase, Review
    from stream_app.training_data import collect

    events: list[Event] = list(read_events("movielens", data_dir() / "movielens-100k", limit=5000))
    settings = Settings()
    cut = 4000
    tail = events[cut:]
    items = sorted({e.item_id for e in events if isinstance(e, Purchase)})

    def change(n: int, e: Event) -> Event:
        if isinstance(e, Purchase):
            return msgspec.structs.replace(e, item_id=items[(n * 7) % len(items)])
        if isinstance(e, Review):
            return msgspec.structs.replace(e, item_id=items[(n * 7) % len(items)], rating=6.0 - (e.rating or 3.0))
        return e

    changed = [change(n, e) for n, e in enumerate(tail)]
    assert sum(a != b for a, b in zip(tail, changed, strict=True)) > 500
    full = collect(events, settings, window=(0.0, 1.0), negatives=4, seed=2)
    variants = {
        "removed": collect(events[:cut], settings, window=(0.0, 1.0), negatives=4, seed=2),
        "changed": collect(events[:cut] + changed, settings, window=(0.0, 1.0), negatives=4, seed=2),
    }
    rows = int(np.sum(full.positions < cut))
    assert rows > 1000 and np.all(full.positions[:rows] < cut)
    for name, other in variants.items():
        np.testing.assert_array_equal(other.features[:rows], full.features[:rows], err_msg=name)
        np.testing.assert_array_equal(other.labels[:rows], full.labels[:rows], err_msg=name)
    assert len(variants["removed"]) == rows
    # The changed tail does change the later examples (the check above is not vacuous).
    later = min(len(full), len(variants["changed"]))
    assert not np.array_equal(variants["changed"].features[rows:later], full.features[rows:later])


def test_promote_and_rollback_walk_the_published_versions(tmp_path: Path, trained_ranker: Path) -> None:
    from typer.testing import CliRunner

    from stream_app.cli import app
    from stream_app.model_ops import list_versions

    root = tmp_path / "rankers"
    root.mkdir()
    for name in ("ranker-a", "ranker-b", "ranker-c", "ranker-unused"):
        shutil.copytree(trained_ranker, root / name)
    registry = Registry(root)
    runner = CliRunner()
    env = {"PERSONA_RANKER_REGISTRY": str(root)}
    with pytest.raises(ModelError, match="roll back"):
        registry.rollback()  # nothing published yet
    for name in ("ranker-a", "ranker-b", "ranker-c"):
        assert runner.invoke(app, ["model", "promote", name, "--no-announce"], env=env).exit_code == 0
    assert registry.current_name() == "ranker-c"
    holder = RankerHolder(root, FEATURES)
    assert holder.refresh() and holder.version is not None
    assert runner.invoke(app, ["model", "rollback", "--no-announce"], env=env).exit_code == 0
    assert registry.current_name() == "ranker-b"
    assert holder.refresh() is True  # a worker's holder follows the rollback
    assert registry.rollback() == "ranker-a"  # a second rollback goes one further back
    with pytest.raises(ModelError):
        registry.rollback()
    assert registry.current_name() == "ranker-a"
    assert [a for _, a, _ in registry.history()] == ["publish"] * 3 + ["rollback"] * 2
    # Promoting again after rollbacks starts a new line of history.
    registry.publish("ranker-c")
    assert registry.rollback() == "ranker-a"
    statuses = {r["version"]: r["status"] for r in list_versions("ranker", root)}
    # (the fixture ranker passed its gate: --margin -1)
    assert statuses == {"ranker-a": "serving", "ranker-b": "served before", "ranker-c": "served before", "ranker-unused": "not published"}
    bad = runner.invoke(app, ["model", "promote", "no-such-version", "--no-announce"], env=env)
    assert bad.exit_code == 1 and "not a complete version" in bad.output
    listed = runner.invoke(app, ["model", "list", "--kind", "ranker", "--json"], env=env)
    assert listed.exit_code == 0 and '"ranker-a"' in listed.output


def test_ab_share_assignment_is_stable_and_close_to_the_share() -> None:
    from stream_app.experiment import assigned

    users = [f"u{n}" for n in range(20_000)]
    picked = [u for u in users if assigned(u, 0.1)]
    assert 0.09 * len(users) < len(picked) < 0.11 * len(users)
    assert picked == [u for u in users if assigned(u, 0.1)]  # same answer every time
    assert set(picked) <= {u for u in users if assigned(u, 0.3)}  # a wider share keeps its users
    assert not any(assigned(u, 0.0) for u in users[:500]) and all(assigned(u, 1.0) for u in users[:500])


def _replay_with(candidate_mode: str, share: float, trained_ranker: Path) -> tuple[Replay, list[tuple[str, str, list[str]]]]:
    from scoring.messages import decode as decode_recs
    from stream_app.experiment import Candidate

    events: list[Event] = list(read_events("movielens", data_dir() / "movielens-100k", limit=6000))
    run = Replay(events, Settings(), ks=(10,), variants=(), emit_interval_s=0.0, trace=None)
    run.window = (len(events), len(events))
    model = load_ranker(trained_ranker, FEATURES)
    run.pipeline.use_candidate(Candidate(model, "shadow" if candidate_mode == "shadow" else "share", share))
    sent: list[tuple[str, str, list[str]]] = []
    run.on_message = lambda key, value: sent.append(
        (key.decode(), (m := decode_recs(value)).model, [s.item_id for s in m.items])
    )
    run.run("movielens prefix", False)
    return run, sent


def test_shadow_ranks_the_candidate_without_emitting_it_and_live_hits_match_the_emitted_lists(trained_ranker: Path) -> None:
    from state.events import Purchase, Review

    run, sent = _replay_with("shadow", 0.0, trained_ranker)
    version = load_ranker(trained_ranker, FEATURES).version
    assert sent and {model for _, model, _ in sent} == {"blend-v1"}  # only production is shown
    # The live hit rate recomputed from what was emitted: a positive (first purchase or review
    # rated >= 4 or unrated) is a hit when its item was in the user's last message.
    last: dict[str, set[str]] = {}
    hits = positives = 0
    seen: dict[str, set[str]] = {}
    it = iter(sent)
    pending = next(it, None)
    for e in run.events:
        if isinstance(e, (Purchase, Review)):
            first = e.item_id not in seen.setdefault(e.user_id, set())
            good = not isinstance(e, Review) or e.rating is None or e.rating >= 4
            if first and good and e.user_id in last:
                positives += 1
                hits += e.item_id in last[e.user_id]
            seen[e.user_id].add(e.item_id)
        # Messages answer the event just applied (emit interval 0): one per profile change.
        while pending is not None and pending[0] == getattr(e, "user_id", None):
            last[pending[0]] = set(pending[2])
            pending = next(it, None)
            break
    assert positives > 100
    assert run.pipeline.live.tally[("blend-v1", "served")] == [hits, positives]
    shadow = run.pipeline.live.tally[(version, "shadow")]
    assert shadow[1] == positives and 0 <= shadow[0] <= positives


def test_an_ab_share_serves_the_candidate_to_its_users_only(trained_ranker: Path) -> None:
    from stream_app.experiment import assigned

    run, sent = _replay_with("share", 0.3, trained_ranker)
    version = load_ranker(trained_ranker, FEATURES).version
    arms = {user: model for user, model, _ in sent}
    assert {m for u, m in arms.items() if assigned(u, 0.3)} == {version}
    assert {m for u, m in arms.items() if not assigned(u, 0.3)} == {"blend-v1"}
    tally = run.pipeline.live.tally
    assert tally[(version, "served")][1] > 0 and tally[("blend-v1", "served")][1] > 0
    assert not [k for k in tally if k[1] == "shadow"]


def test_impression_metrics_by_hand() -> None:
    from stream_app.impressions import auc, ndcg_at

    labels = np.array([0.0, 1.0, 0.0, 1.0])
    # Pairs (clicked, not): (1,0) (1,2) (3,0) (3,2): scores .9>.1, .9>.5, .5=.5 (half), .5>.1.
    assert auc(np.array([0.1, 0.9, 0.5, 0.5]), labels) == pytest.approx(3.5 / 4)
    assert auc(np.array([0.9, 0.1, 0.8, 0.2]), labels) == 0.0
    # Order by score, ties by position shown: [1, 2, 3, 0] -> clicks at ranks 1 and 3.
    want = (1 / math.log2(2) + 1 / math.log2(4)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert ndcg_at(np.array([0.1, 0.9, 0.5, 0.5]), labels) == pytest.approx(want)
    assert ndcg_at(np.array([0.0, 1.0, 0.0, 1.0]), labels) == pytest.approx(1.0)


def test_impressions_in_the_training_window_become_examples_labelled_by_their_clicks() -> None:
    from state.events import Impression
    from stream_app.training_data import collect

    events: list[Event] = list(read_events("mind", data_dir() / "mind-small-sample", limit=40_000))
    shown = [e for e in events if isinstance(e, Impression) and e.clicked and len(set(e.clicked)) < len(set(e.items))]
    assert shown, "the prefix has impressions with a contrast"
    examples = collect(events, Settings(), window=(0.0, 1.0), negatives=3)
    assert examples.stats["positives"] == 0  # clicks are not positives of the prequential protocol
    assert 0 < examples.stats["impressions"] <= len(shown)
    sizes = {len(set(e.items)): len(set(e.clicked)) for e in shown}
    for g in np.unique(examples.groups):
        labels = examples.labels[examples.groups == g]
        # One row per distinct shown item, the clicked ones labelled 1: some, never all.
        assert 0 < labels.sum() < len(labels)
        assert len(labels) in sizes
