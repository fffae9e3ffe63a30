"""A trained ranker in the worker's pipeline: hot swap, scores, reasons, refusal, the training loop.

The ranker is the one `make test-models` fits on a MovieLens prefix. Its scores are
recomputed here with numpy from the parameters it was exported with (``weights.npz``),
over the features the ranker's own candidate generation gives.
"""

from __future__ import annotations

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
    with np.load(folder / WEIGHTS_FILE) as w:
        hidden = np.maximum(f.T.astype(np.float32) @ w["hidden_weight"].T + w["hidden_bias"], 0.0)
        out: np.ndarray = (hidden @ w["out_weight"].T + w["out_bias"]).reshape(-1)
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
