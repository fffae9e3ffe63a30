"""MIND (Microsoft News) as Item (news articles), Impression (what was shown, what was clicked)
and Click (clicked impression entries and histories)."""

from __future__ import annotations

import calendar
import datetime as dt
from pathlib import Path
from typing import NamedTuple

from state.errors import DatasetError
from state.events import MAX_SHOWN, Click, Event, Impression, Item

from ._order import MAX_CATEGORY, MAX_TEXT, MAX_TITLE, clip, require_dir

_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"  # strptime also accepts the unpadded "11/9/2019 2:14:46 PM"


class _Impression(NamedTuple):
    line_no: int
    impression_id: str
    user: str
    ts: float
    history: list[str]
    entries: list[str]


def read(path: Path) -> list[Event]:
    """The events of a MIND folder (``news.tsv``, ``behaviors.tsv``), in source order."""
    folder = require_dir(path, "mind")
    behaviors = folder / "behaviors.tsv"
    impressions = _impressions(behaviors)
    first_seen: dict[str, float] = {}
    for imp in impressions:
        if imp.ts < first_seen.get(imp.user, float("inf")):
            first_seen[imp.user] = imp.ts
    clicks: list[Event] = []
    history_done: set[tuple[str, str]] = set()
    for imp in impressions:
        # Histories carry no time: they happened before the user's first impression, so
        # they land one second before it, once per (user, news).
        hist_ts = first_seen[imp.user] - 1.0
        for news in imp.history:
            if (imp.user, news) not in history_done:
                history_done.add((imp.user, news))
                clicks.append(
                    Click(
                        event_id=f"mi-h-{imp.user}-{news}",
                        ts=hist_ts,
                        user_id=imp.user,
                        item_id=news,
                    )
                )
        shown, clicked = [], []
        for entry in imp.entries:
            news, _, label = entry.rpartition("-")
            if label not in ("0", "1"):
                raise DatasetError(f"{behaviors}:{imp.line_no}: bad impression entry {entry!r}")
            shown.append(news)
            if label == "1":
                clicked.append(news)
        if shown:
            # The impression first, then its clicks (same time): a reader of the impression
            # sees the user as they were when the list was shown.
            clicks.append(
                Impression(
                    event_id=f"mi-s-{imp.impression_id}",
                    ts=imp.ts,
                    user_id=imp.user,
                    items=shown[:MAX_SHOWN],
                    clicked=[n for n in dict.fromkeys(clicked) if n in set(shown[:MAX_SHOWN])],
                )
            )
        for entry in imp.entries:
            news, _, label = entry.rpartition("-")
            if label == "1":
                clicks.append(
                    Click(
                        event_id=f"mi-c-{imp.impression_id}-{news}",
                        ts=imp.ts,
                        user_id=imp.user,
                        item_id=news,
                    )
                )
    # The catalog starts with the earliest behaviour, history clicks included, so that
    # news known from news.tsv is in place before anything clicks it.
    start = min((event.ts for event in clicks), default=min(first_seen.values(), default=0.0))
    events: list[Event] = _news(folder / "news.tsv", start)
    events.extend(clicks)
    return events


def _impressions(path: Path) -> list[_Impression]:
    out: list[_Impression] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 5:
                raise DatasetError(f"{path}:{line_no}: expected 5 fields, got {len(fields)}")
            impression_id, user, time, history, entries = fields
            try:
                # MIND publishes the times without a zone; they are treated as UTC.
                ts = float(calendar.timegm(dt.datetime.strptime(time, _TIME_FORMAT).timetuple()))
            except ValueError as exc:
                raise DatasetError(f"{path}:{line_no}: bad time {time!r}") from exc
            out.append(
                _Impression(line_no, impression_id, user, ts, history.split(), entries.split())
            )
    return out


def _news(path: Path, ts: float) -> list[Event]:
    items: list[Event] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 5:
                raise DatasetError(f"{path}:{line_no}: expected at least 5 tab-separated fields")
            news_id, category, subcategory, title, abstract = (f.strip() for f in fields[:5])
            categories: list[str] = []
            for name in (category, subcategory):
                if name and name not in categories:
                    categories.append(clip(name, MAX_CATEGORY))
            items.append(
                Item(
                    event_id=f"mi-i-{news_id}",
                    ts=ts,
                    item_id=news_id,
                    title=clip(title, MAX_TITLE),
                    text=clip(" ".join(p for p in (title, abstract) if p), MAX_TEXT),
                    categories=categories,
                )
            )
    return items
