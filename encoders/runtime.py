"""Text -> unit vector, on onnxruntime alone (the worker environment has no torch).

The path per call: exact-text LRU cache, then tokenize the misses once (truncated, not
padded), sort them by token length so each batch pads to a similar length, run the graph
per batch, pool and normalize with :mod:`encoders.pooling` (the function the exporter used
for its parity check), and scatter the rows back into input order.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from encoders.artifact import (
    GOLDEN_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Head,
    Manifest,
    read_head,
    read_manifest,
    verify,
)
from encoders.pooling import F32, cosine_rows, mean_pool_normalize
from state.errors import ModelError

log = logging.getLogger("persona.encoders")

Device = Literal["auto", "cpu", "cuda"]
Feeds = dict[str, npt.NDArray[np.int64]]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_KNOWN_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})
GOLDEN_MIN_COS = 0.999
#: The padded-token budget per inference call on CPU when none is set. A row count alone pads
#: every row to the batch's longest: 64 Musical Instruments reviews (median 71 tokens, 7% past
#: the 256 cut) are padded to 256 in almost every batch, so 60% of the compute went to padding.
#: Cut by this budget the same reviews are 89% real tokens, and 2.5-3x more of them are encoded
#: per second on two cores (fp32 and int8; 512-1536 measured about the same). On CUDA a row
#: count alone stays the default: a GPU wants its batches full (see PERSONA_MODEL_BATCH_TOKENS).
CPU_BATCH_TOKENS = 1024
# Set after CUDA was listed but failed to start: later loads in this process (hot swaps)
# go straight to CPU instead of repeating onnxruntime's load errors every time.
_cuda_failed = False


@dataclass(frozen=True)
class EncoderInfo:
    version: str
    dim: int
    variant: str
    #: The provider the session really runs on (``session.get_providers()[0]``).
    provider: str
    #: sha256 of the graph file in use.
    sha256: str
    max_length: int
    #: The graph file in use: model.onnx, or the fp16 graph on CUDA.
    graph: str = MODEL_FILE


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    size: int
    maxsize: int


@dataclass(frozen=True)
class Batch:
    """One padded batch: ``rows`` are positions in the caller's list."""

    rows: npt.NDArray[np.intp]
    feeds: Feeds


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: Files that exist wherever the NVIDIA kernel driver is loaded (bare metal, containers run
#: with the NVIDIA runtime). WSL2 and Jetson have neither; ``libcuda.so.1`` covers those.
_NVIDIA_NODES = ("/dev/nvidia0", "/proc/driver/nvidia/version")
_LIBCUDA = "libcuda.so.1"


@functools.cache
def cuda_possible() -> bool:
    """Whether this machine can have a usable NVIDIA GPU at all: a cheap probe, cached per process.

    onnxruntime-gpu lists CUDAExecutionProvider on every machine; asking for it on one
    without a GPU prints a red ERROR (it fails to dlopen cuBLAS) before falling back to
    CPU. So ``device="auto"`` only asks for CUDA where this says True: an NVIDIA device
    node or driver file exists, or the driver's ``libcuda.so.1`` loads (it is tiny and part
    of the driver, unlike cuBLAS/cuDNN). ``CUDA_VISIBLE_DEVICES`` set to empty or ``-1``
    hides every GPU, so it also means no. ``device="cuda"`` does not consult this: it
    always tries CUDA and fails loudly.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if any(os.path.exists(node) for node in _NVIDIA_NODES):
        return True
    try:
        ctypes.CDLL(_LIBCUDA)
    except OSError:
        return False
    return True


def _try_cuda(device: Device, *, auto_cuda: bool = True) -> bool:
    """Whether to ask onnxruntime for CUDA: always for ``device="cuda"``; for ``"auto"`` only
    where a GPU can be present and CUDA has not already failed in this process."""
    if CUDA not in ort.get_available_providers():
        return False
    if device == "cuda":
        return True
    return device == "auto" and auto_cuda and not _cuda_failed and cuda_possible()


def session_options(threads: int | None, spin: bool = True) -> ort.SessionOptions:
    """Explicit thread counts: onnxruntime's default spins one thread per *host* core, which
    oversubscribes a container limited to fewer cores and fights the worker's event loop.

    ``spin=False``: the intra-op threads block when a call ends instead of spin-waiting for the
    next one (onnxruntime's ``session.intra_op.allow_spinning``). Spinning is faster for an
    encoder that has the cores to itself; beside an event loop, a broker or another job on the
    same cores it burns CPU they need (``persona bench reviews`` measures both)."""
    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads or available_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def _spinning(spin: bool) -> str:
    return "" if spin else ", no spinning"


def open_session(
    model: Path, device: Device, threads: int | None, *, auto_cuda: bool = True, spin: bool = True
) -> tuple[ort.InferenceSession, str]:
    """A session and the provider it *really* uses. ``auto_cuda=False`` keeps ``device="auto"``
    on CPU (int8 graphs: their dynamic-quantization ops are CPU kernels, so on CUDA they would
    bounce between devices).

    onnxruntime-gpu lists CUDAExecutionProvider even where the CUDA libraries are missing;
    asking for it then prints a load error and silently runs on CPU (``get_device()`` still
    says GPU). Only ``session.get_providers()`` tells the truth, so that is what we check.
    ``device="auto"`` asks for CUDA only where :func:`cuda_possible` finds a GPU, so a CPU
    machine never sees that load error.
    """
    global _cuda_failed
    if device == "cuda" and CUDA not in ort.get_available_providers():
        raise ModelError("device='cuda' but this onnxruntime build has no CUDAExecutionProvider")
    # device="auto" on a machine without a GPU goes straight to CPU (see cuda_possible).
    providers = [CUDA, CPU] if _try_cuda(device, auto_cuda=auto_cuda) else [CPU]
    try:
        session = ort.InferenceSession(str(model), sess_options=session_options(threads, spin), providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind classes, not a common base
        raise ModelError(f"onnxruntime cannot load {model} on {providers[0]}: {exc}") from exc
    actual = session.get_providers()[0]
    if providers[0] == CUDA and actual != CUDA:
        _cuda_failed = True
        if device == "cuda":
            raise ModelError(
                "device='cuda' but onnxruntime fell back to CPU: the CUDA provider could not start "
                "(missing CUDA/cuDNN libraries or no GPU; see onnxruntime's error above)"
            )
        log.warning(
            "CUDAExecutionProvider is listed but could not start (missing CUDA/cuDNN libraries or "
            "no GPU); the encoder runs on CPU"
        )
    return session, actual


class Encoder:
    """A loaded, verified encoder artifact. Build it with :func:`load_encoder`."""

    def __init__(
        self,
        *,
        session: ort.InferenceSession,
        provider: str,
        tokenizer: Tokenizer,
        manifest: Manifest,
        head: Head,
        golden: F32,
        cache_size: int,
        batch_size: int,
        graph: str = MODEL_FILE,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.manifest = manifest
        self.batch_size = batch_size
        #: most tokens (rows x padded length) per inference call; None: rows only
        self.max_batch_tokens = batch_tokens_for(max_batch_tokens, provider)
        self.info = EncoderInfo(
            version=manifest.version,
            dim=manifest.dim,
            variant=manifest.variant,
            provider=provider,
            sha256=manifest.sha256.get(graph, ""),
            max_length=manifest.max_length,
            graph=graph,
        )
        self._tokenizer = tokenizer
        self._inputs = [i.name for i in session.get_inputs()]
        self._output = session.get_outputs()[0].name
        self._head = head
        self._golden = golden
        self._cache: OrderedDict[str, F32] = OrderedDict()
        self._cache_size = cache_size
        self._hits = 0
        self._misses = 0
        # Faust agents may call from an executor thread; the cache is the only shared state.
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def encode(self, texts: Sequence[str]) -> F32:
        """[len(texts), dim] float32 unit vectors, in input order."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if self._cache_size <= 0:
            out[:] = self._encode_uncached(list(texts))
            return out
        pending: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is not None:
                    self._cache.move_to_end(text)
                    out[i] = hit
                    self._hits += 1
                else:
                    pending.setdefault(text, []).append(i)
                    self._misses += 1
        if pending:
            unique = list(pending)
            vectors = self._encode_uncached(unique)
            with self._lock:
                for text, vector in zip(unique, vectors, strict=True):
                    out[pending[text]] = vector
                    # A copy: a row view would pin the whole batch array while any row is cached.
                    self._cache[text] = vector.copy()
                    self._cache.move_to_end(text)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out

    def prepare(self, texts: Sequence[str], batch_size: int | None = None, *, budget: bool = True) -> list[Batch]:
        """Tokenize once, sort by length, and cut into padded batches (exposed for benches);
        ``budget=False``: by rows alone, whatever the encoder's token budget."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        # Stable, so equal-length texts keep their order and results are reproducible.
        order = np.argsort(lengths, kind="stable")
        size = batch_size or self.batch_size
        return [
            Batch(rows=rows, feeds=self._pad([encodings[int(i)] for i in rows]))
            for rows in cut_batches(order, lengths, size, self.max_batch_tokens if budget else None)
        ]

    def run(self, batch: Batch) -> F32:
        """Pooled, normalized vectors of one prepared batch (rows in the batch's order)."""
        try:
            hidden = self.session.run([self._output], dict(batch.feeds))[0]
        except Exception as exc:  # onnxruntime's pybind errors share no useful base class
            raise ModelError(f"encoder {self.info.version} failed on {self.provider}: {exc}") from exc
        return mean_pool_normalize(np.asarray(hidden), batch.feeds["attention_mask"])

    def sentiment(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Sentiment in [-1, 1] from the head: 1 star -> -1, 3 stars -> 0, 5 stars -> +1."""
        stars = self._head.predict_stars(vectors)
        out: npt.NDArray[np.float32] = np.clip((stars - 3.0) / 2.0, -1.0, 1.0).astype(np.float32)
        return out

    def golden_check(self) -> float:
        """Re-encode the export's golden sentences; the worst cosine, or ModelError below 0.999."""
        fresh = self.encode_golden(list(self.manifest.golden_sentences))
        if fresh.shape != self._golden.shape:
            raise ModelError(f"golden check: shape {fresh.shape} vs saved {self._golden.shape}")
        worst = float(cosine_rows(fresh, self._golden).min())
        if not worst >= GOLDEN_MIN_COS:  # also catches NaN
            raise ModelError(
                f"encoder {self.info.version} on {self.provider} fails its golden check: "
                f"min cosine {worst:.6f} < {GOLDEN_MIN_COS}"
            )
        return worst

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self._cache_size)

    def encode_golden(self, texts: Sequence[str]) -> F32:
        """``texts`` in one inference call, uncached: how the export encodes the golden
        sentences and how every golden check re-encodes them. Not by the encoder's batch
        settings: an int8 graph quantizes its activations per call, so the same sentence cut
        into another batch comes out slightly differently (cosine ~0.97-0.99, below the
        check's 0.999), and a token budget or a small PERSONA_REVIEW_BATCH would refuse a
        sound artifact."""
        return self._encode_uncached(list(texts), one_call=True)

    def _encode_uncached(self, texts: list[str], *, one_call: bool = False) -> F32:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = self.prepare(texts, max(1, len(texts)), budget=False) if one_call else self.prepare(texts)
        for batch in batches:
            out[batch.rows] = self.run(batch)
        return out

    def _pad(self, encodings: list[Encoding]) -> Feeds:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.manifest.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        every: Feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: every[name] for name in self._inputs}


def cut_batches(
    order: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], size: int, max_tokens: int | None
) -> list[npt.NDArray[np.int64]]:
    """``order`` (row indices sorted by ascending length) cut into batches of at most ``size``
    rows and, with ``max_tokens``, at most that many padded tokens (rows x the batch's longest
    length): a token budget keeps a GPU's batches full with short texts and bounded with long
    ones, where a row count alone is one or the other. A single row longer than the budget
    still makes a batch of its own."""
    if max_tokens is None:
        return [order[start : start + size] for start in range(0, len(order), size)]
    out: list[npt.NDArray[np.int64]] = []
    start = 0
    while start < len(order):
        end = start + 1
        # Lengths ascend, so the batch's padded width is its last row's length.
        while end < len(order) and end - start < size and (end - start + 1) * int(lengths[order[end]]) <= max_tokens:
            end += 1
        out.append(order[start:end])
        start = end
    return out


def batch_tokens_for(setting: int | None, provider: str) -> int | None:
    """The token budget an encoder on ``provider`` cuts by: ``setting`` when set (0: rows
    alone), else :data:`CPU_BATCH_TOKENS` on CPU and rows alone on CUDA."""
    if setting is None:
        return CPU_BATCH_TOKENS if provider == CPU else None
    if setting < 0:
        raise ValueError(f"max_batch_tokens must be >= 0 (0: rows only), got {setting}")
    return setting or None


def pick_graph(manifest: Manifest, device: Device, fp16: bool, cuda_usable: bool) -> str:
    """The graph file to run: the artifact's fp16 graph when CUDA is usable, wanted
    (``device`` auto or cuda) and allowed (``fp16``), else the artifact's own graph. fp16 is
    for CUDA only: on CPU it is slower than fp32 and some kernels are missing."""
    if fp16 and manifest.gpu_model and cuda_usable and device in ("auto", "cuda"):
        return manifest.gpu_model
    return MODEL_FILE


def load_encoder(
    version_dir: Path | str,
    *,
    device: Device = "auto",
    threads: int | None = None,
    cache_size: int = 10_000,
    batch_size: int = 64,
    fp16: bool = True,
    max_batch_tokens: int | None = None,
    spin: bool = True,
) -> Encoder:
    """Verify (sha256 of every file against the manifest) and load one version directory
    (``spin``: :func:`session_options`)."""
    root = Path(version_dir)
    manifest = read_manifest(root)
    verify(root, manifest)
    try:
        golden = np.load(root / GOLDEN_FILE, allow_pickle=False).astype(np.float32)
    except Exception as exc:  # numpy raises assorted types for a bad file
        raise ModelError(f"encoder artifact {root}: cannot read {GOLDEN_FILE}: {exc}") from exc
    return open_encoder(
        root, manifest, golden, device=device, threads=threads, cache_size=cache_size, batch_size=batch_size, fp16=fp16,
        max_batch_tokens=max_batch_tokens, spin=spin,
    )


def open_encoder(
    root: Path,
    manifest: Manifest,
    golden: F32,
    *,
    head: Head | None = None,
    device: Device = "auto",
    threads: int | None = None,
    cache_size: int = 10_000,
    batch_size: int = 64,
    fp16: bool = True,
    max_batch_tokens: int | None = None,
    spin: bool = True,
) -> Encoder:
    """An Encoder over already-verified files (the exporter uses it on a draft artifact,
    before head.json exists: hence the optional ``head``)."""
    head = head or read_head(root)
    if len(head.w) != manifest.dim * head.weights_per_dim() or len(head.bias) != (len(head.classes) if head.kind == "softmax" else 0):
        raise ModelError(f"encoder artifact {root}: {head.kind} head has {len(head.w)} weights, dim is {manifest.dim}")
    try:
        tokenizer = Tokenizer.from_file(str(root / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers raises plain Exception for a bad file
        raise ModelError(f"encoder artifact {root}: cannot read {TOKENIZER_FILE}: {exc}") from exc
    # Padding is ours (per sorted batch); truncation must equal what the export measured.
    tokenizer.no_padding()
    tokenizer.enable_truncation(manifest.max_length)
    cuda_usable = _try_cuda(device)
    graph = pick_graph(manifest, device, fp16, cuda_usable)
    session, provider = open_session(root / graph, device, threads, auto_cuda=manifest.variant != "int8", spin=spin)
    if graph != MODEL_FILE and provider != CUDA:
        # CUDA did not start after all: never run the fp16 graph on CPU.
        graph = MODEL_FILE
        session, provider = open_session(root / graph, device, threads, auto_cuda=False, spin=spin)
    if manifest.variant == "fp16" and provider != CUDA:
        log.warning("fp16 encoder %s runs on %s: fp16 graphs are meant for CUDA and are slow here", manifest.version, provider)
    names = {i.name for i in session.get_inputs()}
    if not names <= _KNOWN_INPUTS or "input_ids" not in names or "attention_mask" not in names:
        raise ModelError(f"encoder artifact {root}: unexpected graph inputs {sorted(names)}")
    log.info(
        "encoder %s (%s, dim %d, %s) on %s%s",
        manifest.version,
        manifest.variant,
        manifest.dim,
        graph,
        provider,
        f" with {session_options(threads).intra_op_num_threads} intra-op threads{_spinning(spin)}" if provider == CPU else "",
    )
    return Encoder(
        session=session,
        provider=provider,
        tokenizer=tokenizer,
        manifest=manifest,
        head=head,
        golden=golden,
        cache_size=cache_size,
        batch_size=batch_size,
        graph=graph,
        max_batch_tokens=max_batch_tokens,
    )
