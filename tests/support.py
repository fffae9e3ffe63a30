"""Test support lives in :mod:`deploy.workers` (the benchmarks use it too)."""

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

__all__ = ["REPO", "TEST_MODEL_REGISTRY", "WorkerProcess", "free_port", "group_lag", "metric_sum", "scrape", "settings_env", "wait_drained"]
