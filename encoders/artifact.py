"""The on-disk contract between the exporter (``export/``) and the runtime (``encoders/``).

A version directory holds ``model.onnx``, ``tokenizer.json``, ``head.json``, ``golden.npy``
and ``manifest.json``. The manifest records the sha256 of every other file, so a worker can
refuse a half-copied or tampered artifact before it ever scores a user. Both sides import
the names and the manifest schema from here, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from state.errors import ModelError

MODEL_FILE = "model.onnx"
#: fp32 artifacts also carry an fp16 conversion of the same graph, run on CUDA when allowed.
GPU_MODEL_FILE = "model.fp16.onnx"
TOKENIZER_FILE = "tokenizer.json"
HEAD_FILE = "head.json"
GOLDEN_FILE = "golden.npy"
MANIFEST_FILE = "manifest.json"
#: Files whose sha256 the manifest must carry and the loader must verify.
HASHED_FILES: tuple[str, ...] = (MODEL_FILE, TOKENIZER_FILE, HEAD_FILE, GOLDEN_FILE)

Variant = Literal["fp32", "fp16", "int8"]
VARIANTS: tuple[Variant, ...] = ("fp32", "fp16", "int8")

#: Fixed sentences whose embeddings are saved at export time. After a load (or on a new
#: machine, provider or onnxruntime release) they are re-encoded and compared: a silent
#: numeric change (wrong provider, broken kernel, mismatched tokenizer) fails loudly here.
GOLDEN_SENTENCES: tuple[str, ...] = (
    "These strings sound bright and stay in tune for weeks.",
    "The pedal broke after two days; I want my money back.",
    "Decent cable for the price, nothing special.",
    "Shipping was fast and the packaging was fine.",
    "My daughter loves this ukulele!",
    "The tuner clips on easily but the display is hard to read in sunlight.",
    "Terrible hum from the amp, returned it.",
    "Great value. Works exactly as described and the sound is warm and clear.",
)


class Parity(msgspec.Struct, frozen=True):
    """Cosine between the torch reference and the exported graph on real texts."""

    n: int
    min_cos: float | None
    mean_cos: float | None
    checked: bool
    note: str = ""


class Manifest(msgspec.Struct, frozen=True):
    version: str
    variant: Variant
    sha256: dict[str, str]
    opset: int
    dim: int
    max_length: int
    pooling: Literal["mean"]
    normalize: bool
    source: str
    parity: Parity
    created_at: str
    inputs: list[str]
    pad_id: int
    golden_sentences: list[str]
    #: Which graph produced golden.npy (an fp16 graph may not run on the exporting CPU).
    golden_from: str = ""
    export_seconds: float = 0.0
    #: An fp16 graph of the same weights for the CUDA provider ("" = none; hashed like the rest).
    gpu_model: str = ""
    #: Parity of ``gpu_model`` against torch (measured on CPU, on a subset of the texts).
    gpu_parity: Parity | None = None
    #: What a fine-tuned version learned from (``persona train --encoder``): the window, the
    #: pairs, the data's positions or offsets, the settings. Empty for an export of a base model.
    training: dict[str, Any] = {}
    #: The quality gate's figures against production, and whether it passed.
    gate: dict[str, Any] = {}


class Head(msgspec.Struct, frozen=True):
    """Sentiment head over normalized embeddings, predicting star ratings.

    ``linear``: stars = w.e + b. ``softmax``: multinomial logistic regression over the star
    classes ``classes``; ``w`` is the [dim, len(classes)] weight matrix, row-major, ``bias``
    the class biases, and the prediction is the expected star rating.
    """

    w: list[float]
    b: float
    mean_rating: float
    train_n: int
    l2: float = 0.0
    kind: Literal["linear", "softmax"] = "linear"
    classes: list[float] = []
    bias: list[float] = []

    def predict_stars(self, vectors: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Predicted stars for [n, dim] vectors."""
        x = np.asarray(vectors, dtype=np.float64)
        if self.kind == "linear":
            linear: npt.NDArray[np.float64] = x @ np.asarray(self.w, dtype=np.float64) + self.b
            return linear
        k = len(self.classes)
        z = x @ np.asarray(self.w, dtype=np.float64).reshape(-1, k) + np.asarray(self.bias, dtype=np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        expected: npt.NDArray[np.float64] = p @ np.asarray(self.classes, dtype=np.float64)
        return expected

    def weights_per_dim(self) -> int:
        return len(self.classes) if self.kind == "softmax" else 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"encoder artifact {version_dir}: {MANIFEST_FILE} is missing")
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.DecodeError as exc:
        raise ModelError(f"encoder artifact {version_dir}: bad {MANIFEST_FILE}: {exc}") from exc


def verify(version_dir: Path, manifest: Manifest) -> None:
    """Every hashed file exists and matches the manifest; raise ModelError otherwise."""
    for name in (*HASHED_FILES, *([manifest.gpu_model] if manifest.gpu_model else [])):
        expected = manifest.sha256.get(name)
        if expected is None:
            raise ModelError(f"encoder artifact {version_dir}: manifest has no sha256 for {name}")
        path = version_dir / name
        if not path.is_file():
            raise ModelError(f"encoder artifact {version_dir}: {name} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"encoder artifact {version_dir}: {name} sha256 {actual[:12]}… does not match "
                f"the manifest's {expected[:12]}… (corrupt, partial or tampered copy)"
            )


def read_head(version_dir: Path) -> Head:
    try:
        return msgspec.json.decode((version_dir / HEAD_FILE).read_bytes(), type=Head)
    except (OSError, msgspec.DecodeError) as exc:
        raise ModelError(f"encoder artifact {version_dir}: bad {HEAD_FILE}: {exc}") from exc
