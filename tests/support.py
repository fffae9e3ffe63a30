"""Test support: most lives in :mod:`deploy.workers` (the benchmarks use it too)."""

from pathlib import Path

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
