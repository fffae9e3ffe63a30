"""``persona bench new-users``: the lists it times are deterministic, and ``--against`` runs an
older revision's code on the same events."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import new_users
from state.paths import data_dir

ROOT = Path(__file__).resolve().parents[2]


def test_measure_times_the_asked_rankings_and_its_lists_do_not_depend_on_the_run() -> None:
    first = new_users.measure(users=300, rankings=40, items=100, repeats=1)
    second = new_users.measure(users=300, rankings=40, items=100, repeats=2)
    assert first["rankings"] == second["rankings"] == 40
    assert first["lists_sha256"] == second["lists_sha256"]
    assert 0.0 < first["p50_ms"] <= first["p99_ms"]
    # Another catalog gives other lists: the checksum covers what was ranked.
    assert new_users.measure(users=300, rankings=40, items=120, repeats=1)["lists_sha256"] != first["lists_sha256"]


def test_against_a_revision_runs_both_and_compares_the_lists() -> None:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    report = new_users.run(head, users=200, rankings=20, items=100)
    assert report["this tree"]["rankings"] == report[head]["rankings"] == 20
    assert report["mean_vs_against"] > 0.0
    for name in ("this tree", head):
        assert report[name]["events"] == 200 and report[name]["update_us_per_event"] > 0.0
    assert report["update_vs_against"] == report["this tree"]["update_us_per_event"] / report[head]["update_us_per_event"]
    assert report["same_lists"] == (report["this tree"]["lists_sha256"] == report[head]["lists_sha256"])


@pytest.mark.skipif(not (data_dir() / "movielens-100k").is_dir(), reason="needs ../shared/data")
def test_movielens_mode_ranks_after_the_replays_last_events_deterministically() -> None:
    first = new_users.measure(data="movielens", limit=8_000, rankings=30, repeats=1)
    second = new_users.measure(data="movielens", limit=8_000, rankings=30, repeats=2)
    assert first["rankings"] == second["rankings"] == 30
    assert first["lists_sha256"] == second["lists_sha256"]
    # A shorter replay ends on other users with other histories: other lists.
    assert new_users.measure(data="movielens", limit=7_000, rankings=30, repeats=1)["lists_sha256"] != first["lists_sha256"]
    # Without item vectors the content candidates and text reasons are gone: other lists, still deterministic.
    plain = new_users.measure(data="movielens", limit=8_000, rankings=30, repeats=1, vectors_on=False)
    assert plain["lists_sha256"] != first["lists_sha256"]
    assert plain == new_users.measure(data="movielens", limit=8_000, rankings=30, repeats=1, vectors_on=False) | {
        k: plain[k] for k in ("mean_ms", "p50_ms", "p99_ms", "update_us_per_event")
    }


@pytest.mark.skipif(not (data_dir() / "movielens-100k").is_dir(), reason="needs ../shared/data")
def test_regression_against_a_revision_reads_movielens_where_this_process_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # The children run in a temporary folder, the older revision from a temporary copy of its
    # tree: a data dir resolved there (the default beside the tree, or a relative
    # PERSONA_DATA_DIR) was not found and `--against` failed on MovieLens.
    monkeypatch.setenv("PERSONA_DATA_DIR", os.path.relpath(data_dir(), Path.cwd()))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    report = new_users.run(head, data="movielens", limit=3_000, rankings=5, vectors_on=False)
    assert report["this tree"]["rankings"] == report[head]["rankings"] == 5


def test_an_unknown_data_name_is_refused() -> None:
    with pytest.raises(ValueError, match="new-users, movielens"):
        new_users.measure(data="imdb", rankings=1)


def test_bench_all_new_users_part_is_the_ratio_of_the_two_measures_and_shows_in_the_markdown() -> None:
    from bench.all import markdown, new_user_costs

    calls: list[dict[str, object]] = []

    def small(**kwargs: object) -> dict[str, object]:
        calls.append(kwargs)
        # The part's own sizes, shrunk so the test stays quick: the measure itself is real.
        shrunk = {**kwargs, "rankings": 20, "users": 300, "items": 100, "repeats": 1}
        if kwargs.get("data") == "movielens":
            shrunk["limit"] = 6_000
        return new_users.measure(**shrunk)  # type: ignore[arg-type]

    if not (data_dir() / "movielens-100k").is_dir():
        pytest.skip("needs ../shared/data")
    result = new_user_costs(small, quick=True)
    assert [c.get("data", "new-users") for c in calls] == ["new-users", "movielens"]
    assert all(c["rankings"] == 300 for c in calls)
    assert result["new_vs_repeat"] == result["new_users"]["mean_ms"] / result["movielens"]["mean_ms"]
    report = {
        "started": "2026-12-04T00:00:00Z", "quick": True, "settings": {},
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11", "load_1m_start": 0.1, "load_1m_end": 0.2},
        "parts": {"new-users": {"ok": True, "result": result}},
    }
    row = (f"| new-users | ms per ranking: a new user / a MovieLens repeat user (in process) | "
           f"{result['new_users']['mean_ms']:.3f} / {result['movielens']['mean_ms']:.3f} ({result['new_vs_repeat']:.3f}) |")
    assert row in markdown(report)
