"""Impression negatives against sampled negatives: what the shown-but-not-clicked items teach.

``persona impressions-study`` (trainer environment) replays a stream with impressions (the
MIND sample) through the worker's pipeline. At each impression of a user with history, read
*before* it and its clicks are applied:

- in the training slice, two sets of examples: **impression negatives** (every shown item,
  labelled by whether it was clicked) and **sampled negatives** (the clicked items against as
  many candidates as ``negatives`` drawn from the ranker's own pool, as ``persona train`` does);
- in the later test slice, the impression itself: its shown items' features and clicks.

Both rankers are fitted the same way (:func:`export.ranker.fit`, BCE, from the hand-set prior)
and scored on the test impressions: the mean per-impression AUC (clicked against shown-not-
clicked; ties count a half) and NDCG@10 of the impression's items re-ranked by the model (every
click relevant), as MIND is usually reported. The hand-set weights are scored alongside.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from encoders.text_cache import TextEncoder
from scoring.ranker import FEATURES, features, linear
from state.events import Event, Impression
from stream_app.evaluate import Replay
from stream_app.settings import Settings

F32 = npt.NDArray[np.float32]


@dataclass
class _Rows:
    x: list[npt.NDArray[np.float64]] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    def add(self, f: npt.NDArray[np.float64], labels: Sequence[float], group: int) -> None:
        for j, label in enumerate(labels):
            self.x.append(f[:, j])
            self.y.append(label)
            self.groups.append(group)

    def arrays(self) -> tuple[F32, F32, npt.NDArray[np.int64]]:
        n = len(self.y)
        return (
            np.array(self.x, dtype=np.float32).reshape(n, len(FEATURES)),
            np.array(self.y, dtype=np.float32),
            np.array(self.groups, dtype=np.int64),
        )


class _Study(Replay):
    def __init__(
        self,
        events: Sequence[Event],
        settings: Settings,
        *,
        train_end: int,
        test: tuple[int, int],
        negatives: int,
        seed: int,
        encoder: TextEncoder | None,
    ) -> None:
        super().__init__(events, settings, ks=(settings.top_k,), variants=(), emit_interval_s=0.0, trace=None, encoder=encoder)
        self.train_end, self.test = train_end, test
        self.negatives = negatives
        self.rng = random.Random(seed)
        self.shown = _Rows()
        self.sampled = _Rows()
        #: test impressions: (features of the shown items, clicked labels)
        self.held: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
        self.stats: dict[str, int] = {"impressions": 0, "no_history": 0, "no_contrast": 0, "train": 0, "test": 0}
        self.window = (0, test[1])  # the replay stops after the test slice

    def _evaluate(self, label: Any) -> None:  # no prequential scoring here
        return

    def _impression(self, event: Impression) -> None:
        self.stats["impressions"] += 1
        pos = self.position
        if not (pos < self.train_end or self.test[0] <= pos < self.test[1]):
            return
        profile = self.store.cached(event.user_id.encode())
        if profile is None or not (profile.clicked or profile.purchased):
            self.stats["no_history"] += 1
            return
        shown = list(dict.fromkeys(event.items))
        clicked = set(event.clicked)
        if not clicked or len(clicked) == len(shown):
            self.stats["no_contrast"] += 1
            return
        pipe = self.pipeline
        common = {"catalog": pipe.catalog, "shared": pipe.shared, "params": pipe.params, "k": self.top_k, "weights": pipe.weights}
        pool = features(profile, items=shown, **common)  # type: ignore[arg-type]
        if pool is None:
            return
        labels = [1.0 if i in clicked else 0.0 for i in pool.items]
        if pos >= self.test[0]:
            self.held.append((pool.f, np.array(labels)))
            self.stats["test"] += 1
            return
        group = self.stats["train"]
        self.stats["train"] += 1
        self.shown.add(pool.f, labels, group)
        generated = features(profile, **common)  # type: ignore[arg-type]
        others = [] if generated is None else [i for i in generated.items if i not in clicked]
        drawn = self.rng.sample(others, min(len(others), self.negatives * len(clicked)))
        mixed = features(profile, items=[*sorted(clicked), *drawn], **common)  # type: ignore[arg-type]
        if mixed is not None:
            self.sampled.add(mixed.f, [1.0 if i in clicked else 0.0 for i in mixed.items], group)


def auc(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]) -> float:
    """Share of (clicked, not clicked) pairs ordered right; ties count a half."""
    pos, neg = scores[labels > 0], scores[labels <= 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins) / (len(pos) * len(neg))


def ndcg_at(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.float64], k: int = 10) -> float:
    """NDCG@k of the items ordered by score (ties by position shown), every click relevant."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]
    dcg = sum(labels[j] / math.log2(r + 2) for r, j in enumerate(order))
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(k, int(labels.sum()))))
    return dcg / ideal if ideal else 0.0


def held_impressions(
    events: Sequence[Event], settings: Settings, window: tuple[float, float], encoder: TextEncoder | None = None
) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """The impressions of ``window`` (users with history, some but not all shown items
    clicked): the shown items' features, read before the impression, and the click labels."""
    n = len(events)
    run = _Study(events, settings, train_end=0, test=(int(window[0] * n), int(window[1] * n)), negatives=0, seed=0, encoder=encoder)
    run.run("impressions", False)
    return run.held


def mean_auc(held: Sequence[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]], score: Any) -> float:
    """Mean per-impression AUC of ``score`` (features -> scores) over ``held``."""
    values = [auc(np.asarray(score(f), dtype=np.float64), labels) for f, labels in held]
    return float(np.mean(values)) if values else 0.0


def study(
    events: Sequence[Event],
    settings: Settings,
    *,
    train: float = 0.7,
    test: tuple[float, float] = (0.7, 1.0),
    negatives: int = 4,
    seed: int = 0,
    epochs: int = 150,
    encoder: TextEncoder | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The comparison of the module docstring, as a report."""
    from export.ranker import Arrays, fit, scores

    n = len(events)
    run = _Study(
        events, settings, train_end=int(train * n), test=(int(test[0] * n), int(test[1] * n)), negatives=negatives, seed=seed,
        encoder=encoder,
    )
    run.run("impressions", progress)
    prior = linear(settings.rank_weights())
    report: dict[str, Any] = {"events": n, "stats": run.stats, "negatives_per_click": negatives, "rankers": {}}
    models: dict[str, Any] = {}
    for name, rows in (("impression_negatives", run.shown), ("sampled_negatives", run.sampled)):
        x, y, g = rows.arrays()
        fitted = fit(Arrays(x, y, g), seed=seed, epochs=epochs, prior=prior, progress=progress)
        models[name] = fitted
        report["rankers"][name] = {"examples": len(y), "positives": int(y.sum()), "best_epoch": fitted.history["best_epoch"]}
    hand = np.array(prior)
    for name in ("impression_negatives", "sampled_negatives", "hand_set_weights"):
        aucs, ndcgs = [], []
        for f, labels in run.held:
            if name == "hand_set_weights":
                s = hand @ f
            else:
                s = scores(models[name], f.T.astype(np.float32)).astype(np.float64)
            aucs.append(auc(s, labels))
            ndcgs.append(ndcg_at(s, labels))
        report["rankers"].setdefault(name, {}).update(
            {"auc": float(np.mean(aucs)) if aucs else 0.0, "ndcg@10": float(np.mean(ndcgs)) if ndcgs else 0.0, "impressions": len(aucs)}
        )
    return report
