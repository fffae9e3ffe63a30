"""Contrastive fine-tuning of the text encoder, with a sentiment objective beside it.

The objective (one step, a batch of B pairs from :mod:`export.encoder_data`):

- **contrastive**: mean-pooled, normalised embeddings of the queries (the user's history
  text) and of the positives (the next item's text); logits = cos / temperature, and each
  query's own positive is the class among the B positives of the batch (in-batch negatives,
  symmetric: positives against queries too). A positive of the same item as the query's
  is masked out rather than counted as a negative;
- **sentiment** (when the window has rated reviews): a linear 5-class head on the same
  pooled embeddings, cross-entropy on a batch of (review text, stars), weighted by
  ``sentiment_weight``. The head itself is not exported: the exporter refits its softmax
  head on the fine-tuned vectors (:mod:`export.head`), as it does for the base model.

``freeze``: the token embeddings and the first ``freeze`` transformer layers stay as they
are (on 2 CPU cores, training all 6 layers of MiniLM costs about 3x the top 2). Fixed seeds,
deterministic on CPU; ``device="cuda"`` (or ``auto`` when one is present) trains on a GPU.
The result is a Hugging Face folder that :func:`export.pipeline.export_encoder` turns into
a checked ONNX version.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export import reference
from export.encoder_data import EncoderPairs
from export.ranker import pick_device

log = logging.getLogger("persona.finetune")

TEMPERATURE = 0.05
MAX_LENGTH = 64


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 3e-5
    freeze: int = 4
    sentiment_weight: float = 0.5
    max_length: int = MAX_LENGTH
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class FinetuneResult:
    folder: Path
    steps: int
    seconds: float
    losses: list[float]
    device: str
    trainable: int


def _pool(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: torch.device) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    pooled: torch.Tensor = reference.mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
    return pooled


def finetune(
    pairs: EncoderPairs,
    out: Path,
    *,
    source: Path | None = None,
    config: FinetuneConfig = FinetuneConfig(),
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune ``source`` (default: the packaged all-MiniLM-L6-v2) and save it to ``out``."""
    if len(pairs.queries) < config.batch_size:
        raise ValueError(f"fine-tuning needs at least {config.batch_size} pairs, got {len(pairs.queries)}")
    started = time.perf_counter()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    # Bit-for-bit repeatable on CPU; on CUDA deterministic kernels would need a cuBLAS
    # workspace setting and cost speed, so a GPU run is seeded but not bit-exact.
    torch.use_deterministic_algorithms(device.type == "cpu")
    src = source if source is not None else reference.packaged_model_dir()
    model, tokenizer = reference.load(src)
    model.to(device)
    layers = model.encoder.layer
    if not 0 <= config.freeze <= len(layers):
        raise ValueError(f"freeze must be 0..{len(layers)}, got {config.freeze}")
    for p in model.parameters():
        p.requires_grad = False
    for layer in layers[config.freeze :]:
        for p in layer.parameters():
            p.requires_grad = True
    dim = int(model.config.hidden_size)
    head = torch.nn.Linear(dim, 5).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    rng = np.random.default_rng(config.seed)
    n = len(pairs.queries)
    batches_per_epoch = n // config.batch_size
    total = batches_per_epoch * config.epochs
    # Linear warm-up over the first 10% of steps, then linear decay: the usual schedule for
    # fine-tuning a pretrained transformer without knocking it off its minimum.
    warm = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    rated = pairs.rated
    items = np.array(pairs.items, dtype=object)
    losses: list[float] = []
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="encoder", unit="step")
    model.train()
    step = 0
    for _ in range(config.epochs):
        order = rng.permutation(n)
        for b in range(batches_per_epoch):
            rows = order[b * config.batch_size : (b + 1) * config.batch_size]
            q = _pool(model, tokenizer, [pairs.queries[i] for i in rows], config.max_length, device)
            p = _pool(model, tokenizer, [pairs.positives[i] for i in rows], config.max_length, device)
            logits = q @ p.T / TEMPERATURE
            ids = items[rows]
            same = torch.from_numpy((ids[:, None] == ids[None, :]) & ~np.eye(len(rows), dtype=bool)).to(device)
            logits = logits.masked_fill(same, -1e4)
            target = torch.arange(len(rows), device=device)
            loss = 0.5 * (
                torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
            )
            if rated and config.sentiment_weight > 0:
                pick = rng.integers(0, len(rated), size=min(config.batch_size // 2, len(rated)))
                s = _pool(model, tokenizer, [rated[i][0] for i in pick], config.max_length, device)
                stars = torch.tensor([int(round(rated[i][1])) - 1 for i in pick], device=device)
                # x20: the pooled vectors have unit norm, so the head needs the scale.
                loss = loss + config.sentiment_weight * torch.nn.functional.cross_entropy(head(s * 20.0), stars)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"fine-tuning diverged at step {step}: loss {value}")
            losses.append(value)
            step += 1
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3f}")
                bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    seconds = time.perf_counter() - started
    log.info("fine-tuned the encoder for %d steps in %.0f s on %s (loss %.3f -> %.3f)", step, seconds, device, losses[0], losses[-1])
    return FinetuneResult(folder=out, steps=step, seconds=seconds, losses=losses, device=str(device), trainable=trainable)
