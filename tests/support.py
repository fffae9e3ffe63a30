"""Test support: most lives in :mod:`deploy.workers` (the benchmarks use it too)."""

import hashlib
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from deploy.workers import (
    REPO,
    TEST_MODEL_REGISTRY,
    WorkerProcess,
    free_port,
    group_lag,
    metric_sum,
    scrape,
    settings_env,
    wait_drained,
)

#: Faust's own bookkeeping key in every table partition's RocksDB (the changelog offset).
FAUST_KEYS = (b"__faust\x00offset__",)


def rocksdb_contents(state_dir: Path) -> dict[bytes, bytes]:
    """Every profile in a stopped worker's RocksDB files (all partitions), read from disk."""
    # Imported here: the trainer environment (tests/train) has no rocksdict, and loads this
    # module through conftest.py (regression: its whole suite failed to start).
    from rocksdict import AccessType, Rdict

    out: dict[bytes, bytes] = {}
    paths = sorted(state_dir.glob("**/profiles-*.db"))
    assert paths, f"no RocksDB table under {state_dir}"
    for path in paths:
        db = Rdict(str(path), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if isinstance(key, bytes) and isinstance(value, bytes) and key not in FAUST_KEYS:
                    out[key] = value
        finally:
            db.close()
    return out


__all__ = [
    "REPO", "TEST_MODEL_REGISTRY", "WorkerProcess", "free_port", "group_lag", "metric_sum", "rocksdb_contents", "scrape",
    "settings_env", "wait_drained",
]


class CountingEncoder:
    """Deterministic text -> unit vector (a hash), counting what it was asked to encode."""

    def __init__(self, version: str) -> None:
        # sha256: what encoders.text_cache keys its cache by
        self.info = SimpleNamespace(version=version, sha256="0" * 64)
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:8].astype(np.float32) + 1 for t in texts]
        out = np.stack(rows)
        unit: np.ndarray = out / np.linalg.norm(out, axis=1, keepdims=True)
        return unit

    def sentiment(self, vectors: np.ndarray) -> np.ndarray:
        return np.zeros(len(vectors), dtype=np.float32)
