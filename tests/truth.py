"""Independent recomputation of profiles straight from the raw MovieLens files.

Deliberately shares no code with ``state/``: it re-reads the files with plain Python and
re-derives the expected counts, purchased sets and decayed category affinities from the
documented formulas (weight 3 per purchase, split evenly over the movie's genres, decayed
with the half-life to the user's latest rating time).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PURCHASE_WEIGHT = 3.0


@dataclass
class Expected:
    purchases: int = 0
    items: set[str] = field(default_factory=set)
    ratings: list[tuple[float, str]] = field(default_factory=list)
    affinity: dict[str, float] = field(default_factory=dict)
    ref_ts: float = 0.0


def movielens_truth(folder: Path, half_life_days: float) -> dict[str, Expected]:
    genres = [line.split("|")[0] for line in (folder / "u.genre").read_text().splitlines() if line.strip()]
    item_genres: dict[str, list[str]] = {}
    with open(folder / "u.item", encoding="latin-1") as fh:
        for line in fh:
            cols = line.rstrip("\n").split("|")
            flags = cols[5:]
            item_genres[cols[0]] = [g for g, f in zip(genres, flags, strict=True) if f == "1"]
    users: dict[str, Expected] = defaultdict(Expected)
    with open(folder / "u.data") as fh:
        for line in fh:
            user, item, _, ts = line.split("\t")
            e = users[user]
            e.purchases += 1
            e.items.add(item)
            e.ratings.append((float(ts), item))
    hl = half_life_days * 86_400.0
    for e in users.values():
        e.ref_ts = max(t for t, _ in e.ratings)
        acc: dict[str, list[float]] = defaultdict(list)
        for t, item in e.ratings:
            gs = item_genres[item]
            for g in gs:
                acc[g].append(PURCHASE_WEIGHT / len(gs) * math.exp(-math.log(2) * (e.ref_ts - t) / hl))
        e.affinity = {g: math.fsum(v) for g, v in acc.items()}
    return dict(users)


def user_ids(folder: Path) -> list[str]:
    return [line.split("|")[0] for line in (folder / "u.user").read_text().splitlines() if line.strip()]


def decayed_mean(parts: list[tuple[float, Any]], half_life_s: float, weights: list[float] | None = None) -> Any:
    """The interest a profile should hold: the mean of ``(event time, vector)`` pairs, each
    weighted (default 1) and halved per half-life of age at the newest event."""
    import numpy as np

    ref = max(ts for ts, _ in parts)
    w = np.array([math.exp(-math.log(2) * (ref - ts) / half_life_s) for ts, _ in parts])
    if weights is not None:
        w = w * np.asarray(weights, dtype=np.float64)
    vecs = np.stack([np.asarray(v, dtype=np.float64) for _, v in parts])
    return (vecs * w[:, None]).sum(axis=0) / w.sum()
