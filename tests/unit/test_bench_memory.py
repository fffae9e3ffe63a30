"""The RSS curve of `persona bench memory`: the tail slope that says whether memory is bounded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.memory import partial_writer, per_100k, tail_slope


def test_a_flat_tail_costs_nothing_per_100k_users_whatever_the_start() -> None:
    # Memory that grows while the bounded parts fill and then stays put.
    curve = [(100_000, 300_000_000), (200_000, 410_000_000), (300_000, 410_000_000), (400_000, 410_000_000)]
    assert tail_slope(curve) == 0


def test_a_linear_tail_gives_its_bytes_per_100k_users() -> None:
    # 1,500 bytes per user from the half-way sample (500k) to the end (1M): 150 MB per 100k.
    curve = [(n, 200_000_000 + 1_500 * n) for n in range(100_000, 1_000_001, 100_000)]
    assert tail_slope(curve) == 150_000_000


def test_the_tail_starts_at_the_first_sample_past_half_way() -> None:
    # Half of 900k is 450k: the tail runs from the 500k sample, not the 400k one.
    curve = [(400_000, 0), (500_000, 100), (900_000, 500)]
    assert tail_slope(curve) == pytest.approx((500 - 100) * 100_000 / 400_000, abs=1)


def test_two_samples_give_their_slope_and_fewer_give_none() -> None:
    assert tail_slope([(10, 0), (20, 1_000)]) == 10_000_000
    assert tail_slope([(20, 1_000)]) is None
    assert tail_slope([]) is None


def test_bench_all_markdown_gives_the_tail_cost_beside_the_whole_runs() -> None:
    from bench.all import markdown

    report = {
        "started": "2026-12-03T00:00:00Z", "quick": False, "settings": {},
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11", "load_1m_start": 0.1, "load_1m_end": 0.2},
        "parts": {"memory": {"ok": True, "result": {
            "after": {"rss_bytes_per_100k_profiles": 141_000_000, "rss_bytes_per_100k_tail": 9_600_000,
                      "parts_bytes_per_100k_profiles": {"rocksdb_block_cache": 12_015_562, "accounted": 21_592_453}},
            "before": {"rss_bytes_per_100k_profiles": 270_000_000, "rss_bytes_per_100k_tail": None}}}},
    }
    md = markdown(report)
    assert "| memory | after RSS per 100k profiles (MB) | 141.0 |" in md
    assert "| memory | after RSS per 100k further profiles, second half of the run (MB) | 9.6 |" in md
    assert "before RSS per 100k further" not in md  # no curve, no row
    assert "| memory | after per 100k profiles, by the worker's own gauges (MB) | rocksdb_block_cache 12.0, accounted 21.6 |" in md
    assert "before per 100k profiles, by" not in md  # no gauges read, no row


def test_per_100k_scales_each_parts_growth_and_sums_them() -> None:
    small = {"profile_cache": 1_000_000.0, "rocksdb_memtables": 2_000_000.0}
    large = {"profile_cache": 16_000_000.0, "rocksdb_memtables": 2_000_000.0, "rocksdb_table_readers": 500_000.0}
    # 99,000 more users than the small run: each part's growth times 100k / 99k.
    got = per_100k(small, large, 100_000 / 99_000)
    assert got["profile_cache"] == int(15_000_000 * 100_000 / 99_000)
    assert got["rocksdb_memtables"] == 0
    assert got["rocksdb_table_readers"] == int(500_000 * 100_000 / 99_000)  # absent from the small run: from 0
    assert got["accounted"] == got["profile_cache"] + got["rocksdb_table_readers"]


def test_a_stopped_large_run_leaves_its_fixed_cost_and_curve_so_far(tmp_path: Path) -> None:
    path = tmp_path / "memory.json.partial"
    report = {"profiles": 1_000_000, "small": 1_000}
    sample = partial_writer(path, report, "after", rss_fixed=400_000_000)
    assert sample is not None
    sample(50_000, 450_000_000)
    sample(100_000, 470_000_000)
    doc = json.loads(path.read_text())
    assert doc["partial"] is True and doc["profiles"] == 1_000_000
    assert doc["after"] == {"rss_bytes_fixed": 400_000_000, "rss_curve": [[50_000, 450_000_000], [100_000, 470_000_000]]}
    # What it measured is enough for the figures the finished run gives.
    assert tail_slope([tuple(p) for p in doc["after"]["rss_curve"]]) == 40_000_000
    assert not (tmp_path / "memory.json.partial.tmp").exists()
    assert "partial" not in report  # the report the run finishes with is not marked
    assert partial_writer(None, report, "after", 0) is None
