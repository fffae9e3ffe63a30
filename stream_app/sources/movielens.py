"""MovieLens 100K (GroupLens) as Item (movies), User (demographics) and Purchase (ratings)."""

from __future__ import annotations

from pathlib import Path

from state.errors import DatasetError
from state.events import AttributeValue, Event, Item, Purchase, User

from ._order import MAX_TEXT, MAX_TITLE, clip, require_dir


def read(path: Path) -> list[Event]:
    """The events of an ``ml-100k`` folder, in source order (not yet sorted)."""
    folder = require_dir(path, "movielens")
    genres = _genres(folder / "u.genre")
    ratings, min_ts = _ratings(folder / "u.data")
    events: list[Event] = []
    events.extend(_items(folder / "u.item", genres, min_ts))
    events.extend(_users(folder / "u.user", min_ts))
    events.extend(ratings)
    return events


def _genres(path: Path) -> list[str]:
    """Genre names by flag position; the file gives ``name|index`` and a trailing blank line."""
    by_index: dict[int, str] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line.strip():
            name, index = line.rsplit("|", 1)
            by_index[int(index)] = name
    return [by_index[i] for i in range(len(by_index))]


def _ratings(path: Path) -> tuple[list[Event], float]:
    events: list[Event] = []
    min_ts = float("inf")
    with path.open(encoding="ascii") as fh:
        for line in fh:
            # The rating itself is not carried: Purchase has no rating and there is no text
            # for a Review, so the signal kept is "this user chose this movie, then".
            user, item, _rating, stamp = line.split("\t")
            ts = float(stamp)
            if ts < min_ts:
                min_ts = ts
            events.append(
                Purchase(event_id=f"ml-r-{user}-{item}", ts=ts, user_id=user, item_id=item)
            )
    if not events:
        raise DatasetError(f"{path}: no ratings")
    return events, min_ts


def _items(path: Path, genres: list[str], ts: float) -> list[Event]:
    items: list[Event] = []
    # ISO-8859-1: a handful of titles carry accented letters.
    with path.open(encoding="latin-1") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|")
            flags = fields[5:]
            if len(flags) != len(genres):
                raise DatasetError(
                    f"{path}:{line_no}: {len(flags)} genre flags, {len(genres)} genres"
                )
            item_id, title = fields[0], fields[1].strip()
            names = [genre for genre, flag in zip(genres, flags, strict=True) if flag == "1"]
            items.append(
                Item(
                    event_id=f"ml-i-{item_id}",
                    ts=ts,
                    item_id=item_id,
                    title=clip(title, MAX_TITLE),
                    text=clip(f"{title} | {', '.join(names)}", MAX_TEXT),
                    categories=names,
                )
            )
    return items


def _users(path: Path, ts: float) -> list[Event]:
    users: list[Event] = []
    with path.open(encoding="ascii") as fh:
        for line in fh:
            if not line.strip():
                continue
            user_id, age, gender, occupation, zip_code = line.rstrip("\n").split("|")
            # Zip stays a string: some are alphanumeric and leading zeros matter.
            attributes: dict[str, AttributeValue] = {
                "age": int(age),
                "gender": gender,
                "occupation": occupation,
                "zip": zip_code,
            }
            users.append(
                User(event_id=f"ml-u-{user_id}", ts=ts, user_id=user_id, attributes=attributes)
            )
    return users
