"""Amazon 5-core reviews (2014 and 2018 releases) as Purchase + Review, and Item from metadata."""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path

import msgspec

from state.errors import DatasetError
from state.events import Event, Item, Purchase, Review

from ._order import MAX_CATEGORY, MAX_SUMMARY, MAX_TEXT, MAX_TITLE, clip, open_binary


class _ReviewLine(msgspec.Struct):
    reviewerID: str
    asin: str
    overall: float
    unixReviewTime: int
    # 2018 files omit reviewText on a handful of rows.
    reviewText: str = ""
    summary: str = ""


class _MetaLine(msgspec.Struct):
    asin: str
    title: str = ""
    # 2018 ships a list of paragraphs, 2014 a single string.
    description: list[str] | str = []
    category: list[str] = []
    categories: list[list[str]] = []  # the 2014 spelling: several category paths
    price: str | float | None = None


_review_decoder = msgspec.json.Decoder(_ReviewLine)
_meta_decoder = msgspec.json.Decoder(_MetaLine)

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Only a plain "$12.34" is a price; a "$10 - $20" range or crawl junk is not one number.
_PRICE = re.compile(r"\$\s*(\d[\d,]*(?:\.\d+)?)")


def read(path: Path, meta: Path | None = None) -> list[Event]:
    """The events of one ``*_5.json.gz`` reviews file, in source order (not yet sorted); the
    catalog from ``meta`` when given, else from the metadata file beside it (:func:`meta_path`)."""
    if meta is not None and not meta.is_file():
        raise DatasetError(f"amazon: metadata file not found: {meta}")
    if not path.is_file():
        raise DatasetError(f"amazon: reviews file not found: {path}")
    events: list[Event] = []
    asins: set[str] = set()
    min_ts: float | None = None
    with open_binary(path) as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = _review_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                raise DatasetError(f"{path}:{line_no}: invalid review line: {exc}") from exc
            ts = float(row.unixReviewTime)
            min_ts = ts if min_ts is None or ts < min_ts else min_ts
            asins.add(row.asin)
            # The line number keeps ids unique: the 2018 files repeat whole review lines.
            suffix = f"{row.reviewerID}-{row.asin}-{line_no}"
            events.append(
                Purchase(event_id=f"az-p-{suffix}", ts=ts, user_id=row.reviewerID, item_id=row.asin)
            )
            events.append(
                Review(
                    event_id=f"az-r-{suffix}",
                    ts=ts,
                    user_id=row.reviewerID,
                    item_id=row.asin,
                    text=clip(row.reviewText, MAX_TEXT),
                    summary=clip(row.summary, MAX_SUMMARY),
                    rating=row.overall,
                )
            )
    meta = meta if meta is not None else meta_path(path)
    if meta is not None and min_ts is not None:
        events.extend(_items(meta, asins, min_ts))
    return events


def meta_path(reviews: Path) -> Path | None:
    """``meta_<Name>.json.gz`` next to ``[reviews_]<Name>_5.json.gz``, if it exists."""
    name = reviews.name
    for suffix in ("_5.json.gz", "_5.json"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        return None
    stem = stem.removeprefix("reviews_")
    for candidate in (f"meta_{stem}.json.gz", f"meta_{stem}.json"):
        meta = reviews.with_name(candidate)
        if meta.is_file():
            return meta
    return None


def _decode_meta(raw: bytes, path: Path, line_no: int) -> _MetaLine:
    try:
        return _meta_decoder.decode(raw)
    except msgspec.DecodeError:
        pass
    # The 2014 metadata files are Python literals (single quotes), not JSON.
    try:
        return msgspec.convert(ast.literal_eval(raw.decode("utf-8")), _MetaLine)
    except (ValueError, SyntaxError, msgspec.ValidationError) as exc:
        raise DatasetError(f"{path}:{line_no}: invalid metadata line: {exc}") from exc


def _items(path: Path, wanted: set[str], ts: float) -> list[Event]:
    items: list[Event] = []
    seen: set[str] = set()
    with open_binary(path) as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            meta = _decode_meta(raw, path, line_no)
            # Repeats in the metadata are byte-identical (2018 Magazine), so first wins.
            if meta.asin not in wanted or meta.asin in seen:
                continue
            seen.add(meta.asin)
            items.append(_item(meta, ts))
    return items


def _item(meta: _MetaLine, ts: float) -> Item:
    title = clean_title(meta.title)
    paragraphs = [meta.description] if isinstance(meta.description, str) else meta.description
    description = " ".join(p for p in (strip_html(d) for d in paragraphs) if p)
    text = " ".join(part for part in (title, description) if part)
    paths = [meta.category] if meta.category else meta.categories
    return Item(
        event_id=f"az-i-{meta.asin}",
        ts=ts,
        item_id=meta.asin,
        title=clip(title, MAX_TITLE),
        text=clip(text, MAX_TEXT),
        categories=_categories(paths),
        price=parse_price(meta.price),
    )


def clean_title(title: str) -> str:
    """The title, or ``""`` when the crawl stored an HTML fragment instead (2018 Magazine)."""
    title = title.strip()
    return "" if title.startswith("<") else html.unescape(title)


def strip_html(text: str) -> str:
    """Markup removed, entities decoded, whitespace collapsed."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def _categories(paths: list[list[str]]) -> list[str]:
    out: list[str] = []
    for path in paths:
        for raw in path:
            name = clip(html.unescape(raw).strip(), MAX_CATEGORY)
            if name and name not in out:
                out.append(name)
    return out


def parse_price(value: str | float | None) -> float | None:
    """A price from ``"$12.34"`` / ``"$1,299.00"`` (or a bare number); ``None`` otherwise."""
    if value is None:
        return None
    if isinstance(value, float):
        return value if value >= 0.0 else None
    match = _PRICE.fullmatch(value.strip())
    return float(match.group(1).replace(",", "")) if match else None
