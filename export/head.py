"""The sentiment head: ridge regression from normalized embeddings to star ratings.

Closed form on centred data (the intercept is not penalised). The penalty is picked by
Spearman correlation (what consumers rely on: ranking users' reviews by sentiment) on a
fixed tenth of the training pairs, then the head is refitted on all of them, so the export
stays deterministic and never touches the holdout. Least squares fits the 5-star majority
(~68% of Musical Instruments reviews); MSE-chosen penalties come out larger and rank worse.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from encoders.artifact import Head

L2_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def ranks(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """1-based ranks, ties sharing their average rank (as Spearman's rho needs)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    out = np.empty(len(v), dtype=np.float64)
    for start, end in zip(starts, ends):
        out[order[start:end]] = (start + end + 1) / 2.0
    return out


def spearman(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def _solve(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float) -> tuple[npt.NDArray[np.float64], float]:
    x_mean = x.mean(axis=0)
    y_mean = float(y.mean())
    xc = x - x_mean
    gram = xc.T @ xc + l2 * np.eye(x.shape[1])
    w: npt.NDArray[np.float64] = np.linalg.solve(gram, xc.T @ (y - y_mean))
    return w, y_mean - float(x_mean @ w)


def fit(vectors: npt.NDArray[np.floating], ratings: npt.NDArray[np.floating]) -> Head:
    x = np.asarray(vectors, dtype=np.float64)
    y = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) < 20:
        raise ValueError(f"ridge head needs >= 20 (vector, rating) pairs, got {x.shape} / {y.shape}")
    val = np.arange(len(y)) % 10 == 0
    best_l2, best_rho = L2_GRID[0], -np.inf
    for l2 in L2_GRID:
        w, b = _solve(x[~val], y[~val], l2)
        rho = spearman(x[val] @ w + b, y[val])
        if rho > best_rho:
            best_l2, best_rho = l2, rho
    w, b = _solve(x, y, best_l2)
    return Head(w=[float(v) for v in w], b=float(b), mean_rating=float(y.mean()), train_n=len(y), l2=best_l2)
