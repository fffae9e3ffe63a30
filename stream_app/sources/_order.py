"""Shared plumbing for the dataset readers: event-time ordering, limits and text limits."""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from io import BufferedReader
from itertools import islice
from pathlib import Path
from typing import Final

from state.errors import DatasetError
from state.events import Click, Event, Follow, Impression, Item, Purchase, Review, User

#: The catalog and the declared attributes go first at equal ``ts`` so that a consumer
#: already knows an item or a user when the first behaviour that mentions it arrives.
KIND_RANK: Final[dict[type[Event], int]] = {
    Item: 0,
    User: 1,
    Follow: 2,
    Click: 3,
    Purchase: 3,
    Review: 3,
    # After the catalog; before its clicks by source order (the sort is stable).
    Impression: 3,
}

# Mirrors the ``max_length`` of the contract fields in state/events.py: an event built
# here must also decode there, and the Struct constructor does not check constraints.
MAX_TEXT: Final = 20_000
MAX_SUMMARY: Final = 2_000
MAX_TITLE: Final = 2_000
MAX_CATEGORY: Final = 256


def ordered(events: list[Event], limit: int | None) -> Iterator[Event]:
    """Sort ``events`` in place by ``(ts, kind rank, source order)`` and yield at most ``limit``.

    ``events`` must be in source order (file position; creation order inside a record).
    The sort is stable, so that order is the final tie-break without storing it.
    """
    events.sort(key=_sort_key)
    return take(events, limit)


def _sort_key(event: Event) -> tuple[float, int]:
    return (event.ts, KIND_RANK[type(event)])


def take(events: Iterable[Event], limit: int | None) -> Iterator[Event]:
    """At most ``limit`` events (all of them for ``None``)."""
    if limit is None:
        return iter(events)
    return islice(events, limit)


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        # A ValueError, not a DatasetError: the caller's argument is wrong, not the data.
        raise ValueError(f"limit must be >= 0 or None, got {limit}")


def clip(text: str, max_len: int) -> str:
    """``text`` cut to ``max_len`` characters, so a long review never breaks the contract."""
    return text if len(text) <= max_len else text[:max_len]


def open_binary(path: Path) -> gzip.GzipFile | BufferedReader:
    """``path`` opened for reading bytes, gunzipped when its name ends in ``.gz``."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def require_dir(path: Path, fmt: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{fmt}: expected the dataset folder, got {path}")
    return path
