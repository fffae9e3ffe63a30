"""The offline encoder swap: the replay really moves to the new version mid-stream, and a swap
to an identical encoder under another version name costs (almost) nothing, because interests
are migrated rather than restarted."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from state.events import Event, Purchase
from stream_app.evaluate import Replay
from stream_app.settings import Settings
from stream_app.sources import read_events
from stream_app.swap_study import SwapReplay, swap_study


@dataclass
class _Relabelled:
    """The same graph under another version name: a swap whose vectors are all unchanged."""

    inner: Any
    version: str

    @property
    def info(self) -> Any:
        return replace(self.inner.info, version=self.version)

    def encode(self, texts: Any) -> Any:
        return self.inner.encode(texts)

    def sentiment(self, vectors: Any) -> Any:
        return self.inner.sentiment(vectors)


@pytest.fixture
def movielens(data_dir: Path) -> list[Event]:
    return list(read_events("movielens", data_dir / "movielens-100k", limit=5000))


def test_a_swap_to_the_same_vectors_keeps_quality_and_moves_every_later_user(
    movielens: list[Event], encoder_registry: tuple[Path, list[str]]
) -> None:
    from encoders import load_encoder

    root, versions = encoder_registry
    a = load_encoder(root / versions[0], device="cpu")
    b = _Relabelled(a, "same-vectors-v2")
    settings = Settings(rank_content_weight=0.5)  # the interest must matter to the lists
    replays: dict[str, Replay] = {}
    result = swap_study(movielens, settings, a, b, at=0.6, runs=("before", "swapped"), replays=replays)
    run = replays["swapped"]
    assert isinstance(run, SwapReplay) and run.swapped
    assert run.pipeline.shared.content.version == "same-vectors-v2"
    at = int(0.6 * len(movielens))
    later = {e.user_id for e in movielens[at:] if isinstance(e, Purchase)}
    assert len(later) > 20
    for user in sorted(later):
        profile = run.store.cached(user.encode())
        assert profile is not None and profile.interest is not None
        assert profile.interest.version == "same-vectors-v2", user
    assert result["evaluated"] > 300
    # Migrated interests are rebuilt from the same vectors: the lists barely move.
    assert abs(result["swapped"]["ndcg@10"] - result["before"]["ndcg@10"]) <= 0.002
