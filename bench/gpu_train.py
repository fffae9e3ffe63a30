"""Training on a GPU against the same work on CPU, in one run: the encoder's fine-tuning steps
and the ranker's BCE fit on Musical Instruments (trainer environment, torch with CUDA).

    .venv-train/bin/python bench/gpu_train.py [--steps 20] [--out var/bench/gpu-train.json]

Encoder: the same point-in-time pairs (``export.encoder_data``), ``--steps`` steps of batch 64 on
each device; the figure is pairs/s, and the ratio is GPU over CPU. Ranker: the point-in-time
examples of the first 80% (collected once, on CPU), the same network fitted on each device for
a fixed number of epochs. Refuses (exit 2) without CUDA: CPU numbers must never pass for GPU ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as a plain script
    sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "gpu-train.json")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible to torch: refusing to report CPU figures as GPU ones", file=sys.stderr)
        return 2
    from export.encoder_data import pairs_from
    from export.finetune import FinetuneConfig, finetune
    from export.ranker import Arrays, fit
    from scoring.ranker import linear
    from state.paths import data_dir
    from stream_app.evaluation_report import DATASETS, TUNED
    from stream_app.settings import Settings
    from stream_app.sources import read_events
    from stream_app.training_data import collect

    fmt, rel = DATASETS["Musical Instruments"]
    events = list(read_events(fmt, data_dir() / rel))
    batch = 64
    pairs = pairs_from(events, (0.0, 0.8), limit=args.steps * batch)
    report: dict[str, object] = {"gpu": torch.cuda.get_device_name(0), "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count()}
    for device in ("cpu", "cuda"):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            result = finetune(pairs, Path(tmp) / "m", config=FinetuneConfig(batch_size=batch, device=device))
            seconds = time.perf_counter() - started
        report[f"encoder_{device}"] = {
            "steps": result.steps, "seconds": round(seconds, 2), "pairs_per_s": round(result.steps * batch / seconds, 1)
        }
    settings = Settings(**TUNED["Musical Instruments"])  # type: ignore[arg-type]
    examples = collect(events, settings, window=(0.0, 0.8), negatives=20, seed=0)
    data = Arrays(examples.features, examples.labels, examples.groups)
    for device in ("cpu", "cuda"):
        started = time.perf_counter()
        fit(data, seed=0, epochs=args.epochs, device=device, prior=linear(settings.rank_weights()))
        report[f"ranker_{device}"] = {"examples": len(examples), "epochs": args.epochs, "seconds": round(time.perf_counter() - started, 2)}
    enc_cpu, enc_gpu = report["encoder_cpu"], report["encoder_cuda"]
    rk_cpu, rk_gpu = report["ranker_cpu"], report["ranker_cuda"]
    assert isinstance(enc_cpu, dict) and isinstance(enc_gpu, dict) and isinstance(rk_cpu, dict) and isinstance(rk_gpu, dict)
    report["encoder_speedup"] = round(enc_gpu["pairs_per_s"] / enc_cpu["pairs_per_s"], 2)
    report["ranker_speedup"] = round(rk_cpu["seconds"] / rk_gpu["seconds"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
