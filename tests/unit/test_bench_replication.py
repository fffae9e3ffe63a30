"""`persona bench replication`: the scale-out model, and a measurement that replicates every delta."""

from __future__ import annotations

import math
import zlib

import pytest

from bench.replication import WORKERS, measure, speedup
from bench.stream import synthetic_purchases
from state.events import Item, Purchase
from stream_app.settings import Settings


def test_one_worker_is_the_unit_and_free_replication_scales_linearly() -> None:
    assert speedup(1, 500.0, 120.0) == 1.0
    assert speedup(16, 500.0, 0.0) == 16.0


def test_speedup_counts_every_other_workers_events_at_the_replicated_cost() -> None:
    # 4 workers at 100 µs per own event, 50 µs per replicated one: each spends
    # (R/4) * 100 + (3R/4) * 50 µs per second of a group rate R, so R = 4e6 / 250 events/s,
    # against 1e6 / 100 for one worker: 1.6x.
    assert speedup(4, 100.0, 50.0) == pytest.approx(1.6)


def test_speedup_never_passes_the_ceiling_of_one_over_the_replicated_cost() -> None:
    c, s = 500.0, 120.0
    ceiling = c / s  # 1/S events/s against one worker's 1/C
    assert all(speedup(n, c, s) < ceiling for n in (2, 16, 1_000, 10**6))
    assert speedup(10**9, c, s) == pytest.approx(ceiling, rel=1e-6)


@pytest.mark.parametrize(("workers", "c", "s"), [(0, 1.0, 1.0), (2, 0.0, 1.0), (2, 1.0, -1.0)])
def test_speedup_refuses_what_is_not_a_cost(workers: int, c: float, s: float) -> None:
    with pytest.raises(ValueError):
        speedup(workers, c, s)


def test_measure_folds_every_delta_into_the_second_worker_and_projects_with_its_own_figures() -> None:
    catalog, behaviour = synthetic_purchases(600, users=40, items=60, seed=3)
    events = catalog + behaviour
    purchases = sum(isinstance(e, Purchase) for e in events)
    report = measure(events, Settings(), worker_us=None)

    # Every event but the catalog's items goes through the pipeline (users' attributes too).
    assert report["events"] == sum(not isinstance(e, Item) for e in events)
    # Every purchase is an engagement: one delta each, and worker B applies all of them (a
    # delta skipped as already seen would make replication look free).
    assert report["deltas"] == purchases
    assert report["replicated_applied"] == purchases
    assert report["own_us"] > 0 and report["replicated_us"] > 0
    assert set(report["parts_us"]) == {"popularity", "segments", "co-occurrence", "social"}
    assert report["ceiling_eps"] == pytest.approx(1e6 / report["replicated_us"])
    assert report["worker_us"] == report["own_us"] and report["worker_us_from"] == "own_us"
    assert [p["workers"] for p in report["projection"]] == list(WORKERS)
    for p in report["projection"]:
        assert p["speedup"] == pytest.approx(speedup(p["workers"], report["own_us"], report["replicated_us"]))


def test_measure_projects_with_a_given_worker_cost() -> None:
    catalog, behaviour = synthetic_purchases(200, users=20, items=30, seed=5)
    report = measure(catalog + behaviour, Settings(), worker_us=750.0)
    assert report["worker_us"] == 750.0 and report["worker_us_from"] == "given"
    last = report["projection"][-1]
    assert last["speedup"] == pytest.approx(speedup(last["workers"], 750.0, report["replicated_us"]))
    assert not math.isinf(report["ceiling_eps"])


def test_measure_refuses_a_replay_without_behaviour() -> None:
    catalog, _ = synthetic_purchases(10, users=5, items=5)
    with pytest.raises(ValueError, match="no behaviour"):
        measure(catalog, Settings())


def test_bench_all_projects_with_the_stream_parts_worker_cost_when_it_ran() -> None:
    from bench.all import stream_worker_us

    assert stream_worker_us({"stream": {"ok": True, "result": {"persona_worker_cpu_us_per_event": 497.7}}}) == 497.7
    assert stream_worker_us({"stream": {"ok": False, "not_measured": "no broker"}}) is None
    assert stream_worker_us({}) is None


def test_bench_all_markdown_gives_the_replication_rows() -> None:
    from bench.all import markdown

    result = {
        "own_us": 204.1, "replicated_us": 120.2, "replicated_vs_own": 120.2 / 204.1, "ceiling_eps": 1e6 / 120.2,
        "worker_us": 497.7, "worker_us_from": "given",
        "projection": [{"workers": w, "speedup": speedup(w, 497.7, 120.2)} for w in (1, 2, 16)],
        "agreement": {"rows_differing": 80, "rows": 1682, "lists_identical": 927, "lists_same_items": 941, "users": 943},
    }
    report = {
        "started": "2026-12-03T00:00:00Z", "quick": False, "settings": {},
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11", "load_1m_start": 0.1, "load_1m_end": 0.2},
        "parts": {"replication": {"ok": True, "result": result}},
    }
    md = markdown(report)
    assert "| replication | own event / another worker's delta, in process (µs) | 204.1 / 120.2 |" in md
    assert "| replication | group ceiling, any number of workers (events/s) | 8,319 |" in md
    # 16 * 497.7 / (497.7 + 15 * 120.2) = 3.46
    assert "(C 498 µs, given) | 1: 1.00, 2: 1.61, 16: 3.46 |" in md
    assert "lists identical / same items / users | 80 of 1,682; 927 / 941 / 943 |" in md


def test_interleaved_keeps_every_delta_and_each_users_order() -> None:
    from bench.replication import interleaved
    from scoring.shared import ENGAGE, Delta

    deltas = [Delta(source="t:0", offset=i, kind=ENGAGE, user=f"u{i % 7}", ts=float(i), item=f"m{i % 5}") for i in range(2_000)]
    got = interleaved(deltas, partitions=3, record=16)
    assert sorted(d.ts for d in got) == [d.ts for d in deltas]
    assert [d.ts for d in got] != [d.ts for d in deltas]  # another order indeed
    for user in {d.user for d in deltas}:
        assert [d.ts for d in got if d.user == user] == [d.ts for d in deltas if d.user == user]
    by_source: dict[str, list[int]] = {}
    for d in got:
        by_source.setdefault(d.source, []).append(d.offset)
    # Each source's offsets run 0, 1, 2, ... in the order read: a replica skips none as seen.
    assert all(offsets == list(range(len(offsets))) for offsets in by_source.values())
    assert {d.source for d in got if d.user == "u3"} == {f"t:0/{zlib.crc32(b'u3') % 3}"}


def test_agreement_is_whole_without_the_cut_and_finds_the_rows_the_cut_changes() -> None:
    catalog, behaviour = synthetic_purchases(1_500, users=40, items=60, seed=3)
    unbounded = measure(catalog + behaviour, Settings(cooc_neighbours=0))["agreement"]
    assert unbounded["same_order_identical"] and unbounded["cut_rows"] == 0
    assert unbounded["rows"] == 60 and unbounded["rows_differing"] == 0
    assert unbounded["users"] == 40 and unbounded["lists_identical"] == 40 and unbounded["mean_overlap"] == 1.0
    # Rows of at most 4 neighbours, cut to 2: which survive depends on the order.
    cut = measure(catalog + behaviour, Settings(cooc_neighbours=2))["agreement"]
    assert cut["same_order_identical"] and cut["cut_rows"] > 0
    assert 0 < cut["rows_differing"] <= cut["rows"]
    assert cut["lists_same_items"] <= cut["users"] and cut["lists_identical"] <= cut["lists_same_items"]
