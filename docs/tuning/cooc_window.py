"""The co-occurrence window (``PERSONA_COOC_WINDOW``): NDCG@10 of the ``all`` variant per
dataset and window, on the validation slice (where the window is chosen) and the test slice
(reported, never tuned on), with each dataset's tuned ranker settings (evaluation_report.TUNED).

    python docs/tuning/cooc_window.py [--dataset NAME] [--slice validation|test] [WINDOW ...] > var/cooc_window.jsonl

One JSON line per (dataset, window, slice).
"""

from __future__ import annotations

import json
import sys
import time

from stream_app.evaluate import evaluate
from stream_app.evaluation_report import DATASETS, TEST, TUNED, VALIDATION
from stream_app.models import open_text_encoder
from stream_app.settings import Settings
from stream_app.sources import read_events


def main(windows: list[int], only: str | None = None, slices: tuple[str, ...] = ("validation", "test")) -> None:
    data = Settings().data_dir
    for name, (fmt, rel) in DATASETS.items():
        if only is not None and name != only:
            continue
        events = list(read_events(fmt, data / rel))
        for window in windows:
            settings = Settings(**TUNED[name], cooc_window=window)  # type: ignore[arg-type]
            encoder = open_text_encoder("auto", settings)
            for label, part in (("validation", VALIDATION), ("test", TEST)):
                if label not in slices:
                    continue
                started = time.monotonic()
                report = evaluate(events, settings, ks=(10,), variants=("all",), dataset=name, window=part, encoder=encoder).to_json()
                row = report["variants"]["all"]
                print(json.dumps({"dataset": name, "window": window, "slice": label, "ndcg@10": row["ndcg@10"],
                                  "recall@10": row["recall@10"], "seconds": round(time.monotonic() - started, 1)}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    only = None
    if args[:1] == ["--dataset"]:
        only, args = args[1], args[2:]
    slices: tuple[str, ...] = ("validation", "test")
    if args[:1] == ["--slice"]:
        slices, args = (args[1],), args[2:]
    main([int(w) for w in args] or [50, 30, 20, 10], only, slices)
