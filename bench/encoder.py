"""``persona bench encoder``: what Persona's encode path costs over bare inference.

For each variant (fp32, int8) and batch size (1, 8, 32, 128), on real Musical Instruments
review texts, in the same process with the same thread settings:

* (a) a bare onnxruntime session running batches that were tokenized, length-sorted and
  padded *before* the clock starts: the inference ceiling;
* (b) ``Encoder.encode`` with its cache disabled: tokenize, sort, pad, infer, pool, reorder.

The ratio (b)/(a) is the share of the ceiling Persona keeps; padding is identical in both
(the same ``Encoder.prepare`` batches), so the gap is purely our per-call overhead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from encoders.artifact import MODEL_FILE, Variant
from encoders.registry import Registry
from encoders.runtime import CPU, available_threads, load_encoder, session_options
from export import reviews

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZES: tuple[int, ...] = (1, 8, 32, 128)
VARIANTS: tuple[Variant, ...] = ("fp32", "int8")
#: Batch 1 is slow per text; this keeps a whole run near five minutes on two cores.
BATCH1_TEXTS = 128


@dataclass(frozen=True)
class Row:
    variant: str
    version: str
    batch: int
    texts: int
    mean_tokens: float
    bare_texts_per_s: float
    persona_texts_per_s: float
    threads: int
    provider: str

    @property
    def ratio(self) -> float:
        return self.persona_texts_per_s / self.bare_texts_per_s


def trainer_python() -> Path:
    return Path(os.environ.get("PERSONA_TRAIN_PYTHON") or REPO / ".venv-train" / "bin" / "python")


def ensure_versions(registry: Path, export_missing: bool) -> dict[str, Path]:
    """fp32 and int8 versions, exported (unpublished) through the trainer env if missing."""
    missing = [v for v in VARIANTS if Registry(registry).latest(v) is None]
    if missing:
        how = f"{trainer_python()} -m stream_app.cli model export --registry {registry} --no-publish " + " ".join(
            f"--variant {v}" for v in missing
        )
        if not export_missing or not trainer_python().is_file():
            raise SystemExit(f"registry {registry} lacks {missing}; create them with:\n  {how}")
        print(f"exporting {missing} (not published) via the trainer environment:\n  {how}", file=sys.stderr)
        cmd = [str(trainer_python()), "-m", "stream_app.cli", "model", "export", "--registry", str(registry)]
        cmd += ["--no-publish"] + [arg for v in missing for arg in ("--variant", v)]
        subprocess.run(cmd, check=True, cwd=REPO)
    out: dict[str, Path] = {}
    for v in VARIANTS:
        path = Registry(registry).latest(v)
        if path is None:
            raise SystemExit(f"export of {v} left no version in {registry}")
        out[v] = path
    return out


def measure(version_dir: Path, variant: str, corpus: list[str], batch: int, threads: int, repeat: int = 2) -> Row:
    texts = corpus[: min(len(corpus), BATCH1_TEXTS)] if batch == 1 else corpus
    # Rows only (max_batch_tokens=0): each column is the batch size it is labelled with.
    encoder = load_encoder(version_dir, device="cpu", threads=threads, cache_size=0, batch_size=batch, max_batch_tokens=0)
    bare = ort.InferenceSession(str(version_dir / MODEL_FILE), sess_options=session_options(threads), providers=[CPU])
    output = bare.get_outputs()[0].name
    batches = encoder.prepare(texts, batch)
    # Warm both sessions off the clock on the longest batch, so each arena is already sized.
    bare.run([output], dict(batches[-1].feeds))
    encoder.run(batches[-1])

    # Alternate (a) and (b) and keep each one's best pass: on a small shared machine the
    # noise between passes is larger than the difference being measured.
    bare_s = persona_s = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for b in batches:
            bare.run([output], dict(b.feeds))
        bare_s = min(bare_s, time.perf_counter() - started)

        started = time.perf_counter()
        encoder.encode(texts)
        persona_s = min(persona_s, time.perf_counter() - started)

    tokens = sum(int(b.feeds["attention_mask"].sum()) for b in batches)
    return Row(
        variant=variant,
        version=version_dir.name,
        batch=batch,
        texts=len(texts),
        mean_tokens=tokens / len(texts),
        bare_texts_per_s=len(texts) / bare_s,
        persona_texts_per_s=len(texts) / persona_s,
        threads=threads,
        provider=encoder.provider,
    )


def run(
    registry: Path, *, texts: int = 1024, threads: int | None = None, export_missing: bool = True, repeat: int = 2
) -> list[Row]:
    versions = ensure_versions(registry, export_missing)
    corpus = [r.text for r in reviews.read_reviews()[:texts]]
    n_threads = threads or available_threads()
    return [measure(versions[v], v, corpus, b, n_threads, repeat) for v in VARIANTS for b in BATCH_SIZES]


def render(rows: list[Row], console: Console) -> None:
    table = Table(title="persona bench encoder: (b) Persona encode vs (a) bare onnxruntime, same batches, best pass")
    for col in ("variant", "batch", "texts", "tokens/text", "(a) bare texts/s", "(b) Persona texts/s", "(b)/(a)"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r.variant,
            str(r.batch),
            str(r.texts),
            f"{r.mean_tokens:.1f}",
            f"{r.bare_texts_per_s:,.1f}",
            f"{r.persona_texts_per_s:,.1f}",
            f"{r.ratio:.3f}",
        )
    console.print(table)
    if rows:
        versions = sorted({f"{r.variant}={r.version}" for r in rows})
        console.print(f"provider {rows[0].provider}, {rows[0].threads} intra-op threads; " + ", ".join(versions))
