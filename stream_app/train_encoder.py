"""``persona train --encoder``: fine-tune the text encoder on the history, gate it, publish it.

One run (:func:`train_encoder_once`):

1. point-in-time pairs from the training slice (:mod:`export.encoder_data`);
2. contrastive fine-tuning with the sentiment objective (:mod:`export.finetune`);
3. export through the same checked path as a base model (:func:`export.pipeline.export_encoder`:
   ONNX, parity against torch, golden vectors), its sentiment head refitted on the training
   slice's rated reviews only, into the encoder registry, unpublished;
4. the gate: the prequential harness on the later slice, the candidate encoder against the
   production one (the registry's CURRENT, else the test models), both under the production
   ranker; and the text-only sentiment Spearman of both on the later slice's rated reviews,
   each through a head fitted on the same training reviews;
5. publish (``CURRENT``) and announce on the control topic only when the candidate's NDCG@10
   beats production's times ``1 + margin``. Workers hot-swap it; interests move to the
   new version from the engaged items' new vectors (:mod:`scoring.migrate`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from encoders.artifact import MANIFEST_FILE, read_manifest
from encoders.registry import Registry
from state.errors import PersonaError
from state.events import Event
from stream_app.evaluate import evaluate
from stream_app.models import open_text_encoder
from stream_app.settings import Settings
from stream_app.train import TrainResult, production

log = logging.getLogger(__name__)

#: Fine-tuning pairs kept (evenly over the window) on CPU: ~3 s a step of 64 on 2 cores.
CPU_PAIRS = 6_400
PARITY_TEXTS = 500


class NotEnoughPairs(PersonaError):
    """The stream has too little text to fine-tune on (the ranker can still be trained)."""


def sentiment_spearman(encoder: Any, train: Sequence[tuple[str, float]], held: Sequence[tuple[str, float]]) -> float | None:
    """Spearman of a softmax head's expected stars with the stars of ``held``, the head fitted
    on ``encoder``'s vectors of ``train`` (:func:`export.head.fit`); None without data."""
    from export import head as sentiment_head

    if len(train) < 20 or len(held) < 20:
        return None
    fitted = sentiment_head.fit(encoder.encode([t for t, _ in train]), np.array([r for _, r in train]))
    predicted = fitted.predict_stars(encoder.encode([t for t, _ in held]))
    return sentiment_head.spearman(predicted, np.array([r for _, r in held]))


def gate_encoder(
    events: Sequence[Event],
    settings: Settings,
    candidate: Any,
    current: Any,
    *,
    gate_window: tuple[float, float],
    margin: float,
    rated: tuple[Sequence[tuple[str, float]], Sequence[tuple[str, float]]] = ((), ()),
    progress: bool = False,
) -> dict[str, Any]:
    """The encoder's quality gate: prequential NDCG@10 on the later ``gate_window`` with the
    ``candidate`` encoder against ``current`` (None: no text encoder), both under the production
    ranker; passes when the candidate's beats production's times ``1 + margin`` (a tie fails).
    ``rated``: (training, later) rated reviews for the sentiment Spearman of each (recorded,
    not gated on: a ranker may weigh sentiment at 0)."""
    prod_ranker, weights = production(settings)
    scores: dict[str, dict[str, Any]] = {}
    for role, enc in (("candidate", candidate), ("production", current)):
        report = evaluate(events, settings, variants=(), window=gate_window, encoder=enc, candidates={role: weights}, progress=progress)
        scores[role] = {m: report.variants[role][m] for m in ("ndcg@10", "recall@10")}
        scores[role]["evaluated"] = report.evaluated
        scores[role]["version"] = None if enc is None else str(enc.info.version)
        if enc is not None and len(rated[0]) >= 20 and len(rated[1]) >= 20:
            scores[role]["sentiment_spearman"] = sentiment_spearman(enc, rated[0], rated[1])
    new, old = scores["candidate"]["ndcg@10"], scores["production"]["ndcg@10"]
    return {
        "metric": "ndcg@10", "window": list(gate_window), "margin": margin,
        "passed": bool(new > old * (1.0 + margin) and new > 0.0),
        "ranker": prod_ranker, "held_rated_reviews": len(rated[1]), **scores,
    }


def train_encoder_once(
    events: Sequence[Event],
    settings: Settings,
    *,
    source: dict[str, Any],
    train_window: tuple[float, float],
    gate_window: tuple[float, float],
    margin: float = 0.0,
    config: Any = None,
    pairs_limit: int | None = CPU_PAIRS,
    production_encoder: str = "auto",
    publish: bool = True,
    announce: bool = True,
    progress: bool = False,
) -> TrainResult:
    from encoders.runtime import load_encoder
    from export.encoder_data import pairs_from
    from export.finetune import FinetuneConfig, finetune
    from export.pipeline import export_encoder

    if not (0.0 <= train_window[0] < train_window[1] <= gate_window[0] < gate_window[1] <= 1.0):
        raise PersonaError(f"the gate slice {gate_window} must come after the training slice {train_window}")
    config = config or FinetuneConfig()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    pairs = pairs_from(events, train_window, limit=pairs_limit)
    if len(pairs.queries) < config.batch_size:
        raise NotEnoughPairs(
            f"the training slice {train_window} has {len(pairs.queries)} (history text, next item text) pairs; fine-tuning "
            f"needs at least a batch ({config.batch_size}): does the stream carry item or review text?"
        )
    held = pairs_from(events, gate_window).rated
    seconds["pairs"] = time.perf_counter() - t0
    registry = Path(settings.model_registry)
    registry.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".finetune-", dir=registry))
    try:
        t0 = time.perf_counter()
        tuned = finetune(pairs, work / "minilm-l6-ft", config=config, progress=progress)
        seconds["finetune"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = [t for t, _ in pairs.rated] or pairs.positives
        parity = texts[:: max(1, len(texts) // PARITY_TEXTS)][:PARITY_TEXTS]
        version_dir = export_encoder(
            tuned.folder, "fp32", registry, parity_texts=parity,
            train_pairs=pairs.rated if len(pairs.rated) >= 20 else None, publish=False,
        )
        seconds["export"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = read_manifest(version_dir)
    t0 = time.perf_counter()
    gate = gate_encoder(
        events, settings, load_encoder(version_dir, device="cpu"), open_text_encoder(production_encoder, settings),
        gate_window=gate_window, margin=margin, rated=(pairs.rated, held), progress=progress,
    )
    seconds["gate"] = time.perf_counter() - t0
    passed = gate["passed"]
    new, old = gate["candidate"]["ndcg@10"], gate["production"]["ndcg@10"]
    training = {
        **source, "window": list(train_window), "pairs": len(pairs.queries), "rated_reviews": len(pairs.rated),
        "positions": [pairs.positions[0], pairs.positions[-1]] if pairs.positions else [],
        "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr, "freeze": config.freeze,
        "sentiment_weight": config.sentiment_weight, "max_length": config.max_length, "seed": config.seed,
        "device": tuned.device, "steps": tuned.steps, "loss_first": tuned.losses[0], "loss_last": tuned.losses[-1],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    final = msgspec.structs.replace(manifest, training=training, gate=gate)
    path = version_dir / MANIFEST_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(final), indent=2))
    tmp.replace(path)
    published = False
    if passed and publish:
        Registry(registry).publish(manifest.version)
        published = True
        if announce:
            from stream_app.control import announce as send

            send(settings, "encoder", "publish", manifest.version)
    log.info(
        "encoder %s: ndcg@10 %.4f vs production %s %.4f (margin %.2f): %s",
        manifest.version, new, gate["production"]["version"], old, margin, "published" if published else "not published",
    )
    return TrainResult(version=manifest.version, path=version_dir, published=published, gate=gate, seconds=seconds)
