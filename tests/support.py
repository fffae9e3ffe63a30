"""Test support lives in :mod:`stream_app.harness` (the benchmarks use it too)."""

from stream_app.harness import (
    REPO,
    WorkerProcess,
    free_port,
    group_lag,
    metric_sum,
    scrape,
    settings_env,
    wait_drained,
)

__all__ = ["REPO", "WorkerProcess", "free_port", "group_lag", "metric_sum", "scrape", "settings_env", "wait_drained"]
