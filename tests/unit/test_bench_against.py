"""`persona bench stream --against REV --against-set name=value`: the compared worker's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.settings import Settings


def test_regression_against_compares_a_changed_default_only_with_its_old_value_given() -> None:
    # bench stream --against passed this run's settings, the new default included, to the older
    # commit's worker too: the window 50 -> 20 change compared 20 with 20. The old value is
    # now given explicitly, parsed and checked against the settings' fields.
    from bench.against import against_overrides

    assert against_overrides(["cooc_window=50", "PERSONA_RANKER=baseline", "exclude_clicked=true"]) == {
        "cooc_window": 50, "ranker": "baseline", "exclude_clicked": True,
    }
    assert Settings(**against_overrides(["cooc_window=50"])).cooc_window == 50
    assert against_overrides([]) == {}
    with pytest.raises(ValueError, match="not a setting"):
        against_overrides(["cooc_windw=50"])
    with pytest.raises(ValueError, match="name=value"):
        against_overrides(["cooc_window"])


def test_against_pairs_alternate_which_worker_runs_first_and_report_the_median() -> None:
    # One pair on two shared cores is not evidence (a run of this tree against itself gave 0.846):
    # the further pairs alternate their order so a drift over the run falls on both sides.
    from bench.against import against_pairs

    calls: list[tuple[int, str]] = []
    # (events/s, CPU µs per event, lists) per call, made up: the tree 10% faster, except pair 2.
    rates = {(1, "t"): 1100.0, (1, "a"): 1000.0, (2, "t"): 900.0, (2, "a"): 1000.0, (3, "t"): 1320.0, (3, "a"): 1200.0}

    def run_one(i: int, which: str) -> tuple[float, float, float, int]:
        calls.append((i, which))
        return rates[(i, which)], 1e6 / rates[(i, which)], 2e6 / rates[(i, which)], i

    first = ((2000.0, 500.0, 1000.0, 7), (1000.0, 1000.0, 1000.0, 8))
    got = against_pairs(first, 4, run_one)

    assert calls == [(1, "a"), (1, "t"), (2, "t"), (2, "a"), (3, "a"), (3, "t")]
    assert [row["first"] for row in got["against_pairs"]] == ["tree", "against", "tree", "against"]
    ratios = [row["ratio"] for row in got["against_pairs"]]
    assert ratios == pytest.approx([2.0, 1.1, 0.9, 1.1])
    assert got["persona_vs_against_median"] == pytest.approx(1.1)  # the two middle ones, 1.1 and 1.1
    assert (got["persona_vs_against_min"], got["persona_vs_against_max"]) == pytest.approx((0.9, 2.0))
    # CPU per event: 500/1000 in the first pair, the reciprocal of the rate ratio in the others;
    # the machine's: 1.0 in the first pair, the same reciprocals in the others.
    assert got["persona_vs_against_cpu_median"] == pytest.approx(1 / 1.1)  # of 0.5, 1/1.1, 1/0.9, 1/1.1
    assert got["persona_vs_against_machine_cpu_median"] == pytest.approx((1 / 1.1 + 1.0) / 2)  # of 1.0, 1/1.1, 1/0.9, 1/1.1
    assert [(row["tree_lists"], row["against_lists"]) for row in got["against_pairs"]] == [(7, 8), (1, 1), (2, 2), (3, 3)]
    assert against_pairs(first, 1, run_one)["persona_vs_against_median"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "args", [["--against-batched", "--against", "HEAD", "--batch", "1"], ["--against-batched", "--batch", "16"]]
)
def test_a_batched_comparison_needs_batch_records_and_something_to_compare(args: list[str]) -> None:
    # Refused before any broker or worker starts: with nothing to compare, or records of one
    # event, --against-batched would measure nothing it names.
    from typer.testing import CliRunner

    from bench.cli import app

    got = CliRunner().invoke(app, ["stream", *args])
    assert got.exit_code == 2
    assert "--against-batched" in got.output


def test_run_refuses_a_batched_comparison_without_batch_records(tmp_path: Path) -> None:
    from bench.stream import run

    with pytest.raises(ValueError, match="batch records"):
        run(None, tmp_path, 10, profiles=0, against="HEAD", batch=0, against_batched=True)
