"""Before/after comparisons of ``persona bench stream --against REV / --against-set``: the
compared worker's settings, the alternating pairs of runs and their table. Pure: the runs
themselves are made by :mod:`bench.stream`."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from stream_app.settings import Settings

Run = tuple[float, float, float, int]  #: a worker run: events/s, its CPU and the machine's per event (µs), lists emitted


def against_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``name=value`` pairs for the compared worker's settings, checked against the settings'
    fields (a typo must not run an unchanged comparison). Values are JSON where they parse as
    JSON (numbers, booleans, objects), else strings; the settings model validates them."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().lower().removeprefix("persona_")
        if not sep or not name:
            raise ValueError(f"expected name=value, got {pair!r}")
        if name not in Settings.model_fields:
            raise ValueError(f"{name!r} is not a setting")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def against_pairs(first: tuple[Run, Run], pairs: int, run_one: Callable[[int, str], Run]) -> dict[str, Any]:
    """Before/after ratios over ``pairs`` pairs of runs, the first given as (this tree's run, the
    compared worker's run).

    On two shared cores one pair is not evidence: a run of this tree against itself (an
    ``--against-set`` of a default value) gave 0.846, and a setting's before/after 1.28 with
    this tree first and 0.71 with it second (docs/PERFORMANCE.md). The pairs after the first
    alternate which worker runs first (compared, tree; tree, compared; ...), so a drift over
    the run falls on both sides; the figure is the median ratio, with the spread beside it."""
    runs: list[tuple[str, Run, Run]] = [("tree", *first)]
    for i in range(1, pairs):
        order = ("a", "t") if i % 2 else ("t", "a")
        got = {which: run_one(i, which) for which in order}
        runs.append(("tree" if order[0] == "t" else "against", got["t"], got["a"]))
    rows = [
        {
            "first": who, "tree_eps": t[0], "against_eps": a[0], "ratio": t[0] / a[0],
            "tree_cpu_us": t[1], "against_cpu_us": a[1], "cpu_ratio": t[1] / a[1],
            "tree_machine_cpu_us": t[2], "against_machine_cpu_us": a[2], "machine_cpu_ratio": t[2] / a[2],
            "tree_lists": t[3], "against_lists": a[3],
        }
        for who, t, a in runs
    ]
    ratios = [t[0] / a[0] for _, t, a in runs]
    return {
        "against_pairs": rows,
        "persona_vs_against_median": statistics.median(ratios),
        "persona_vs_against_min": min(ratios),
        "persona_vs_against_max": max(ratios),
        "persona_vs_against_cpu_median": statistics.median(t[1] / a[1] for _, t, a in runs),
        "persona_vs_against_machine_cpu_median": statistics.median(t[2] / a[2] for _, t, a in runs),
    }


def render_pairs(report: dict[str, Any], console: Console) -> None:
    """The before/after pairs of ``--pairs``, one row each, and the median."""
    from rich.table import Table

    rows = report.get("against_pairs")
    if not rows:
        return
    table = Table(
        title=f"this tree against {report.get('against_settings') or report.get('against')}, events/s per pair"
        f" ({report.get('against_on', 'records of one event')})"
    )
    for column in ("first", "this tree", "compared", "ratio", "worker CPU/event ratio", "machine CPU/event ratio", "lists"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["first"], f"{row['tree_eps']:,.0f}", f"{row['against_eps']:,.0f}", f"{row['ratio']:.3f}", f"{row['cpu_ratio']:.3f}",
            f"{row['machine_cpu_ratio']:.3f}", f"{row['tree_lists']:,} / {row['against_lists']:,}",
        )
    console.print(table)
    console.print(
        f"median ratio {report['persona_vs_against_median']:.3f} "
        f"(spread {report['persona_vs_against_min']:.3f}-{report['persona_vs_against_max']:.3f}), "
        f"worker CPU per event {report['persona_vs_against_cpu_median']:.3f}, "
        f"machine CPU per event {report['persona_vs_against_machine_cpu_median']:.3f}"
    )
