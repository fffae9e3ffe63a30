"""``persona bench reviews``: reviews/s through the two-stage pipeline of one worker, against
the encoder alone on the same texts, measured in the same run with the same threads.

* baseline: ``Encoder.encode`` on the same review texts in micro-batches of
  ``PERSONA_REVIEW_BATCH``: what the encoder can do when it does nothing else;
* pipeline: those reviews, already on the broker, through a real ``persona worker``:
  decode, micro-batch, encode on a thread, send to ``reviews.encoded``, apply per event to
  the RocksDB profile, score and emit. Timed from the first applied review to the last
  (the worker's start and model load are outside the clock).

The ratio pipeline/baseline is the share of the encoder's speed the streaming design keeps.
The baseline is the faster of the encoder with onnxruntime's intra-op threads spin-waiting
between calls (its default) and without; the worker runs with ``PERSONA_MODEL_SPIN`` (off by
default: spinning threads take the cores the event loop and the broker need), and
``pipeline_spins`` runs it both ways in the same run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.encoder import ensure_versions
from bench.harness import bench_settings, broker, drain_rate, workdir
from deploy.workers import WorkerProcess
from encoders.runtime import available_threads, load_encoder
from state.events import Event, Review
from stream_app.producer import publish
from stream_app.reviews import review_text
from stream_app.settings import Settings
from stream_app.sources import read_events
from stream_app.topics import ensure_topics

AMAZON = Path("amazon2014-musical-instruments-5core") / "reviews_Musical_Instruments_5.json.gz"


def encoder_alone(
    version_dir: Path, texts: list[str], batch: int, threads: int, device: str = "cpu", max_batch_tokens: int | None = None,
    spin: bool = True,
) -> float:
    """Texts/s of the encoder on ``texts`` in batches of ``batch`` (cache off, warmed up)."""
    encoder = load_encoder(
        version_dir, device=device, threads=threads, cache_size=0, batch_size=batch, max_batch_tokens=max_batch_tokens,  # type: ignore[arg-type]
        spin=spin,
    )
    if device == "cuda" and encoder.provider != "CUDAExecutionProvider":
        raise RuntimeError(f"asked for CUDA, the session runs on {encoder.provider}: no GPU figures from a CPU run")
    encoder.encode(texts[: batch * 2])
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        encoder.encode(texts[start : start + batch])
    return len(texts) / (time.perf_counter() - started)


def pipeline(settings: Settings, n: int, workdir: Path, timeout: float = 1800.0) -> float:
    """Reviews/s through one worker, first applied review to the last."""
    worker = WorkerProcess(settings, workdir / f"{settings.app_id}.log")
    try:
        return drain_rate(worker, n, timeout, topic=settings.topic("review"), outcome="applied")
    finally:
        worker.stop()


def run(
    bootstrap: str | None,
    data_dir: Path,
    registry: Path,
    *,
    reviews: int = 2_000,
    threads: int | None = None,
    export_missing: bool = True,
    device: str = "cpu",
    batch: int | None = None,
    max_batch_tokens: int | None = None,
    pipeline_spins: tuple[bool, ...] = (False,),
) -> list[dict[str, Any]]:
    """``device="cuda"`` (the GPU machine): the fp32 artifact only, whose fp16 graph the
    worker and the baseline run there; ``batch``/``max_batch_tokens`` override the settings'
    micro-batch (on a GPU: e.g. 1024 rows and a 65,536-token budget); ``pipeline_spins``: the
    worker's ``model_spin`` per pipeline run (a row each)."""
    versions = ensure_versions(registry, export_missing)
    if device == "cuda":
        versions = {k: v for k, v in versions.items() if k == "fp32"}
    chosen = [e for e in read_events("amazon", data_dir / AMAZON) if isinstance(e, Review)][:reviews]
    events: list[Event] = list(chosen)
    texts = [review_text(e) for e in chosen]
    threads = threads or available_threads()
    rows: list[dict[str, Any]] = []
    with broker(bootstrap) as bs, workdir("persona-bench-reviews-") as work:
        for variant, version_dir in versions.items():
            # A registry of this one version, so the worker loads exactly what the baseline ran.
            reg = work / f"registry-{variant}"
            reg.mkdir()
            (reg / version_dir.name).symlink_to(version_dir.resolve())
            (reg / "CURRENT").write_text(version_dir.name)
            alone = {
                spin: encoder_alone(version_dir, texts, batch or Settings().review_batch, threads, device, max_batch_tokens, spin)
                for spin in (True, False)
            }
            for spin in pipeline_spins:
                tag = f"benchrev{variant}{'spin' if spin else ''}{int(time.time())}"
                base = bench_settings(bs, tag, work / f"state-{variant}-{spin}")
                settings = base.model_copy(
                    update={"model_registry": reg, "model_threads": threads, "model_device": device, "model_spin": spin,
                            "review_batch": batch or base.review_batch, "model_batch_tokens": max_batch_tokens}
                )
                ensure_topics(settings)
                publish(settings, events)
                through = pipeline(settings, len(events), work)
                best = max(alone.values())
                rows.append(
                    {
                        "variant": variant,
                        "version": version_dir.name,
                        "reviews": len(events),
                        "batch": settings.review_batch,
                        "threads": threads,
                        "device": device,
                        "max_batch_tokens": max_batch_tokens,
                        "encoder_alone_per_s": best,
                        "encoder_alone_spin_per_s": alone[True],
                        "encoder_alone_nospin_per_s": alone[False],
                        "pipeline_spin": spin,
                        "pipeline_per_s": through,
                        "ratio": through / best,
                    }
                )
    return rows
