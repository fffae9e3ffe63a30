"""``persona bench padding``: its padded-token shares and its rows, on the tiny test artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import padding
from encoders import load_encoder
from tests.unit.test_encoders import build_artifact, token_ids

TEXTS = [" ".join(["a", "b", "great"] * n) for n in (1, 6, 1, 2, 9, 1, 3, 1)]


def _shares_by_hand(micro: list[list[str]], budget: int | None) -> float:
    """Real over padded tokens, each call padded to its longest: the calls worked out from
    token counts alone (length-sorted, cut by rows, then by the budget)."""
    real = padded = 0
    for texts in micro:
        lengths = sorted(len(token_ids(t)) for t in texts)
        calls: list[list[int]] = []
        for n in lengths:
            if calls and (budget is None or (len(calls[-1]) + 1) * n <= budget):
                calls[-1].append(n)
            else:
                calls.append([n])
        for call in calls:
            real += sum(call)
            padded += len(call) * max(call)
    return real / padded


def test_real_share_counts_the_padding_of_each_policy(tmp_path: Path) -> None:
    root = build_artifact(tmp_path / "tiny")
    micro = [TEXTS[:4], TEXTS[4:]]
    rows = load_encoder(root, device="cpu", cache_size=0, batch_size=4, max_batch_tokens=0)
    budgeted = load_encoder(root, device="cpu", cache_size=0, batch_size=4, max_batch_tokens=24)
    by_rows, by_budget = padding.real_share(rows, micro), padding.real_share(budgeted, micro)
    assert by_rows == pytest.approx(_shares_by_hand(micro, None))
    assert by_budget == pytest.approx(_shares_by_hand(micro, 24))
    assert by_budget > by_rows


def test_measure_reports_both_policies_and_their_agreement(tmp_path: Path) -> None:
    root = build_artifact(tmp_path / "tiny")
    row = padding.measure(root, "fp32", TEXTS, micro_batch=4, budget=24, threads=1, repeat=1)
    assert (row.texts, row.micro_batch, row.budget) == (len(TEXTS), 4, 24)
    assert row.rows_only_texts_per_s > 0 and row.budget_texts_per_s > 0
    assert row.ratio == pytest.approx(row.budget_texts_per_s / row.rows_only_texts_per_s)
    # An embedding-only graph has no per-call state: the two policies give the same vectors.
    assert row.min_cos == pytest.approx(1.0, abs=1e-5)


def test_run_refuses_a_budget_below_one_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budget"):
        padding.run(tmp_path, budget=0)
