"""``persona evaluate``: prequential offline evaluation, in process, through the worker's pipeline.

A dataset's events are replayed in the producer's order (``stream_app.sources.read_events``)
into the very :class:`stream_app.pipeline.Pipeline` the worker runs, built from the worker's
:class:`Settings`, over a dict store, a catalog fed by the replayed ``item`` events and no
text encoder unless one is given (no Kafka, no Faust). With an encoder, every review's text
and every catalog item's text is encoded up front (cached on disk by content:
``encoders.text_cache``) and handed to the pipeline as the worker's encoder stage would. Before each positive of a user with an earlier
interaction (``scoring.evaluation`` has the protocol), every variant ranks for that user over
the items the user has not interacted with, and the lists are scored against the positive's
item; then the event is applied. Variants:

- ``all``: the pipeline's own recommendations (:meth:`Pipeline.recommend`, every dimension at
  the settings' weights), read two ways: *fresh*, computed at the positive, and *last emitted*,
  the last message the pipeline emitted for the user before it (the emit callable is captured;
  the emit interval is 0 unless asked, so every change emits);
- ``behaviour``, ``+text``, ``+sentiment``, ``+social``, ``+attributes``: the same pipeline and
  state, ranked with only the behaviour features (co-occurrence, category, trending), then with
  one more dimension each (:meth:`scoring.ranker.Weights.only`);
- ``popularity``: all-time interaction counts so far;
- ``decayed_popularity``: ``scoring.popularity`` with the settings' half-life, event time;
- ``item_knn``: item-to-item co-occurrence (``scoring.knn``) over the events replayed so far.

Nothing depends on the wall clock: the pipeline's ``monotonic`` (coalescer, popularity ranking
cache) and ``wall`` (``generated_at``) are the current event time, so two runs give the same
report. The pipeline runs with ``top_k = max(K)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np

from encoders.text_cache import TextEncoder, encode_cached
from scoring.evaluation import (
    Accumulator,
    CountPopularity,
    DecayedPopularity,
    Interactions,
    Label,
    Similarity,
    jaccard,
)
from scoring.knn import WINDOW, ItemKNN
from scoring.messages import decode as decode_recs
from scoring.ranker import Scorer, Weights
from state.catalog import Catalog
from state.events import DeadLetter, Event, EventKind, Impression, Item, Review, encode, item_text, key_of, kind_of
from state.interest import ItemVector, item_vector_bytes, text_digest
from state.profile import EVENT_WEIGHTS, Encoding
from stream_app.pipeline import APPLIED, Pipeline, Record
from stream_app.reviews import review_text
from stream_app.settings import Settings
from stream_app.stores import DictStore, DictVectors, EventClock, NoVectors

ALL: Final = "all"
#: Per-dimension variants: behaviour features plus the named ranker dimensions.
DIMENSIONS: Final[dict[str, tuple[str, ...]]] = {
    "behaviour": (),
    "+text": ("content",),
    "+sentiment": ("sentiment",),
    "+social": ("social",),
    "+attributes": ("segment",),
}
VARIANTS: Final[tuple[str, ...]] = (ALL, *DIMENSIONS, "popularity", "decayed_popularity", "item_knn")
#: Always in the report, whatever ``variants`` asks for.
REQUIRED: Final[tuple[str, ...]] = (ALL, "popularity", "item_knn")
LAST_EMITTED: Final = "last_emitted"


@dataclass
class Report:
    """What ``persona evaluate`` measured; :meth:`to_json` is the ``--report-json`` document
    (deterministic); ``timing`` (wall seconds) is printed, never written there."""

    dataset: str
    events: int
    evaluated: int
    variants: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    counts: dict[str, int]
    timing: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "events": self.events,
            "evaluated": self.evaluated,
            "variants": self.variants,
            "protocol": self.protocol,
            "counts": self.counts,
        }


#: Called per evaluated positive with its label and each reading's list (tests; debugging).
Trace = Callable[[Label, dict[str, list[str]]], None]


def evaluate(
    events: Sequence[Event],
    settings: Settings,
    *,
    ks: Sequence[int] = (10,),
    variants: Sequence[str] = VARIANTS,
    emit_interval_s: float = 0.0,
    dataset: str = "",
    progress: bool = False,
    trace: Trace | None = None,
    window: tuple[float, float] = (0.0, 1.0),
    encoder: TextEncoder | None = None,
    candidates: dict[str, Weights] | None = None,
    on_message: Callable[[bytes, bytes], None] | None = None,
    model: Scorer | None = None,
) -> Report:
    """Replay ``events`` (in the given order) and score every variant (see the module doc).

    ``window`` = ``(a, b)``: every event is applied, but only positives whose position in the
    replay lies in ``[a·n, b·n)`` are scored: a validation slice to tune on, and a later one
    to report on that no choice was tuned on.

    ``candidates``: more named rankings over the same replay (weights to compare while tuning:
    one replay scores them all). ``model``: the trained ranker the pipeline serves (``all``)."""
    run = Replay(events, settings, ks=ks, variants=variants, emit_interval_s=emit_interval_s, trace=trace, encoder=encoder)
    run.on_message = on_message
    if model is not None:  # the `all` variant ranks with a trained ranker, as a worker serving it does
        run.pipeline.use_ranker(model)
        run.weights = run.pipeline.weights
    for name, weights in (candidates or {}).items():
        run.extra[name] = weights
        run.accumulators[name] = Accumulator(run.ks)
        run.rank_seconds[name] = 0.0
    run.window = (int(window[0] * len(events)), int(window[1] * len(events)))
    return run.run(dataset, progress)


def dimension_weights(weights: Weights, dims: tuple[str, ...]) -> Weights:
    """Behaviour plus ``dims``: each at its weight in ``weights``, or, where that is 0 (the
    dimension was switched off for this dataset), at the settings' default weight, so that the
    variant still says what adding the dimension does."""
    default = {d: float(Settings.model_fields[f"rank_{d}_weight"].default) for d in ("content", "social", "segment", "sentiment")}
    chosen = weights.only(*dims)

    def pick(d: str) -> float:
        value: float = getattr(chosen, d)
        return value or (default[d] if d in dims else 0.0)

    return replace(chosen, content=pick("content"), social=pick("social"), segment=pick("segment"), sentiment=pick("sentiment"))


def selected_variants(asked: Sequence[str]) -> tuple[str, ...]:
    """``asked`` plus the required variants, in :data:`VARIANTS` order; unknown names refused."""
    unknown = [v for v in asked if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    wanted = set(asked) | set(REQUIRED)
    return tuple(v for v in VARIANTS if v in wanted)


class Replay:
    """One prequential replay through the worker's pipeline: :func:`evaluate` scores the
    variants at each positive of the window (:meth:`_evaluate`); the trainer's example
    collection (:mod:`stream_app.training_data`) reads the ranker's features there instead."""

    def __init__(
        self,
        events: Sequence[Event],
        settings: Settings,
        *,
        ks: Sequence[int],
        variants: Sequence[str],
        emit_interval_s: float,
        trace: Trace | None,
        encoder: TextEncoder | None = None,
    ) -> None:
        self.events = events
        self.settings = settings
        self.ks = tuple(sorted(set(ks)))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"cut-offs must be >= 1, got {list(ks)}")
        self.top_k = self.ks[-1]
        self.variants = selected_variants(variants)
        self.emit_interval_s = emit_interval_s
        self.trace = trace
        self.clock = EventClock()
        self.catalog = Catalog()
        self.store = DictStore()
        self.last_message: dict[bytes, bytes] = {}
        self.messages = 0
        self.encodings: dict[int, Encoding] = {}
        self.item_vectors: dict[int, ItemVector] = {}
        self.encoder_version: str | None = None
        vectors: NoVectors | DictVectors = NoVectors()
        if encoder is not None:
            self.encoder_version = str(encoder.info.version)
            self._encode(encoder)
            vectors = DictVectors(self.encoder_version)
        self.vectors = vectors
        self.weights = settings.rank_weights()
        self.extra: dict[str, Weights] = {}
        self.dimension_weights = {name: dimension_weights(self.weights, dims) for name, dims in DIMENSIONS.items()}
        #: sees every message the pipeline emits, in order (the end-to-end agreement test)
        self.on_message: Callable[[bytes, bytes], None] | None = None
        self.pipeline = Pipeline.from_settings(
            settings,
            store=self.store,
            catalog=self.catalog,
            vectors=vectors,
            emit=self._capture,
            top_k=self.top_k,
            emit_interval_s=emit_interval_s,
            monotonic=self.clock,
            wall=self.clock,
            catchup_after_s=0.0,  # a replay emits as its interval says, never as a backlog
        )
        self.interactions = Interactions()
        self.counts = CountPopularity()
        self.decayed = DecayedPopularity(settings.popularity_half_life_days)
        self.knn = ItemKNN(WINDOW)
        self.seen_items: set[str] = set()
        self.accumulators: dict[str, Accumulator] = {v: Accumulator(self.ks) for v in self.variants}
        self.last_emitted = Accumulator(self.ks)
        self.rank_seconds: dict[str, float] = dict.fromkeys(self.variants, 0.0)
        self.tally = {
            "positives": 0,
            "skipped_no_history": 0,
            "new_item_positives": 0,
            "dead_letters": 0,
            "duplicates": 0,
            "filtered_from_all": 0,
            "outside_window": 0,
        }
        self.window = (0, len(events))
        self.position = 0
        self._cats: dict[str, frozenset[str]] = {}
        self.diversity_basis = (
            "categories" if any(isinstance(e, Item) and e.categories for e in events) else "co-occurrence"
        )
        self.similarity: Similarity = self._category_jaccard if self.diversity_basis == "categories" else self._cooc_jaccard

    def _encode(self, encoder: TextEncoder) -> None:
        """Every review text and catalog item text of the replay, encoded once (cached)."""
        version = str(encoder.info.version)
        reviews = [(n, e) for n, e in enumerate(self.events) if isinstance(e, Review) and review_text(e).strip()]
        # What the worker's item encoder encodes: title, categories and description
        # (state.events.item_text), not the description alone. The harness encoded only the
        # description, so a catalog of titles without descriptions (MovieLens) had item vectors in
        # the workers and none here, in the evaluation and in the ranker's training features:
        # test_regression_harness_encodes_the_item_text_the_worker_encodes.
        items = [
            (n, e, text) for n, e in enumerate(self.events) if isinstance(e, Item) and (text := item_text(e.title, e.categories, e.text))
        ]
        if reviews:
            vectors, sentiments = encode_cached(encoder, [review_text(e) for _, e in reviews])
            for (n, _), v, sent in zip(reviews, vectors, sentiments, strict=True):
                self.encodings[n] = Encoding(version=version, vector=np.asarray(v, dtype="<f4").tobytes(), text_sentiment=float(sent))
        if items:
            vectors, _ = encode_cached(encoder, [text for _, _, text in items])
            for (n, e, text), v in zip(items, vectors, strict=True):
                self.item_vectors[n] = ItemVector(item_id=e.item_id, version=version, digest=text_digest(text), vector=item_vector_bytes(v))

    # --- similarity for diversity --------------------------------------------------------
    def _categories(self, item_id: str) -> frozenset[str]:
        cats = self._cats.get(item_id)
        if cats is None:
            cats = frozenset(self.catalog.categories(item_id))
            self._cats[item_id] = cats
        return cats

    def _category_jaccard(self, a: str, b: str) -> float | None:
        return jaccard(self._categories(a), self._categories(b))

    def _cooc_jaccard(self, a: str, b: str) -> float | None:
        """Jaccard of the two items' user sets, from the co-occurrence counts at list time."""
        na, nb = self.knn.count(a), self.knn.count(b)
        if not na or not nb:
            return None
        c = self.knn.cooccurrence(a, b)
        return c / (na + nb - c)

    # --- the replay ----------------------------------------------------------------------
    def _capture(self, key: bytes, value: bytes | None) -> None:
        if value is None:  # an erasure's tombstone (datasets carry none)
            self.last_message.pop(key, None)
            return
        self.last_message[key] = value
        self.messages += 1
        if self.on_message is not None:
            self.on_message(key, value)

    def run(self, dataset: str, progress: bool) -> Report:
        from tqdm import tqdm

        offsets: dict[EventKind, int] = {}
        events = self.events
        n = len(events)
        started = time.perf_counter()
        bar = tqdm(total=n, unit="ev", disable=not progress, mininterval=0.5, desc="evaluate")
        for idx, event in enumerate(events):
            if idx >= self.window[1]:
                break  # nothing after the scored slice can change its figures
            self.position = idx
            self._step(event, events[idx + 1] if idx + 1 < n else None, offsets)
            bar.update(1)
        bar.close()
        n = min(n, self.window[1])
        if self.emit_interval_s > 0:
            self.pipeline.flush_pending(all_users=True)
        elapsed = time.perf_counter() - started
        return self._report(dataset, n, elapsed)

    def _step(self, event: Event, following: Event | None, offsets: dict[EventKind, int]) -> None:
        self.clock.advance(event.ts)
        pipe = self.pipeline
        if self.emit_interval_s > 0:
            pipe.flush_pending(all_users=False)  # the worker's timer
        kind = kind_of(event)
        offset = offsets.get(kind, 0)
        offsets[kind] = offset + 1
        record = Record(self.settings.topic(kind), 0, offset, key_of(event).encode(), encode(event), event.ts)
        if isinstance(pipe.decode(kind, record), DeadLetter):
            self.tally["dead_letters"] += 1
            pipe.process(kind, record)
            return
        if isinstance(event, Impression):
            self._impression(event)  # before it (and its clicks, which follow) is applied
        if isinstance(event, Item):
            self.catalog.upsert(event)  # what the catalog replica does
            self._cats.pop(event.item_id, None)
            self._see(event.item_id)
            pipe.process(kind, record)
            vector = self.item_vectors.get(self.position)
            if vector is not None and isinstance(self.vectors, DictVectors):
                self.vectors.vectors[vector.item_id] = vector  # what the item-vector replica does
                pipe.add_item_vector(vector)
            return
        label = self.interactions.label(event, following)
        if label is not None and label.positive:
            self.tally["positives"] += 1
            if label.evaluated and self.window[0] <= self.position < self.window[1]:
                self._evaluate(label)
            elif label.evaluated:
                self.tally["outside_window"] += 1
            else:
                self.tally["skipped_no_history"] += 1
        encoding = self.encodings.get(self.position)
        if encoding is not None:
            # The worker's review stage: encoded first, then applied with its encoding.
            result = pipe.apply_event(event, record.origin, record.partition, record.timestamp, encoding=encoding)
        else:
            result = pipe.process(kind, record)
        if result.outcome != APPLIED:
            self.tally["duplicates"] += 1
            return
        if label is None:
            return
        item = label.item_id
        self._see(item)
        self.decayed.add(item, EVENT_WEIGHTS[kind], event.ts)
        if self.interactions.record(event):
            self.counts.add(item)
            self.knn.observe(label.user_id, item)

    def _see(self, item_id: str) -> None:
        if item_id not in self.seen_items:
            self.seen_items.add(item_id)
            self.counts.see(item_id)
            self.decayed.see(item_id)

    def _impression(self, event: Impression) -> None:
        """What a shown list says, read before it is applied: nothing here; the trainer's
        impression study (:mod:`stream_app.impressions`) reads it."""

    # --- one evaluated positive ----------------------------------------------------------
    def _evaluate(self, label: Label) -> None:
        user, target, k = label.user_id, label.item_id, self.top_k
        exclude = self.interactions.items(user)
        if self.counts.count(target) == 0:
            self.tally["new_item_positives"] += 1
        lists: dict[str, list[str]] = {}
        clock = time.perf_counter
        for variant in self.variants:
            t0 = clock()
            if variant == ALL:
                lists[ALL] = self._fresh(user, exclude)
            elif variant in DIMENSIONS:
                lists[variant] = self._fresh(user, exclude, self.dimension_weights[variant], count=False)
            elif variant == "popularity":
                lists[variant] = [i for i, _ in self.counts.top(user, k, exclude)]
            elif variant == "decayed_popularity":
                lists[variant] = [i for i, _ in self.decayed.top(user, k, exclude)]
            else:
                lists[variant] = [i for i, _ in self.knn.recommend(user, k)]
            self.rank_seconds[variant] += clock() - t0
            self.accumulators[variant].add(lists[variant], target, cold=label.cold, similarity=self.similarity)
        for name, weights in self.extra.items():
            t0 = clock()
            lists[name] = self._fresh(user, exclude, weights, count=False)
            self.rank_seconds[name] += clock() - t0
            self.accumulators[name].add(lists[name], target, cold=label.cold, similarity=self.similarity)
        if ALL in self.variants:
            raw = self.last_message.get(user.encode())
            emitted = [s.item_id for s in decode_recs(raw).items] if raw is not None else []
            lists[LAST_EMITTED] = [i for i in emitted if i not in exclude]
            self.last_emitted.add(lists[LAST_EMITTED], target, cold=label.cold, similarity=self.similarity)
        if self.trace is not None:
            self.trace(label, lists)

    def _fresh(self, user: str, exclude: Collection[str], weights: Weights | None = None, *, count: bool = True) -> list[str]:
        profile = self.store.cached(user.encode())
        if profile is None:
            return []
        items = [s.item_id for s in self.pipeline.recommend(profile, weights=weights).items]
        kept = [i for i in items if i not in exclude]
        if count:
            self.tally["filtered_from_all"] += len(items) - len(kept)
        return kept

    # --- the report ----------------------------------------------------------------------
    def _report(self, dataset: str, n_events: int, elapsed: float) -> Report:
        seen = len(self.seen_items | self.catalog.ids())
        variants: dict[str, dict[str, Any]] = {}
        for name, acc in self.accumulators.items():
            variants[name] = acc.result(seen)
            if name == ALL:
                variants[name][LAST_EMITTED] = self.last_emitted.result(seen)
        evaluated = self.accumulators[ALL].n
        rankings = evaluated * (len(self.variants) + len(self.extra))
        rank_s = sum(self.rank_seconds.values())
        timing: dict[str, float] = {
            "seconds": elapsed,
            "rankings": float(rankings),
            "messages": float(self.messages),
            "rank_seconds": rank_s,
            "rankings_per_s": (rankings + self.messages) / elapsed if elapsed > 0 else 0.0,
            "evaluated_per_s": evaluated / elapsed if elapsed > 0 else 0.0,
        }
        for name, s in self.rank_seconds.items():
            timing[f"{name}_per_s"] = evaluated / s if s > 0 else 0.0
        return Report(
            dataset=dataset,
            events=n_events,
            evaluated=evaluated,
            variants=variants,
            protocol={
                "ks": list(self.ks),
                "top_k": self.top_k,
                "emit_interval_s": self.emit_interval_s,
                "min_rating": self.interactions.min_rating,
                "cold_below": self.interactions.cold_below,
                "knn_window": self.knn.window,
                "half_life_days": self.settings.half_life_days,
                "popularity_half_life_days": self.settings.popularity_half_life_days,
                "diversity_basis": self.diversity_basis,
                "encoder": self.encoder_version,
                "weights": {f: getattr(self.weights, f) for f in ("cooc", "category", "trending", "content", "social",
                                                                  "segment", "sentiment", "diversity", "recency")},
                "items_seen": seen,
            },
            counts={**self.tally, "messages": self.messages, "users": len(self.store.profiles)},
            timing=timing,
        )


def render(report: Report) -> str:
    """The report as a plain-text table (fresh and last-emitted readings of ``all``)."""
    ks = report.protocol["ks"]
    cols = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall", "coverage", "diversity")] + ["cold_share"]
    rows: list[tuple[str, dict[str, Any]]] = []
    for name, figures in report.variants.items():
        rows.append((name, figures))
        if LAST_EMITTED in figures:
            rows.append((f"{name} ({LAST_EMITTED})", figures[LAST_EMITTED]))
    width = max(len(r[0]) for r in rows)
    head = "variant".ljust(width) + "".join(f"{c:>14}" for c in cols)
    lines = [
        f"{report.dataset}: {report.events:,} events replayed, {report.evaluated:,} positives evaluated",
        head,
    ]
    for name, figures in rows:
        lines.append(name.ljust(width) + "".join(f"{figures[c]:>14.4f}" for c in cols))
    return "\n".join(lines)
