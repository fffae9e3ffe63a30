"""The trained ranker's examples, point in time: replayed through the worker's own pipeline.

The replay is the evaluator's (:class:`stream_app.evaluate.Replay`: event-time order, the
producer's tie-breaks, every event applied through :class:`stream_app.pipeline.Pipeline`). At
each positive in the training window (a purchase, a review, a rating >= 4 of a user with an
earlier event) and *before* that event is applied, the ranker's candidate pool and features are
read (:func:`scoring.ranker.features`, every dimension on): the positive item's column is
labelled 1 when it is in the pool, and up to ``negatives`` other candidates, drawn with a seeded
generator, are labelled 0: a share ``hard`` of them from the hand-set ranker's head, the rest
from the whole pool. A label's features therefore come only from events before it; the
test pins this by collecting from a prefix of the stream and from the whole stream.

A positive whose item is not among the candidates teaches the ranker nothing (it can only
reorder the pool) and is counted in ``stats["outside_pool"]``.

An ``impression`` in the window (a stream that carries them: the MIND replay) adds every shown
item, labelled by whether it was clicked: the items the user really passed over are better
negatives than sampled ones (``persona impressions-study`` measures it). ``groups`` number
positives and impressions together, in replay order.
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
from scoring.ranker import FEATURES, features, linear
from state.events import Event, Impression
from stream_app.evaluate import Replay
from stream_app.settings import Settings

#: Sampled negatives per positive.
NEGATIVES = 20
#: Share of them drawn from the hand-set ranker's head (:data:`HARD_HEAD` best of the pool)
#: instead of the whole pool. Off by default: measured on Musical Instruments' validation slice,
#: half hard negatives took NDCG@10 from .0685 to .0396. Positives are in that head only some
#: of the time, negatives half of the time, so the network learns that the production ranker's
#: favourites are *less* likely: a bias of the sampler, not a fact of the data.
HARD = 0.0
HARD_HEAD = 50


@dataclass
class Examples:
    """Rows of features (float32, in :data:`scoring.ranker.FEATURES` order) with 0/1 labels;
    ``groups`` numbers the positive each row belongs to (in replay order), ``ts`` is its event
    time and ``positions`` its event's position in the replay."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    groups: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    positions: npt.NDArray[np.int64]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.size)


class _Collect(Replay):
    def __init__(
        self, events: Sequence[Event], settings: Settings, *, negatives: int, hard: float, seed: int, encoder: TextEncoder | None
    ) -> None:
        super().__init__(events, settings, ks=(settings.top_k,), variants=(), emit_interval_s=0.0, trace=None, encoder=encoder)
        self.negatives = negatives
        self.hard = hard
        self.hand = np.array(linear(settings.rank_weights()))
        self.rng = random.Random(seed)
        self.rows: list[npt.NDArray[np.float64]] = []
        self.labels: list[float] = []
        self.groups: list[int] = []
        self.ts: list[float] = []
        self.positions: list[int] = []
        self.stats: dict[str, Any] = {"positives": 0, "outside_pool": 0, "impressions": 0, "first_ts": None, "last_ts": None}
        self._group = 0

    def _evaluate(self, label: Label) -> None:
        self.stats["positives"] += 1
        group = self._group  # every positive numbered, in the pool or not
        self._group += 1
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
        # The hand-set ranker's head, best first (ties by column: a fixed order).
        scores = self.hand @ pool.f
        head = [c for c in sorted(range(len(pool.items)), key=lambda c: (-scores[c], c))[:HARD_HEAD] if c != j]
        n_hard = min(round(self.negatives * self.hard), len(head))
        chosen = self.rng.sample(head, n_hard)
        taken = set(chosen) | {j}
        rest = [c for c in range(len(pool.items)) if c not in taken]
        chosen += self.rng.sample(rest, min(self.negatives - n_hard, len(rest)))
        self._add(group, pool.f, [(j, 1.0), *((c, 0.0) for c in chosen)])

    def _add(self, group: int, f: npt.NDArray[np.float64], labelled: Sequence[tuple[int, float]]) -> None:
        ts = self.events[self.position].ts
        for col, y in labelled:
            self.rows.append(f[:, col])
            self.labels.append(y)
            self.groups.append(group)
            self.ts.append(ts)
            self.positions.append(self.position)
        if self.stats["first_ts"] is None:
            self.stats["first_ts"] = ts
        self.stats["last_ts"] = ts

    def _impression(self, event: Impression) -> None:
        """An impression in the window: every shown item an example, labelled by its click
        (negatives the user really passed over; see ``persona impressions-study``)."""
        if not (self.window[0] <= self.position < self.window[1]):
            return
        profile = self.store.cached(event.user_id.encode())
        clicked = set(event.clicked)
        shown = list(dict.fromkeys(event.items))
        if profile is None or not (profile.clicked or profile.purchased) or not clicked or len(clicked) == len(shown):
            return
        pipe = self.pipeline
        pool = features(profile, catalog=pipe.catalog, shared=pipe.shared, params=pipe.params, k=self.top_k, weights=pipe.weights,
                        items=shown)
        if pool is None:
            return
        self.stats["impressions"] += 1
        self._group += 1
        self._add(self._group - 1, pool.f, [(c, 1.0 if item in clicked else 0.0) for c, item in enumerate(pool.items)])


def collect(
    events: Sequence[Event],
    settings: Settings,
    *,
    window: tuple[float, float],
    negatives: int = NEGATIVES,
    hard: float = HARD,
    seed: int = 0,
    encoder: TextEncoder | None = None,
    progress: bool = False,
) -> Examples:
    """Examples from the positives whose replay position lies in ``[a·n, b·n)`` of ``window``
    (the replay stops at the window's end: nothing later can reach them)."""
    run = _Collect(events, settings, negatives=negatives, hard=hard, seed=seed, encoder=encoder)
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
        positions=np.array(run.positions, dtype=np.int64),
        stats=stats,
    )
