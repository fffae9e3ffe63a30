"""``make evaluation``: docs/EVALUATION.md and its plots, from the prequential harness.

For each dataset the ranker's settings (:data:`TUNED`) were chosen on the *validation* slice
(positives in 50-75% of the replay, ``persona evaluate --slice 0.5:0.75``); the tables and
plots here are the *test* slice (75-100%), on which nothing was tuned. Every event of the
replay is applied either way; only the scored positives differ.

    .venv/bin/python -m stream_app.evaluation_report [--out docs] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from scoring.evaluation import Label, ndcg, rank_of
from stream_app.evaluate import VARIANTS, evaluate
from stream_app.models import open_text_encoder
from stream_app.settings import Settings
from stream_app.sources import SourceFormat, read_events

VALIDATION = (0.5, 0.75)
TEST = (0.75, 1.0)
#: name -> (format, path under the data dir)
DATASETS: dict[str, tuple[SourceFormat, str]] = {
    "Musical Instruments": ("amazon", "amazon2014-musical-instruments-5core/reviews_Musical_Instruments_5.json.gz"),
    "MovieLens-100k": ("movielens", "movielens-100k"),
    "CiaoDVD": ("ciao", "ciaodvd"),
}
#: The ranker settings chosen on the validation slice (see docs/EVALUATION.md, "Tuning").
TUNED: dict[str, dict[str, float]] = {
    "Musical Instruments": {"rank_cooc_weight": 1.0, "rank_category_weight": 0.0, "rank_trending_weight": 2.0,
                            "rank_recency": 0.9, "popularity_half_life_days": 365.0,
                            "rank_content_weight": 0.3, "rank_sentiment_weight": 0.1, "rank_social_weight": 0.0,
                            "rank_segment_weight": 0.0},
    "MovieLens-100k": {"rank_cooc_weight": 1.0, "rank_category_weight": 0.3, "rank_trending_weight": 0.2,
                       "rank_recency": 0.8, "popularity_half_life_days": 14.0,
                       "rank_content_weight": 0.0, "rank_sentiment_weight": 0.0, "rank_social_weight": 0.0,
                       "rank_segment_weight": 0.05},
    "CiaoDVD": {"rank_cooc_weight": 1.0, "rank_category_weight": 0.3, "rank_trending_weight": 3.0,
                "rank_recency": 0.8, "popularity_half_life_days": 14.0,
                "rank_content_weight": 0.0, "rank_sentiment_weight": 0.0, "rank_social_weight": 0.1,
                "rank_segment_weight": 0.0},
}
#: History-length buckets (distinct items before the positive) for the second plot.
BUCKETS = ((1, 2), (3, 5), (6, 10), (11, 25), (26, 50), (51, 10**9))
K = 10


def _bucket(n: int) -> str:
    for lo, hi in BUCKETS:
        if lo <= n <= hi:
            return f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"
    return "0"


def run(data: Path, name: str, window: tuple[float, float]) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    fmt, rel = DATASETS[name]
    events = list(read_events(fmt, data / rel))
    by_history: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def trace(label: Label, lists: dict[str, list[str]]) -> None:
        bucket = _bucket(label.earlier)
        for variant, ranked in lists.items():
            by_history[variant][bucket].append(ndcg(rank_of(ranked[:K], label.item_id), K))

    settings = Settings(**TUNED[name])  # type: ignore[arg-type]
    encoder = open_text_encoder("auto", settings)
    report = evaluate(events, settings, ks=(K,), variants=VARIANTS, dataset=name, window=window, trace=trace, encoder=encoder)
    return report.to_json(), {v: dict(b) for v, b in by_history.items()}


def _table(reports: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| dataset | variant | NDCG@10 | Recall@10 | coverage@10 | diversity@10 | cold share |", "|---|---|---|---|---|---|---|"]
    for name, rep in reports.items():
        for variant, v in rep["variants"].items():
            rows.append(
                f"| {name} | {variant} | {v['ndcg@10']:.4f} | {v['recall@10']:.4f} | {v['coverage@10']:.3f} | "
                f"{v['diversity@10']:.3f} | {v['cold_share']:.2f} |"
            )
            if "last_emitted" in v:
                le = v["last_emitted"]
                rows.append(f"| {name} | all (last emitted) | {le['ndcg@10']:.4f} | {le['recall@10']:.4f} | | | |")
    return rows


def _plots(reports: dict[str, dict[str, Any]], hist: dict[str, dict[str, dict[str, list[float]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(reports)
    variants = [v for v in VARIANTS if all(v in reports[n]["variants"] for n in names)]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(variants)
    for j, variant in enumerate(variants):
        xs = [i + j * width for i in range(len(names))]
        ax.bar(xs, [reports[n]["variants"][variant]["ndcg@10"] for n in names], width, label=variant)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.set_ylabel("NDCG@10 (test slice)")
    ax.set_title("Prequential NDCG@10 per variant")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ndcg_by_variant.png", dpi=110)
    plt.close(fig)

    labels = [_bucket(lo) for lo, _ in BUCKETS]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), sharey=False)
    for ax, n in zip(axes if len(names) > 1 else [axes], names, strict=True):
        for variant in ("all", "behaviour", "popularity", "item_knn"):
            series = hist[n].get(variant, {})
            ys = [sum(series[b]) / len(series[b]) if series.get(b) else math.nan for b in labels]
            ax.plot(labels, ys, marker="o", label=variant)
        ax.set_title(n)
        ax.set_xlabel("items before the positive")
        ax.set_ylabel("NDCG@10")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ndcg_by_history.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: settings' data_dir)")
    args = parser.parse_args(argv)
    data = args.data or Settings().data_dir
    out: Path = args.out
    (out / "evaluation").mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    hist: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in DATASETS:
        reports[name], hist[name] = run(data, name, TEST)
        slug = name.lower().replace(" ", "-")
        (out / "evaluation" / f"{slug}.json").write_text(json.dumps(reports[name], indent=2, sort_keys=True))
        print(f"{name}: {reports[name]['evaluated']:,} positives scored on the test slice", flush=True)
    _plots(reports, hist, out / "evaluation")
    doc = out / "EVALUATION.md"
    # The prose above the marker is written by hand; everything below it is regenerated.
    head = doc.read_text(encoding="utf-8").split("<!-- results -->")[0] if doc.exists() else "# Evaluation\n\n"
    body = ["<!-- results -->", "", "## Results (test slice: positives in 75-100% of each replay)", "", *_table(reports), "",
            "![NDCG@10 per variant](evaluation/ndcg_by_variant.png)", "",
            "![NDCG@10 by history length](evaluation/ndcg_by_history.png)", "",
            "Settings per dataset (chosen on the validation slice, 50-75%):", ""]
    body += [f"- {n}: `{json.dumps(TUNED[n])}`" for n in DATASETS]
    (out / "EVALUATION.md").write_text(head + "\n".join(body) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
