"""Sentence pooling, outside the ONNX graph.

Kept out of the graph so that one graph serves any pooling and so that the exporter's
parity check runs this very function on the graph's output: export and runtime pool
identically by construction. The formula is sentence-transformers' (mean over real tokens,
clamped denominators), so vectors match the published all-MiniLM-L6-v2 embeddings.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def mean_pool_normalize(hidden: npt.NDArray[np.floating], mask: npt.NDArray[np.integer]) -> F32:
    """[batch, seq, dim] hidden states and a [batch, seq] 0/1 mask -> [batch, dim] unit vectors."""
    # Accumulate in float32 even for fp16 graphs: summing 256 halves loses precision.
    h = hidden.astype(np.float32, copy=False)
    m = mask.astype(np.float32)[:, :, None]
    summed = (h * m).sum(axis=1)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    pooled = summed / counts
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    out: F32 = (pooled / norms).astype(np.float32, copy=False)
    return out


def cosine_rows(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Row-wise cosine of two [n, dim] arrays, in float64 so 0.9999 thresholds are meaningful."""
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-300)
    out: npt.NDArray[np.float64] = num / den
    return out
