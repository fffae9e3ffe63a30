"""Quality across an encoder swap, offline: the prequential harness with the encoder changed
mid-replay, as a hot swap changes it in a running worker.

Three replays of the same stream score the same later slice ``[at, end)`` (NDCG@10 of the
``all`` variant, the list the pipeline serves):

- ``before``: encoder A throughout (no swap: what users got before it);
- ``swapped``: A until position ``at``, then B. At the swap, B's vectors of every catalog item
  seen so far arrive (the owners re-encode the catalog), later reviews are encoded by B, and
  the pipeline moves each user's interest to B at their first B event (:mod:`scoring.migrate`);
- ``b_throughout``: B from the start (what the swap should converge to).

``swapped`` against ``before`` is the quality right after the swap; against ``b_throughout``, the
cost of the swap itself. Review-centroid item vectors (a stream without catalog text, such as
Amazon 5-core) restart with B: only reviews after the swap rebuild them, which this measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from state.events import Event, Item
from stream_app.evaluate import ALL, Replay
from stream_app.settings import Settings
from stream_app.stores import DictVectors


class SwapReplay(Replay):
    def __init__(self, events: Sequence[Event], settings: Settings, a: Any, b: Any, at: int) -> None:
        super().__init__(events, settings, ks=(10,), variants=(), emit_interval_s=0.0, trace=None, encoder=a)
        mine = self.encodings, self.item_vectors
        self.encodings, self.item_vectors = {}, {}
        self._encode(b)
        self._b = (self.encodings, self.item_vectors, str(b.info.version))
        self.encodings, self.item_vectors = mine
        self.at = at
        self.swapped = False

    def _step(self, event: Event, following: Event | None, offsets: dict[Any, int]) -> None:
        if not self.swapped and self.position >= self.at:
            self._swap()
        super()._step(event, following, offsets)

    def _swap(self) -> None:
        self.swapped = True
        self.encodings, self.item_vectors, version = self._b
        self.encoder_version = version
        vectors = self.vectors
        assert isinstance(vectors, DictVectors)
        vectors.version = version
        vectors.vectors = {}
        for n, event in enumerate(self.events[: self.at]):
            vector = self.item_vectors.get(n)
            if isinstance(event, Item) and vector is not None:
                vectors.vectors[vector.item_id] = vector
                self.pipeline.add_item_vector(vector)


RUNS = ("before", "swapped", "b_throughout")


def swap_study(
    events: Sequence[Event],
    settings: Settings,
    a: Any,
    b: Any,
    at: float,
    *,
    runs: Sequence[str] = RUNS,
    replays: dict[str, Replay] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """NDCG@10 and R@10 of ``runs`` (of :data:`RUNS`) on ``[at, 1)`` (module doc). ``replays``,
    when given, receives each finished replay (its profiles and shared state, for tests)."""
    position = int(at * len(events))

    def make(name: str) -> Replay:
        if name == "swapped":
            return SwapReplay(events, settings, a, b, position)
        encoder = a if name == "before" else b
        return Replay(events, settings, ks=(10,), variants=(), emit_interval_s=0.0, trace=None, encoder=encoder)

    out: dict[str, Any] = {"at": at, "a": str(a.info.version), "b": str(b.info.version)}
    for name in runs:
        if name not in RUNS:
            raise ValueError(f"unknown run {name!r}; choose from {RUNS}")
        run = make(name)
        if replays is not None:
            replays[name] = run
        run.window = (position, len(events))
        report = run.run(name, progress)
        out[name] = {m: report.variants[ALL][m] for m in ("ndcg@10", "recall@10")}
        out["evaluated"] = report.evaluated
    return out
