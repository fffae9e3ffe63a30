"""CiaoDVD (Guo et al. 2014) as Purchase + Review (ratings), Item (movies) and Follow (trust)."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from pathlib import Path

from state.errors import DatasetError
from state.events import Event, Follow, Item, Purchase, Review

from ._order import require_dir

# "    3) Family: http://dvd.ciao.co.uk/Family_5291512_2" in the authors' readme.
_GENRE_LINE = re.compile(r"^\s*(\d+)\)\s*(.+?):\s*http://dvd\.ciao\.co\.uk/", re.MULTILINE)
_GENRE_COUNT = 17


def read(path: Path) -> list[Event]:
    """The events of a CiaoDVD folder, in source order (not yet sorted)."""
    folder = require_dir(path, "ciao")
    genres = genre_names(folder / "readme.original.txt")
    behaviour: list[Event] = []
    first_genre: dict[str, str] = {}  # movie -> genreID, in first-seen order
    midnight: dict[str, float] = {}
    ratings = folder / "movie-ratings.txt"
    with ratings.open(encoding="ascii") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                user, movie, genre, review, stars, day = line.rstrip("\r\n").split(",")
                ts = midnight.get(day)
                if ts is None:
                    # Dates only: midnight UTC, cached because there are few distinct days.
                    ts = float(calendar.timegm(dt.date.fromisoformat(day).timetuple()))
                    midnight[day] = ts
                rating = float(stars)
            except ValueError as exc:
                raise DatasetError(f"{ratings}:{line_no}: invalid rating row: {exc}") from exc
            first_genre.setdefault(movie, genre)
            behaviour.append(
                Purchase(event_id=f"ci-p-{review}", ts=ts, user_id=user, item_id=movie)
            )
            # The review text was never released; the row still is a written review.
            behaviour.append(
                Review(
                    event_id=f"ci-r-{review}",
                    ts=ts,
                    user_id=user,
                    item_id=movie,
                    text="",
                    rating=rating,
                )
            )
    if not behaviour:
        raise DatasetError(f"{ratings}: no ratings")
    start = min(event.ts for event in behaviour)
    events: list[Event] = [
        Item(
            event_id=f"ci-i-{movie}",
            ts=start,
            item_id=movie,
            categories=[genres.get(genre, f"genre-{genre}")],
        )
        for movie, genre in first_genre.items()
    ]
    events.extend(_follows(folder / "trusts.txt", start))
    events.extend(behaviour)
    return events


def _follows(path: Path, ts: float) -> list[Event]:
    # Trust edges carry no time; placing them at the first rating makes the graph
    # known before any behaviour, which is what the social features expect.
    follows: list[Event] = []
    with path.open(encoding="ascii") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split(",")
            if len(fields) != 3:
                raise DatasetError(f"{path}:{line_no}: expected trustor,trustee,value")
            trustor, trustee = fields[0], fields[1]
            follows.append(
                Follow(
                    event_id=f"ci-f-{trustor}-{trustee}",
                    ts=ts,
                    user_id=trustor,
                    followee_id=trustee,
                )
            )
    return follows


def genre_names(readme: Path) -> dict[str, str]:
    """genreID -> name from the authors' readme; ``{}`` (use ``genre-<id>``) unless all 17 parse."""
    if not readme.is_file():
        return {}
    # One byte in the readme is not UTF-8 (a pound sign); it is not in a genre line.
    text = readme.read_text(encoding="utf-8", errors="replace")
    found = {index: name.strip() for index, name in _GENRE_LINE.findall(text)}
    if sorted(found, key=int) != [str(i) for i in range(1, _GENRE_COUNT + 1)]:
        return {}
    return found
