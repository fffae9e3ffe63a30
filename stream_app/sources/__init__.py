"""Dataset readers: real datasets turned into ordered streams of contract events.

``read_events(fmt, path)`` yields :mod:`state.events` events in event-time order. Ties
are broken by ``(ts, kind rank, source order)``: the catalog first (item 0, user 1,
follow 2, then click/purchase/review 3), so a consumer knows an item, a user or an edge
before behaviour that refers to it; then the record's position in its file, and for a
record that yields several events, their creation order. The result is fully
deterministic, and event ids are derived from the data (never random or counters over
the sorted output), so a replay of the same file produces the same ids and the
de-duplication downstream recognises it. ``limit`` caps the events yielded, after
ordering. Every event is built to pass :func:`state.events.decode` (over-long texts are
cut to the contract's lengths).

Mapping per format, and why:

* ``amazon`` (a ``*_5.json.gz`` reviews file, 2014 or 2018 release). Each review line
  becomes a ``Purchase`` (no price in reviews) and a ``Review`` (``reviewText`` or ``""``,
  ``summary``, ``overall`` as rating) at ``unixReviewTime``, purchase first: a 5-core
  review is the only evidence of a purchase that the data has. Ids are
  ``az-p-/az-r-<reviewer>-<asin>-<line>``; the line number is in the id because the 2018
  files contain exact duplicate lines (Magazine Subscriptions: 42), which are kept as
  separate events rather than silently dropped: de-duplicating is the job of the split,
  not of the replay. When ``meta_<Name>.json.gz`` sits next to the file, each reviewed
  asin with metadata becomes one ``Item`` (first line wins; repeats are identical) at
  the earliest review time: title (``""`` when the crawl stored an HTML fragment, as for
  most magazines), text = title + description with the markup stripped, categories =
  the category path de-duplicated, price from a plain ``"$12.34"``. The 2014 Musical
  Instruments file has no metadata, so it yields no ``Item`` events.
* ``movielens`` (the ``ml-100k`` folder). ``u.item`` (ISO-8859-1) gives one ``Item`` per
  movie (text = title + " | " + genres, categories = genre names from ``u.genre``),
  ``u.user`` one ``User`` (age, gender, occupation, zip); both at the first rating time.
  Each ``u.data`` row is a ``Purchase`` at its timestamp: there is no text for a
  ``Review``, so the star value is not carried. Timestamps tie heavily within a user,
  hence the file-order tie-break.
* ``ciao`` (the CiaoDVD folder). Each ``movie-ratings.txt`` row is a ``Purchase`` plus a
  ``Review`` with empty text (the text was never released) and the rating, at midnight
  UTC of its date; ids ``ci-p-/ci-r-<reviewID>``. Each movie is an ``Item`` whose category
  is the genre name from the authors' readme (``genre-<id>`` if it cannot be read).
  ``trusts.txt`` edges become ``Follow`` events; they carry no time, so they are placed
  at the first rating time, before all behaviour.
* ``mind`` (the MIND folder). ``news.tsv`` rows are ``Item`` events (title, title +
  abstract as text, category and subcategory). In ``behaviors.tsv`` (times are
  ``M/D/YYYY h:mm:ss AM/PM``, taken as UTC) each impression row is an ``Impression``
  (every shown news id in order, and the clicked ones), followed at the same time by a
  ``Click`` per clicked entry (``N1-1``). History entries have no time: each distinct
  (user, news) becomes one ``Click`` one second before that user's first impression. The
  catalog is placed at the earliest of all these clicks (not the earliest impression),
  so that it still precedes the history clicks.
* ``jsonl`` (a ``.jsonl`` or ``.jsonl.gz`` file of events already in contract form).
  Decoded lazily in **file order, not re-sorted**: the file is taken to be a stream
  someone already ordered (for example one recorded from the topics). An invalid line
  raises ``DatasetError`` naming the file and line.
* ``synthetic`` (no path). A seeded, deterministic generator for demos and tests; every
  id starts with ``syn-`` so it can never be mistaken for real data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Literal, get_args

from state.errors import DatasetError
from state.events import Event

from . import amazon, ciao, jsonl, mind, movielens, synthetic
from ._order import check_limit, ordered, take

SourceFormat = Literal["amazon", "movielens", "ciao", "mind", "jsonl", "synthetic"]
SOURCE_FORMATS: Final[tuple[SourceFormat, ...]] = get_args(SourceFormat)

_READERS: Final[dict[str, Callable[[Path], list[Event]]]] = {
    "amazon": amazon.read,
    "movielens": movielens.read,
    "ciao": ciao.read,
    "mind": mind.read,
}

__all__ = ["SOURCE_FORMATS", "SourceFormat", "read_events"]


def read_events(
    fmt: SourceFormat, path: Path | None, *, limit: int | None = None, seed: int = 7, meta: Path | None = None
) -> Iterator[Event]:
    """The events of dataset ``path`` in format ``fmt``, ordered as the module describes.

    ``path`` is ignored (and may be ``None``) for ``synthetic``, which uses ``seed``. ``meta``
    (``amazon`` only) names the metadata file when it does not sit beside the reviews.
    Errors about the arguments or a missing path are raised at the call; a bad record
    is a :class:`state.errors.DatasetError` naming its file and line (as is a missing
    file or folder, or a format that needs a path); a negative ``limit`` is a ``ValueError``.
    """
    check_limit(limit)
    if meta is not None and fmt != "amazon":
        raise DatasetError(f"a metadata file is an amazon option, not one of format {fmt!r}")
    if fmt == "synthetic":
        return ordered(synthetic.generate(seed), limit)
    if path is None:
        raise DatasetError(f"format {fmt!r} needs a path")
    path = Path(path)
    if fmt == "jsonl":
        return take(jsonl.read(path), limit)
    if meta is not None:
        return ordered(amazon.read(path, Path(meta)), limit)
    reader = _READERS.get(fmt)
    if reader is None:
        raise DatasetError(f"unknown source format {fmt!r}; expected one of {SOURCE_FORMATS}")
    return ordered(reader(path), limit)
