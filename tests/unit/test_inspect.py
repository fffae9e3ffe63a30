"""stream_app/inspect.py helpers over a faked topic scan (no broker): the final
recommendation message per user, the demo's user pick, and the rendering."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

import stream_app.inspect as inspect
from scoring.baseline import Scored
from scoring.messages import Recommendations, decode, encode
from stream_app.settings import Settings

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int, int]


def _msg(user: str, version: int, item: str = "i1") -> bytes:
    return encode(
        Recommendations(
            user_id=user,
            items=[Scored(item_id=item, score=0.5, reasons=["you engage with Drama (40% of your recent activity)"])],
            profile_version=version,
            generated_at=0.0,
            trigger_event_ts=876_000_000.0,
        )
    )


def _fake_scan(monkeypatch: pytest.MonkeyPatch, records: list[Record]) -> None:
    def scan(settings: Settings, topic: str, **_: Any) -> Iterator[Record]:
        assert topic == settings.recommendations_topic
        yield from records

    monkeypatch.setattr(inspect, "scan", scan)


def test_latest_recommendations_keeps_the_highest_profile_version(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_scan(
        monkeypatch,
        [
            (b"a", _msg("a", 2, "old"), [], 0, 0),
            (b"b", _msg("b", 5), [], 1, 0),
            (b"a", _msg("a", 7, "new"), [], 0, 1),
            (b"a", b"not json", [], 0, 2),
            (b"a", _msg("a", 6, "stale"), [], 0, 3),  # an older version emitted late
            (None, _msg("x", 1), [], 0, 4),
            (b"c", None, [], 0, 5),
        ],
    )
    latest = inspect.latest_recommendations(Settings())
    assert set(latest) == {"a", "b"}
    a = latest["a"]
    assert (a.message.profile_version, a.message.items[0].item_id, a.emitted, a.offset) == (7, "new", 3, 1)
    assert set(inspect.latest_recommendations(Settings(), ["b"])) == {"b"}


def test_pick_users_spreads_over_history_length_deterministically() -> None:
    latest = {
        f"u{j}": inspect.FinalRecommendations(
            message=decode(_msg(f"u{j}", 10 + j * 3)), emitted=1, partition=0, offset=j
        )
        for j in range(20)
    }
    picked = inspect.pick_users(latest, 4)
    assert picked == ["u0", "u6", "u13", "u19"]  # shortest .. longest history
    assert inspect.pick_users(dict(reversed(list(latest.items()))), 4) == picked
    assert inspect.pick_users(latest, 1) == ["u0"]
    assert inspect.pick_users(latest, 0) == []
    assert sorted(inspect.pick_users(dict(list(latest.items())[:3]), 4)) == ["u0", "u1", "u2"]


def test_render_recommendations_shows_titles_scores_and_reasons() -> None:
    final = inspect.FinalRecommendations(message=decode(_msg("u1", 21, "100")), emitted=4, partition=3, offset=427)
    console = Console(width=200, record=True)
    inspect.render_recommendations({"u1": final}, {"100": "Fargo (1996)"}, console)
    text = console.export_text()
    assert "user u1: profile version 21, final of 4 messages" in text
    assert "Fargo (1996)" in text and "0.5000" in text and "you engage with Drama" in text
