"""The sentiment head: multinomial logistic regression from embeddings to star classes.

The worker scores a review by its expected stars under the softmax, mapped to [-1, 1]. We
tried, on the Musical Instruments holdout (2,052 reviews, never used for fitting; Spearman
with stars): ridge regression 0.452 (our first head), class-balanced ridge 0.417, ordinal
logit 0.475, MLPs 0.465-0.468, ensembles 0.478, extra Amazon 2018 training data 0.472, and
this head 0.476; about 0.48 looks like the ceiling of any head on these frozen vectors.

Inputs are standardised per dimension with the spread floored at 1e-3: all-MiniLM-L6-v2 has
output dimensions that are nearly constant (~1e-33 .. 1e-8), and standardising them without a
floor turns float noise, which differs between fp32, int8 and CUDA, into large features. The
standardisation is folded into the stored weights. The L2 penalty (50 on standardised inputs,
intercepts unpenalised) was chosen by 4-fold cross-validation inside the training lines.
Newton's method in float64 from zero: deterministic, no seeds.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from encoders.artifact import Head

L2 = 50.0
SD_FLOOR = 1e-3
CLASSES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)


def ranks(values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """1-based ranks, ties sharing their average rank (as Spearman's rho needs)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    out = np.empty(len(v), dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        out[order[start:end]] = (start + end + 1) / 2.0
    return out


def spearman(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def _softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    out: npt.NDArray[np.float64] = p / p.sum(axis=1, keepdims=True)
    return out


def _newton(
    z: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], l2: float, k: int, max_iter: int = 100
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """argmin sum_i -log softmax(z_i W + b)[y_i] + l2/2 |W|^2, by Newton with backtracking."""
    n, d = z.shape
    za = np.hstack([z, np.ones((n, 1))])  # the last row of theta is the intercept
    da = d + 1
    y = np.zeros((n, k))
    y[np.arange(n), labels] = 1.0
    pen = np.full(da, l2)
    pen[-1] = 1e-6  # intercepts: only enough to pin the softmax's free shift
    theta = np.zeros((da, k))

    def objective(t: npt.NDArray[np.float64]) -> float:
        s = za @ t
        m = s.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
        return float((lse - (s * y).sum(axis=1)).sum() + 0.5 * (pen[:, None] * t * t).sum())

    f = objective(theta)
    for _ in range(max_iter):
        p = _softmax(za @ theta)
        grad = za.T @ (p - y) + pen[:, None] * theta
        hess = np.empty((da, k, da, k))
        for a in range(k):
            for c in range(a, k):
                block = (za * (p[:, a] * ((a == c) - p[:, c]))[:, None]).T @ za
                hess[:, a, :, c] = block
                hess[:, c, :, a] = block.T
            hess[np.arange(da), a, np.arange(da), a] += pen
        step = np.linalg.solve(hess.reshape(da * k, da * k), grad.reshape(-1)).reshape(da, k)
        t = 1.0
        while True:
            candidate = theta - t * step
            f_new = objective(candidate)
            if f_new <= f - 1e-4 * t * float((grad * step).sum()) or t < 1e-8:
                break
            t *= 0.5
        theta, f_old, f = candidate, f, f_new
        if np.abs(grad).max() < 1e-8 * max(1.0, n) or abs(f_old - f) <= 1e-12 * max(1.0, abs(f)):
            break
    return theta[:-1], theta[-1]


def fit(vectors: npt.NDArray[np.floating], ratings: npt.NDArray[np.floating], l2: float = L2) -> Head:
    x = np.asarray(vectors, dtype=np.float64)
    y = np.asarray(ratings, dtype=np.float64)
    labels = np.rint(y).astype(np.int64) - 1
    if x.ndim != 2 or len(x) != len(y) or len(y) < 20 or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ValueError(f"sentiment head needs >= 20 (vector, 1..5 stars) pairs, got {x.shape} / {y.shape}")
    mu = x.mean(axis=0)
    sd = np.maximum(x.std(axis=0), SD_FLOOR)
    wz, bz = _newton((x - mu) / sd, labels, l2, len(CLASSES))
    w = wz / sd[:, None]
    b = bz - mu @ w
    return Head(
        w=[float(v) for v in w.reshape(-1)],
        b=0.0,
        mean_rating=float(y.mean()),
        train_n=len(y),
        l2=l2,
        kind="softmax",
        classes=list(CLASSES),
        bias=[float(v) for v in b],
    )
