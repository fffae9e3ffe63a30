"""`persona produce` replays real datasets into a real broker, record for record."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from state.events import Purchase, Review, decode
from stream_app.inspect import scan
from stream_app.settings import Settings
from tests.support import REPO, settings_env

pytestmark = pytest.mark.integration


def _cli(settings: Settings, *args: str) -> str:
    env = dict(os.environ)
    env.update(settings_env(settings))
    out = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_produce_amazon_musical_instruments_whole_file(
    topic_factory: Callable[..., Settings], data_dir: Path
) -> None:
    path = data_dir / "amazon2014-musical-instruments-5core" / "reviews_Musical_Instruments_5.json.gz"
    settings = topic_factory()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 10_261

    stdout = _cli(settings, "produce", "--format", "amazon", str(path), "--no-progress")

    reported = dict(line.split("\t") for line in stdout.strip().splitlines())
    assert reported == {settings.topic("purchase"): "10261", settings.topic("review"): "10261"}
    per_topic: Counter[str] = Counter()
    ratings: Counter[float] = Counter()
    for kind in ("purchase", "review", "click", "item", "user", "follow"):
        for key, value, _, _, _ in scan(settings, settings.topic(kind)):
            event = decode(kind, key, value)
            assert isinstance(event, (Purchase, Review)), event
            per_topic[kind] += 1
            if isinstance(event, Review):
                ratings[event.rating or 0.0] += 1
    assert per_topic == {"purchase": 10_261, "review": 10_261}
    assert ratings == Counter(float(r["overall"]) for r in rows)


def test_tail_prints_decoded_records(topic_factory: Callable[..., Settings]) -> None:
    settings = topic_factory()
    _cli(settings, "produce", "--format", "synthetic", "--limit", "300", "--no-progress")
    out = _cli(settings, "tail", settings.topic("item"), "--max", "5")
    lines = out.strip().splitlines()
    assert len(lines) == 5
    assert all("Item(" in line and "syn-" in line for line in lines)
