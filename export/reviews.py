"""Review texts and stars from Amazon 2014 Musical Instruments (5-core), with the fixed
splits every exporter, test and bench uses. No torch here: the worker-side bench reads it too.

Splits are by 0-based line index in the file, so they never depend on filtering order:
parity texts are lines with index % 17 == 0, the head trains on index % 5 != 0, and
index % 5 == 0 is the holdout reserved for evaluation (the head never sees it).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from state import paths
from state.errors import DatasetError
from state.events import encoder_text

DATASET = Path("amazon2014-musical-instruments-5core") / "reviews_Musical_Instruments_5.json.gz"
PARITY_EVERY = 17
HOLDOUT_EVERY = 5


@dataclass(frozen=True)
class Review:
    line: int
    text: str
    rating: float


def data_dir() -> Path:
    return paths.data_dir()


def dataset_path(root: Path | None = None) -> Path:
    return (root or data_dir()) / DATASET


def read_reviews(path: Path | None = None) -> list[Review]:
    """Reviews with a non-blank ``reviewText``, in file order."""
    path = path or dataset_path()
    if not path.is_file():
        raise DatasetError(f"review dataset not found: {path} (set PERSONA_DATA_DIR)")
    out: list[Review] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh):
            record = json.loads(line)
            body = str(record.get("reviewText") or "").strip()
            if body:
                # The same string the worker encodes, so the head sees what it will score.
                text = encoder_text(str(record.get("summary") or "").strip(), body)
                out.append(Review(line_no, text, float(record["overall"])))
    return out


def parity_texts(reviews: list[Review], n: int) -> list[str]:
    return [r.text for r in reviews if r.line % PARITY_EVERY == 0][:n]


def train_pairs(reviews: list[Review]) -> list[tuple[str, float]]:
    return [(r.text, r.rating) for r in reviews if r.line % HOLDOUT_EVERY != 0]


def holdout(reviews: list[Review], n: int | None = None) -> list[Review]:
    held = [r for r in reviews if r.line % HOLDOUT_EVERY == 0]
    return held if n is None else held[:n]
