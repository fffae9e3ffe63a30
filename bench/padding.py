"""``persona bench padding``: the token budget per inference call against a row count alone.

The stream's encode stage takes up to ``PERSONA_REVIEW_BATCH`` reviews at a time and hands
them to ``Encoder.encode`` as one micro-batch. Cut by rows alone, a micro-batch of 64 real
Musical Instruments reviews is one call padded to its longest review (256 tokens in almost
every batch, where the median review is ~70), so most of the compute goes to padding. Cut by
a token budget (the length-sorted rows, at most ``budget`` padded tokens per call) it is
several calls of similar lengths.

For each variant, the same micro-batches of consecutive reviews, in the same process with the
same threads, alternating the two policies and keeping each one's best pass:

* texts/s rows alone (``max_batch_tokens=0``, the baseline) and with the budget (the CPU
  default, :data:`encoders.runtime.CPU_BATCH_TOKENS`, unless given);
* the share of real tokens among the padded ones, for each;
* the worst cosine between the two policies' vectors of the same text: ~1 for fp32, lower
  for int8, which quantizes its activations per call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.encoder import VARIANTS, ensure_versions
from encoders.runtime import CPU_BATCH_TOKENS, Encoder, available_threads, load_encoder
from export import reviews


@dataclass(frozen=True)
class Row:
    variant: str
    version: str
    micro_batch: int
    budget: int
    texts: int
    rows_only_texts_per_s: float
    budget_texts_per_s: float
    rows_only_real_share: float
    budget_real_share: float
    min_cos: float
    threads: int

    @property
    def ratio(self) -> float:
        return self.budget_texts_per_s / self.rows_only_texts_per_s


def real_share(encoder: Encoder, micro: list[list[str]]) -> float:
    """Real tokens over padded tokens of the calls ``encoder`` makes for these micro-batches."""
    real = padded = 0
    for texts in micro:
        for batch in encoder.prepare(texts):
            mask = batch.feeds["attention_mask"]
            real += int(mask.sum())
            padded += int(mask.size)
    return real / padded


def _encode_all(encoder: Encoder, micro: list[list[str]]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    out = [encoder.encode(texts) for texts in micro]
    return time.perf_counter() - started, np.concatenate(out)


def measure(
    version_dir: Path, variant: str, corpus: list[str], micro_batch: int, budget: int, threads: int, repeat: int
) -> Row:
    micro = [corpus[i : i + micro_batch] for i in range(0, len(corpus), micro_batch)]
    kw = {"device": "cpu", "threads": threads, "cache_size": 0, "batch_size": micro_batch}
    rows_only = load_encoder(version_dir, max_batch_tokens=0, **kw)  # type: ignore[arg-type]
    budgeted = load_encoder(version_dir, max_batch_tokens=budget, **kw)  # type: ignore[arg-type]
    # Warm both sessions off the clock on the longest micro-batch, so each arena is already sized.
    longest = max(micro, key=lambda m: max(len(t) for t in m))
    rows_only.encode(longest)
    budgeted.encode(longest)
    best_rows = best_budget = float("inf")
    vec_rows = vec_budget = np.empty(0)
    for _ in range(repeat):
        s, vec_rows = _encode_all(rows_only, micro)
        best_rows = min(best_rows, s)
        s, vec_budget = _encode_all(budgeted, micro)
        best_budget = min(best_budget, s)
    return Row(
        variant=variant,
        version=version_dir.name,
        micro_batch=micro_batch,
        budget=budget,
        texts=len(corpus),
        rows_only_texts_per_s=len(corpus) / best_rows,
        budget_texts_per_s=len(corpus) / best_budget,
        rows_only_real_share=real_share(rows_only, micro),
        budget_real_share=real_share(budgeted, micro),
        min_cos=float((vec_rows * vec_budget).sum(axis=1).min()),
        threads=threads,
    )


def run(
    registry: Path,
    *,
    texts: int = 1024,
    micro_batch: int = 64,
    budget: int = CPU_BATCH_TOKENS,
    threads: int | None = None,
    export_missing: bool = True,
    repeat: int = 2,
) -> list[Row]:
    if budget < 1:
        raise ValueError(f"budget must be >= 1 token, got {budget}")
    versions = ensure_versions(registry, export_missing)
    corpus = [r.text for r in reviews.read_reviews()[:texts]]
    n_threads = threads or available_threads()
    return [measure(versions[v], v, corpus, micro_batch, budget, n_threads, repeat) for v in VARIANTS]


def render(rows: list[Row], console: Console) -> None:
    table = Table(title="persona bench padding: token budget per call vs rows alone, same micro-batches, best pass")
    for col in ("variant", "micro-batch", "budget", "texts", "rows alone texts/s", "budget texts/s", "budget/rows",
                "real tokens, rows / budget", "min cos"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r.variant, str(r.micro_batch), str(r.budget), str(r.texts), f"{r.rows_only_texts_per_s:,.1f}",
            f"{r.budget_texts_per_s:,.1f}", f"{r.ratio:.3f}", f"{r.rows_only_real_share:.3f} / {r.budget_real_share:.3f}",
            f"{r.min_cos:.4f}",
        )
    console.print(table)
    if rows:
        console.print(f"CPU, {rows[0].threads} intra-op threads; " + ", ".join(f"{r.variant}={r.version}" for r in rows))
