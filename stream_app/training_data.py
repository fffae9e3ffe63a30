"""The trained ranker's examples, point in time: replayed through the worker's own pipeline.

The replay is the evaluator's (:class:`stream_app.evaluate.Replay`: event-time order, the
producer's tie-breaks, every event applied through :class:`stream_app.pipeline.Pipeline`). At
each positive in the training window (a purchase, a review, a rating >= 4 of a user with an
earlier event) and *before* that event is applied, the ranker's candidate pool and features are
read (:func:`scoring.ranker.features`, every dimension on): the positive item's column is
labelled 1 when it is in the pool, and up to ``negatives`` other candidates, drawn with a seeded
generator, are labelled 0. A label's features therefore come only from events before it; the
test pins this by collecting from a prefix of the stream and from the whole stream.

A positive whose item is not among the candidates teaches the ranker nothing (it can only
reorder the pool) and is counted in ``stats["outside_pool"]``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from encoders.text_cache import TextEncoder
from scoring.evaluation import Label
from scoring.ranker import FEATURES, features
from state.events import Event
from stream_app.evaluate import Replay
from stream_app.settings import Settings

#: Sampled negatives per positive.
NEGATIVES = 20


@dataclass
class Examples:
    """Rows of features (float32, in :data:`scoring.ranker.FEATURES` order) with 0/1 labels;
    ``groups`` numbers the positive each row belongs to (in replay order), ``ts`` its event time."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    groups: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.size)


class _Collect(Replay):
    def __init__(self, events: Sequence[Event], settings: Settings, *, negatives: int, seed: int, encoder: TextEncoder | None) -> None:
        super().__init__(events, settings, ks=(settings.top_k,), variants=(), emit_interval_s=0.0, trace=None, encoder=encoder)
        self.negatives = negatives
        self.rng = random.Random(seed)
        self.rows: list[npt.NDArray[np.float64]] = []
        self.labels: list[float] = []
        self.groups: list[int] = []
        self.ts: list[float] = []
        self.stats: dict[str, Any] = {"positives": 0, "outside_pool": 0, "first_ts": None, "last_ts": None}

    def _evaluate(self, label: Label) -> None:
        self.stats["positives"] += 1
        pipe = self.pipeline
        profile = self.store.cached(label.user_id.encode())
        pool = None
        if profile is not None:
            pool = features(profile, catalog=pipe.catalog, shared=pipe.shared, params=pipe.params, k=self.top_k, weights=pipe.weights)
        target = label.item_id
        if pool is None or target not in pool.items:
            self.stats["outside_pool"] += 1
            return
        j = pool.items.index(target)
        others = [c for c in range(len(pool.items)) if c != j]
        chosen = self.rng.sample(others, min(self.negatives, len(others)))
        group = self.stats["positives"] - 1
        ts = self.events[self.position].ts
        for col, y in [(j, 1.0), *((c, 0.0) for c in chosen)]:
            self.rows.append(pool.f[:, col])
            self.labels.append(y)
            self.groups.append(group)
            self.ts.append(ts)
        if self.stats["first_ts"] is None:
            self.stats["first_ts"] = ts
        self.stats["last_ts"] = ts


def collect(
    events: Sequence[Event],
    settings: Settings,
    *,
    window: tuple[float, float],
    negatives: int = NEGATIVES,
    seed: int = 0,
    encoder: TextEncoder | None = None,
    progress: bool = False,
) -> Examples:
    """Examples from the positives whose replay position lies in ``[a·n, b·n)`` of ``window``
    (the replay stops at the window's end: nothing later can reach them)."""
    run = _Collect(events, settings, negatives=negatives, seed=seed, encoder=encoder)
    run.window = (int(window[0] * len(events)), int(window[1] * len(events)))
    run.run("train", progress)
    n = len(run.labels)
    x = np.array(run.rows, dtype=np.float32).reshape(n, len(FEATURES))
    stats = {
        **run.stats,
        "window": list(window),
        "positions": list(run.window),
        "events": len(events),
        "examples": n,
        "encoder": run.encoder_version,
    }
    return Examples(
        features=x,
        labels=np.array(run.labels, dtype=np.float32),
        groups=np.array(run.groups, dtype=np.int64),
        ts=np.array(run.ts, dtype=np.float64),
        stats=stats,
    )
