"""``persona train``: fit the ranker on the history, gate it on a later slice, publish it.

One run (:func:`train_once`):

1. read the history (a dataset file, in the producer's event-time order);
2. collect point-in-time examples from the positives of the *training* slice
   (:mod:`stream_app.training_data`, through the worker's own pipeline);
3. fit the network with BCE (:func:`export.ranker.fit`), export ONNX, check the graph against
   torch (:func:`export.ranker.write_version`);
4. replay again and score the *gate* slice, later than every training label, with the same
   prequential harness as ``persona evaluate``: the candidate against production (the
   registry's CURRENT ranker, else the hand-set weights);
5. write the version with the gate's figures in its manifest, and publish it (``CURRENT``)
   only when the candidate's NDCG@10 beats production's times ``1 + margin`` (a tie is not a
   win: publishing an equal model is churn). Workers
   pick a published version up within ``PERSONA_MODEL_POLL_S`` without a restart.

``persona train --every 6h`` repeats this; a run that fails is logged and counted and the
next period tries again; a failed or rejected run never publishes.

Nothing here is tuned on the gate slice: the network's epoch is chosen on the last share of
the training slice, so the gate's figures are an honest comparison, and the report slice of
docs/EVALUATION.md (75-100%) stays untouched by both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from encoders.ranker_model import OnnxRanker, load_ranker
from encoders.registry import Registry
from scoring.ranker import FEATURES, Weights, linear
from state.errors import ModelError, PersonaError
from state.events import Event
from stream_app.evaluate import evaluate
from stream_app.models import open_text_encoder
from stream_app.settings import Settings
from stream_app.training_data import NEGATIVES, collect

log = logging.getLogger(__name__)

#: Positives the ranker learns from (share of the replay) and the later slice that gates it.
TRAIN_WINDOW = (0.0, 0.5)
GATE_WINDOW = (0.5, 0.75)
GATE_METRIC = "ndcg@10"


@dataclass
class TrainResult:
    version: str
    path: Path
    published: bool
    gate: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def production(settings: Settings) -> tuple[str, Weights]:
    """What the workers serve now: the registry's CURRENT ranker, else the hand-set weights."""
    weights = settings.rank_weights()
    current = Registry(settings.ranker_registry).current()
    if current is None:
        return "hand-set weights", weights
    ranker = load_ranker(current, FEATURES)
    return ranker.version, replace(weights, model=ranker)


def train_once(
    events: Sequence[Event],
    settings: Settings,
    *,
    source: dict[str, Any],
    train_window: tuple[float, float] = TRAIN_WINDOW,
    gate_window: tuple[float, float] = GATE_WINDOW,
    margin: float = 0.0,
    negatives: int = NEGATIVES,
    seed: int = 0,
    epochs: int = 150,
    device: str = "cpu",
    encoder: str = "auto",
    publish: bool = True,
    announce: bool = True,
    progress: bool = False,
) -> TrainResult:
    """One training run (see the module docstring). ``announce``: tell the workers on the
    control topic when a version is published (:mod:`stream_app.control`)."""
    from export.ranker import Arrays, finish_version, fit, write_version

    if not (0.0 <= train_window[0] < train_window[1] <= gate_window[0] < gate_window[1] <= 1.0):
        raise PersonaError(f"the gate slice {gate_window} must come after the training slice {train_window}")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    text_encoder = open_text_encoder(encoder, settings)
    examples = collect(events, settings, window=train_window, negatives=negatives, seed=seed, encoder=text_encoder, progress=progress)
    seconds["collect"] = time.perf_counter() - t0
    log.info("ranker examples: %s", examples.stats)
    t0 = time.perf_counter()
    fitted = fit(
        Arrays(examples.features, examples.labels, examples.groups),
        seed=seed, epochs=epochs, device=device, progress=progress, prior=linear(settings.rank_weights()),
    )
    seconds["fit"] = time.perf_counter() - t0
    # The features depend on the text encoder: record which one the ranker learned them from.
    encoder_version = None if text_encoder is None else str(text_encoder.info.version)
    training = {**source, **examples.stats, "negatives": negatives, "encoder": encoder_version}
    staging, manifest = write_version(
        fitted, settings.ranker_registry, feature_names=FEATURES, golden=examples.features, training=training, metrics={}, seed=seed
    )
    try:
        t0 = time.perf_counter()
        gate = gate_ranker(
            events, settings, OnnxRanker(staging, manifest), gate_window=gate_window, margin=margin,
            encoder=text_encoder, impressions=bool(examples.stats.get("impressions")), progress=progress,
        )
        seconds["gate"] = time.perf_counter() - t0
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    passed, metric = gate["passed"], gate["metric"]
    new, old, prod_name = gate["value"]["candidate"], gate["value"]["production"], gate["production"]["version"]
    path = finish_version(staging, manifest, gate)
    published = False
    if passed and publish:
        Registry(settings.ranker_registry).publish(manifest.version)
        published = True
        if announce:
            from stream_app.control import announce as send

            send(settings, "ranker", "publish", manifest.version)
    log.info(
        "ranker %s: %s %.4f vs production %s %.4f (margin %.2f): %s",
        manifest.version, metric, new, prod_name, old, margin, "published" if published else "not published",
    )
    return TrainResult(version=manifest.version, path=path, published=published, gate=gate, seconds=seconds)


class Outcome(Protocol):
    @property
    def published(self) -> bool: ...


def gate_ranker(
    events: Sequence[Event],
    settings: Settings,
    candidate: Any,
    *,
    gate_window: tuple[float, float],
    margin: float,
    encoder: Any,
    impressions: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The quality gate: ``candidate`` (a :class:`~scoring.ranker.Scorer`) against production on
    the later ``gate_window``, by prequential NDCG@10; on a stream without purchases or reviews
    to score but with impressions (MIND), by the later impressions' mean AUC. Passes when the
    candidate's figure is above production's times ``1 + margin`` (and above zero; a tie fails)."""
    prod_name, prod_weights = production(settings)
    report = evaluate(
        events,
        settings,
        variants=(),
        window=gate_window,
        encoder=encoder,
        candidates={"candidate": replace(settings.rank_weights(), model=candidate), "production": prod_weights},
        progress=progress,
    )
    metric = GATE_METRIC
    new, old = report.variants["candidate"][GATE_METRIC], report.variants["production"][GATE_METRIC]
    extra: dict[str, Any] = {}
    if report.evaluated == 0 and impressions:
        # A stream of clicks and impressions (MIND) has no purchase or review to score
        # prequentially: gate on the later impressions' AUC instead.
        from stream_app.impressions import held_impressions, mean_auc

        held = held_impressions(events, settings, gate_window, encoder)
        prod_model = prod_weights.model
        hand = np.array(linear(settings.rank_weights()))
        new = mean_auc(held, candidate)
        old = mean_auc(held, prod_model if prod_model is not None else (lambda f: hand @ f))
        metric = "impression_auc"
        extra = {"impressions": len(held)}
    return {
        "metric": metric,
        **extra,
        "value": {"candidate": new, "production": old},
        "window": list(gate_window),
        "evaluated": report.evaluated,
        "candidate": {m: report.variants["candidate"][m] for m in ("ndcg@10", "recall@10")},
        "production": {"version": prod_name, **{m: report.variants["production"][m] for m in ("ndcg@10", "recall@10")}},
        "margin": margin,
        "passed": bool(new > old * (1.0 + margin) and new > 0.0),
    }


def every(
    period_s: float,
    run: Callable[[], Outcome],
    *,
    runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_failure: Callable[[BaseException], None] | None = None,
) -> dict[str, int]:
    """Call ``run`` every ``period_s`` (from each run's start): a run that raises is logged and
    counted, never publishes (``train_once`` publishes last), and the next period tries again.
    ``runs``: stop after that many (None: forever). Returns the outcome counts."""
    counts = {"published": 0, "rejected": 0, "failed": 0}
    done = 0
    while runs is None or done < runs:
        started = time.monotonic()
        try:
            result = run()
            counts["published" if result.published else "rejected"] += 1
        except (PersonaError, ModelError, OSError, RuntimeError, ValueError) as exc:
            counts["failed"] += 1
            log.error("training run failed (retrying in the next period): %s", exc)
            if on_failure is not None:
                on_failure(exc)
        done += 1
        if runs is not None and done >= runs:
            break
        sleep(max(0.0, period_s - (time.monotonic() - started)))
    return counts


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``1d`` (or plain seconds) -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError as exc:
        raise PersonaError(f"not a duration: {text!r} (e.g. 90s, 15m, 6h, 1d)") from exc
    if value <= 0:
        raise PersonaError(f"the period must be positive, got {text!r}")
    return value
