"""Trained rankers on disk and in the worker: one small ONNX graph over the ranker's features.

The trainer (``export/ranker.py``) writes a version directory into the *ranker registry*
(``models/ranker`` by default, ``PERSONA_RANKER_REGISTRY``), with the same layout and the same
publishing rules as the encoder registry (:mod:`encoders.registry`: an immutable directory per
version, ``CURRENT`` replaced atomically):

    ranker-20261201203000-1a2b3c4d/
      model.onnx      input ``features`` float32 (n, 7) -> output ``score`` float32 (n,)
      weights.npz     the same network's parameters (an independent forward pass: tests, audits)
      golden.npz      features and the scores the trainer's torch model gave them
      manifest.json   :class:`RankerManifest`: sha256 of every file, the features' names, the
                      training window and the data's offsets, the metrics and the quality gate

A worker loads a version only when every hash matches, its features are the ones it ranks
with (:data:`scoring.ranker.FEATURES`, in order, passed in by the caller) and the graph re-scores the golden features within
:data:`GOLDEN_TOLERANCE`; otherwise :class:`state.errors.ModelError` and it keeps what it had.
Inference runs on CPU with one thread: a ranking scores a few hundred rows, far below what a
GPU launch or a thread pool pays for itself at, and one thread keeps scores bit-identical
between the worker and the in-process evaluator.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from encoders.artifact import sha256_file
from encoders.registry import Registry
from state.errors import ModelError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.npz"
GOLDEN_FILE = "golden.npz"
MANIFEST_FILE = "manifest.json"
HASHED_FILES: tuple[str, ...] = (MODEL_FILE, WEIGHTS_FILE, GOLDEN_FILE)
#: Largest |score difference| between the graph and the trainer's golden scores.
GOLDEN_TOLERANCE = 1e-4


class RankerManifest(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = "ranker"
    version: str
    created_at: str
    features: list[str]
    hidden: int
    sha256: dict[str, str]
    #: where the examples came from: dataset or topics, event-time range, positions / offsets
    training: dict[str, Any]
    #: training loss, examples, epochs; the gate's figures for production and candidate
    metrics: dict[str, Any]
    seed: int
    torch: str = ""
    onnxruntime: str = ""


def read_ranker_manifest(folder: Path) -> RankerManifest:
    try:
        return msgspec.json.decode((folder / MANIFEST_FILE).read_bytes(), type=RankerManifest)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(f"ranker {folder}: unreadable {MANIFEST_FILE}: {exc}") from exc


class OnnxRanker:
    """A :class:`scoring.ranker.Scorer` over an exported graph."""

    def __init__(self, folder: Path, manifest: RankerManifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.version = manifest.version
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])

    def __call__(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scores for a (features, n) array (the ranker's layout), one per column."""
        rows = np.ascontiguousarray(np.asarray(features, dtype=np.float32).T)
        (score,) = self._session.run(["score"], {"features": rows})
        return np.asarray(score, dtype=np.float64).reshape(-1)

    def golden_error(self) -> float:
        """Largest |graph score - trainer score| over the golden features."""
        with np.load(self.folder / GOLDEN_FILE) as golden:
            x, want = golden["features"], golden["scores"]
        return float(np.max(np.abs(self(x.T) - want))) if len(want) else 0.0


def load_ranker(folder: Path | str, features: Sequence[str]) -> OnnxRanker:
    """A verified ranker version (see the module docstring), or :class:`ModelError`."""
    folder = Path(folder)
    manifest = read_ranker_manifest(folder)
    if manifest.kind != "ranker":
        raise ModelError(f"ranker {folder}: manifest kind {manifest.kind!r}, not 'ranker'")
    if list(manifest.features) != list(features):
        raise ModelError(f"ranker {folder}: trained on features {manifest.features}, this worker ranks with {list(features)}")
    for name in HASHED_FILES:
        path = folder / name
        if not path.is_file():
            raise ModelError(f"ranker {folder}: missing {name}")
        if sha256_file(path) != manifest.sha256.get(name):
            raise ModelError(f"ranker {folder}: {name} does not match its sha256 in the manifest")
    try:
        ranker = OnnxRanker(folder, manifest)
        error = ranker.golden_error()
    except Exception as exc:  # onnxruntime raises its own types for a corrupt graph
        raise ModelError(f"ranker {folder}: cannot run the graph: {exc}") from exc
    if not error <= GOLDEN_TOLERANCE:
        raise ModelError(f"ranker {folder}: golden scores differ by {error:.3g} (> {GOLDEN_TOLERANCE})")
    return ranker


class RankerHolder:
    """The worker's current trained ranker: follows the registry's ``CURRENT``.

    :meth:`refresh` loads a newly published version and swaps it in; a version that fails to
    load is logged, counted in :attr:`failures` and not retried until ``CURRENT`` changes
    again, and the previous ranker keeps serving (or the hand-set weights, when none)."""

    def __init__(self, root: Path | str, features: Sequence[str]) -> None:
        self.registry = Registry(root)
        self.features = tuple(features)
        self.ranker: OnnxRanker | None = None
        self.failures = 0
        self._tried: str | None = None
        #: (ranker, "shadow" | "share", share) on trial beside the current one
        self.candidate: tuple[OnnxRanker, str, float] | None = None
        self._candidate_tried: str | None = None

    @property
    def version(self) -> str | None:
        return None if self.ranker is None else self.ranker.version

    def refresh_candidate(self) -> bool:
        """Follow the registry's CANDIDATE (a version in shadow or on a share); True when the
        candidate changed (:attr:`candidate` is then ``(ranker, mode, share)`` or None)."""
        try:
            wanted = self.registry.candidate()
        except ModelError as exc:
            wanted = None
            if self._candidate_tried != "unreadable":
                self.failures += 1
                log.error("%s", exc)
            self._candidate_tried = "unreadable"
        key = None if wanted is None else " ".join(map(str, wanted))
        if key == self._candidate_tried or (wanted is None and self.candidate is None):
            return False
        self._candidate_tried = key
        if wanted is None:
            self.candidate = None
            return True
        name, mode, share = wanted
        try:
            same = self.ranker is not None and self.ranker.version == name
            ranker = self.ranker if same and self.ranker is not None else load_ranker(self.registry.root / name, self.features)
        except ModelError as exc:
            self.failures += 1
            log.error("candidate ranker %s not loaded: %s", name, exc)
            return False
        self.candidate = (ranker, mode, share)
        return True

    def refresh(self) -> bool:
        """Load ``CURRENT`` if it names a version not tried yet; True when the ranker changed."""
        name = self.registry.current_name()
        if name is None or name == self._tried:
            return False
        self._tried = name
        try:
            ranker = load_ranker(self.registry.root / name, self.features)
        except ModelError as exc:
            self.failures += 1
            log.error("ranker %s not loaded, still serving %s: %s", name, self.version or "the hand-set weights", exc)
            return False
        self.ranker = ranker
        log.info("ranker %s loaded", name)
        return True
