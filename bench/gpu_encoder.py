"""Sentences/s of encoder artifacts on CUDA, fp32 vs fp16, batch 1..1024 at 64 tokens.

    python bench/gpu_encoder.py --artifact models/encoder            # newest fp32 + fp16
    python bench/gpu_encoder.py --artifact DIR_FP32 --artifact DIR_FP16
    python bench/gpu_encoder.py --artifact DIR_FP32 --fp16-from-fp32  # fp16 derived here

Inputs are synthetic (random in-vocabulary ids, every position real): throughput at a fixed
shape does not depend on which tokens they are. Three columns per row:

* ``numpy``: ``session.run`` with host arrays in and ``last_hidden_state`` copied back, as
  ``encoders.Encoder`` does (it pools on the host);
* ``device out``: the output bound on the GPU with IOBinding, i.e. the ceiling without the
  [batch, 64, dim] device-to-host copy;
* ``persona``: the whole ``encoders.Encoder.encode`` path (tokenize, sort, pad, infer, pool,
  normalize, no cache) on texts of single-token words that tokenize to exactly 64 tokens.

``--fp16-from-fp32`` converts each fp32 artifact with the exporter's own fp16 conversion
(``export.graph.convert_fp16``) into a temporary artifact, so one fp32 artifact is all that has
to reach the GPU machine; its golden check against the fp32 goldens is printed.

Refuses (exit 2) unless the session really runs on CUDAExecutionProvider: onnxruntime-gpu
without CUDA libraries falls back to CPU silently, and CPU numbers must never pass for GPU ones.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as a plain script from anywhere
    sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from encoders.artifact import MANIFEST_FILE, MODEL_FILE, read_manifest, sha256_file, verify  # noqa: E402
from encoders.registry import Registry  # noqa: E402
from encoders.runtime import Encoder, load_encoder  # noqa: E402
from state.errors import ModelError  # noqa: E402

CUDA = "CUDAExecutionProvider"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REFUSAL = 2


def refuse(message: str) -> None:
    print(f"gpu_encoder: refusing to benchmark: {message}", file=sys.stderr)
    raise SystemExit(REFUSAL)


def pick_artifacts(paths: list[Path]) -> list[Path]:
    """Version dirs as given; a registry root becomes its newest fp32 and fp16 versions."""
    out: list[Path] = []
    for path in paths:
        if (path / MANIFEST_FILE).is_file():
            out.append(path)
            continue
        registry = Registry(path)
        newest = [d for d in (registry.latest("fp32"), registry.latest("fp16")) if d is not None]
        if not newest:
            refuse(f"{path} is neither a version directory nor a registry with fp32/fp16 versions")
        out.extend(newest)
    return out


def cuda_session(model: Path, device_id: int) -> ort.InferenceSession:
    if CUDA not in ort.get_available_providers():
        refuse(f"this onnxruntime ({ort.__version__}) has no {CUDA}; install onnxruntime-gpu")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model), sess_options=opts, providers=[(CUDA, {"device_id": device_id})])
    actual = session.get_providers()
    if not actual or actual[0] != CUDA:
        refuse(f"{CUDA} is listed but the session runs on {actual} (CUDA/cuDNN libraries missing or no GPU)")
    return session


def feeds(session: ort.InferenceSession, batch: int, seq: int, vocab_hi: int, rng: np.random.Generator) -> dict[str, Any]:
    every = {
        "input_ids": rng.integers(1000, vocab_hi, size=(batch, seq), dtype=np.int64),
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }
    return {i.name: every[i.name] for i in session.get_inputs()}


def timed(fn: Any, min_seconds: float, min_iters: int) -> float:
    """Seconds per call: 3 warm-up calls, then at least min_iters and min_seconds of calls."""
    for _ in range(3):
        fn()
    iters, started = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - started < min_seconds:
        fn()
        iters += 1
    return (time.perf_counter() - started) / iters


def derive_fp16(fp32_dir: Path, into: Path) -> Path:
    """A complete fp16 artifact next to ``fp32_dir``'s files, converted as the exporter does."""
    from export.graph import convert_fp16  # torch is imported there: only this option needs it

    manifest = read_manifest(fp32_dir)
    if manifest.variant != "fp32":
        refuse(f"--fp16-from-fp32 needs fp32 artifacts, {fp32_dir} is {manifest.variant}")
    out = into / manifest.version.replace("-fp32-", "-fp16-")
    shutil.copytree(fp32_dir, out, ignore=shutil.ignore_patterns(MODEL_FILE, MANIFEST_FILE))
    started = time.perf_counter()
    convert_fp16(fp32_dir / MODEL_FILE, out / MODEL_FILE)
    print(f"converted {manifest.version} to fp16 in {time.perf_counter() - started:.1f} s")
    sha = dict(manifest.sha256, **{MODEL_FILE: sha256_file(out / MODEL_FILE)})
    derived = msgspec.structs.replace(manifest, version=out.name, variant="fp16", sha256=sha)
    (out / MANIFEST_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(derived)))
    return out


def words_text(vocab: list[str], n_words: int, rng: np.random.Generator) -> str:
    return " ".join(vocab[int(i)] for i in rng.integers(0, len(vocab), size=n_words))


def sixty_four_token_texts(encoder: Encoder, seq: int, count: int) -> list[str]:
    """Texts of whole-word vocabulary entries that tokenize to exactly ``seq`` tokens."""
    vocab = sorted(
        w for w in encoder._tokenizer.get_vocab() if w.isascii() and w.isalpha() and w.islower() and len(w) > 2
    )
    rng = np.random.default_rng(1)
    texts = [words_text(vocab, seq - 2, rng) for _ in range(count)]
    lengths = {len(e.ids) for e in encoder._tokenizer.encode_batch(texts)}
    if lengths != {seq}:
        refuse(f"synthetic texts tokenize to {sorted(lengths)} tokens, not {seq}")
    return texts


def bench(path: Path, args: argparse.Namespace) -> None:
    manifest = read_manifest(path)
    verify(path, manifest)
    session = cuda_session(path / MODEL_FILE, args.device_id)
    output = session.get_outputs()[0].name
    encoder = load_encoder(path, device="cuda", cache_size=0)
    if encoder.provider != CUDA:
        refuse(f"the Persona encoder runs on {encoder.provider}")
    try:
        golden = f"{encoder.golden_check():.6f}"
    except ModelError as exc:  # reported, not fatal: the speed is still worth reading
        golden = f"FAILED ({exc})"
    texts = sixty_four_token_texts(encoder, args.seq, max(b for b in BATCHES if b <= args.max_batch))
    print(
        f"\n{manifest.version} ({manifest.variant}) providers={session.get_providers()} seq={args.seq} "
        f"golden min cos vs {manifest.golden_from or manifest.variant} {golden}"
    )
    print(f"{'batch':>6} {'numpy sent/s':>14} {'device-out sent/s':>18} {'persona sent/s':>15} {'persona/numpy':>14}")
    rng = np.random.default_rng(0)
    for batch in (b for b in BATCHES if b <= args.max_batch):
        inputs = feeds(session, batch, args.seq, args.vocab_hi, rng)
        host = timed(lambda inputs=inputs: session.run([output], inputs), args.min_seconds, args.min_iters)
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(output, "cuda", args.device_id)

        def on_device(binding: Any = binding) -> None:
            session.run_with_iobinding(binding)

        device = timed(on_device, args.min_seconds, args.min_iters)
        encoder.batch_size = batch
        chunk = texts[:batch]
        persona = timed(lambda chunk=chunk: encoder.encode(chunk), args.min_seconds, args.min_iters)
        print(
            f"{batch:>6} {batch / host:>14,.1f} {batch / device:>18,.1f} {batch / persona:>15,.1f} "
            f"{host / persona:>14.3f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, action="append", required=True, help="version dir or registry root")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sentence")
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per batch size at least")
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--vocab-hi", type=int, default=30000, help="upper bound of synthetic token ids")
    parser.add_argument("--fp16-from-fp32", action="store_true", help="also bench an fp16 conversion of each fp32 artifact")
    args = parser.parse_args(argv)
    if hasattr(ort, "preload_dlls"):
        # CUDA/cuDNN from the nvidia-* wheels (as torch installs them) when no system CUDA is on the path.
        ort.preload_dlls()
    artifacts = pick_artifacts(args.artifact)
    scratch = Path(tempfile.mkdtemp(prefix="persona-gpu-"))
    if args.fp16_from_fp32:
        artifacts += [derive_fp16(a, scratch) for a in artifacts if read_manifest(a).variant == "fp32"]
    # Refuse before printing any number: the first session decides whether CUDA is real.
    cuda_session(artifacts[0] / MODEL_FILE, args.device_id)
    print(f"onnxruntime {ort.__version__}, device {ort.get_device()}")
    for path in artifacts:
        bench(path, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
