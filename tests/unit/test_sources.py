"""Dataset readers: counts and contents checked against the raw files, read independently here."""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import gzip
import html
import json
import os
import re
from collections import Counter
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import msgspec
import pytest

from state.errors import DatasetError
from state.events import (
    EVENT_TYPES,
    Click,
    DeadLetter,
    Event,
    EventKind,
    Follow,
    Impression,
    Item,
    Purchase,
    Review,
    User,
    decode,
    encode,
    key_of,
)
from stream_app.settings import DEFAULT_DATA_DIR
from stream_app.sources import SourceFormat, read_events

DATA_DIR = Path(os.environ.get("PERSONA_DATA_DIR") or DEFAULT_DATA_DIR)

AMAZON_2014 = (
    DATA_DIR / "amazon2014-musical-instruments-5core" / "reviews_Musical_Instruments_5.json.gz"
)
AMAZON_2018 = DATA_DIR / "amazon2018-small-5core"
GIFT_CARDS = AMAZON_2018 / "Gift_Cards_5.json.gz"
MAGAZINES = AMAZON_2018 / "Magazine_Subscriptions_5.json.gz"
MOVIELENS = DATA_DIR / "movielens-100k"
CIAO = DATA_DIR / "ciaodvd"
MIND = DATA_DIR / "mind-small-sample"

REAL = [
    ("amazon", AMAZON_2014),
    ("amazon", GIFT_CARDS),
    ("amazon", MAGAZINES),
    ("movielens", MOVIELENS),
    ("ciao", CIAO),
    ("mind", MIND),
]
BEHAVIOUR = (Click, Purchase, Review)
KIND_OF: dict[type[Event], EventKind] = {cls: kind for kind, cls in EVENT_TYPES.items()}
HTML_TAG = re.compile(r"<[a-zA-Z/][^>]*>")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"dataset not available: {path}")
    return path


@lru_cache(maxsize=None)
def events_of(fmt: SourceFormat, path: Path) -> tuple[Event, ...]:
    return tuple(read_events(fmt, need(path)))


def kinds(events: tuple[Event, ...]) -> Counter[str]:
    return Counter(type(e).__name__ for e in events)


def raw_json_lines(path: Path) -> list[dict[str, object]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def assert_time_ordered(events: tuple[Event, ...] | list[Event]) -> None:
    stamps = [e.ts for e in events]
    assert all(a <= b for a, b in pairwise(stamps))


# --- every real dataset ---------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "path"), REAL, ids=[p.name for _, p in REAL])
def test_real_events_honour_the_contract_and_order(fmt: SourceFormat, path: Path) -> None:
    events = events_of(fmt, path)
    assert events
    assert_time_ordered(events)
    assert len({e.event_id for e in events}) == len(events)
    for event in events:
        decoded = decode(KIND_OF[type(event)], key_of(event).encode(), encode(event))
        assert not isinstance(decoded, DeadLetter), (event.event_id, decoded)
        assert decoded == event


@pytest.mark.parametrize(("fmt", "path"), REAL, ids=[p.name for _, p in REAL])
def test_replay_is_identical(fmt: SourceFormat, path: Path) -> None:
    first = events_of(fmt, path)
    again = list(read_events(fmt, need(path)))
    assert [encode(e) for e in again] == [encode(e) for e in first]


# --- amazon ---------------------------------------------------------------------------


def test_amazon_2014_one_purchase_and_one_review_per_line() -> None:
    events = events_of("amazon", AMAZON_2014)
    rows = raw_json_lines(AMAZON_2014)
    assert len(rows) == 10_261
    assert kinds(events) == {"Purchase": len(rows), "Review": len(rows)}  # no metadata: no Item

    reviews = {e.event_id: e for e in events if isinstance(e, Review)}
    position = {e.event_id: n for n, e in enumerate(events)}
    for line_no, row in enumerate(rows, 1):
        suffix = f"{row['reviewerID']}-{row['asin']}-{line_no}"
        review = reviews[f"az-r-{suffix}"]
        assert review.rating == row["overall"]
        assert review.ts == row["unixReviewTime"]
        assert (review.user_id, review.item_id) == (row["reviewerID"], row["asin"])
        assert review.summary == row["summary"]
        assert review.text == row.get("reviewText", "")
        assert position[f"az-p-{suffix}"] < position[f"az-r-{suffix}"]


def _meta_asins(meta: Path) -> dict[str, str]:
    titles: dict[str, str] = {}
    for row in raw_json_lines(meta):
        titles.setdefault(str(row["asin"]), str(row.get("title", "")))
    return titles


@pytest.mark.parametrize("reviews", [GIFT_CARDS, MAGAZINES], ids=["gift_cards", "magazines"])
def test_amazon_2018_items_for_every_reviewed_asin_with_metadata(reviews: Path) -> None:
    events = events_of("amazon", reviews)
    rows = raw_json_lines(reviews)
    name = reviews.name.removesuffix("_5.json.gz")
    meta = _meta_asins(need(AMAZON_2018 / f"meta_{name}.json.gz"))
    reviewed = {str(r["asin"]) for r in rows}

    items = [e for e in events if isinstance(e, Item)]
    assert len(items) == len({i.item_id for i in items})
    assert {i.item_id for i in items} == reviewed & meta.keys()
    # Exact duplicate review lines (2018 Magazine has 42) are still one event pair each.
    assert kinds(events)["Purchase"] == kinds(events)["Review"] == len(rows)

    first_review = min(int(str(r["unixReviewTime"])) for r in rows)
    assert all(isinstance(e, Item) for e in events[: len(items)])  # catalog first
    for item in items:
        assert item.ts == first_review
        raw_title = meta[item.item_id].strip()
        assert item.title == ("" if raw_title.startswith("<") else html.unescape(raw_title))
        assert not HTML_TAG.search(item.text)
        assert all(c and "&amp;" not in c for c in item.categories)
        if item.title:
            assert item.text.startswith(item.title)


def test_amazon_gift_card_titles_are_clean_and_prices_parsed() -> None:
    items = [e for e in events_of("amazon", GIFT_CARDS) if isinstance(e, Item)]
    assert items and all(i.title for i in items)
    meta = {str(r["asin"]): r for r in raw_json_lines(AMAZON_2018 / "meta_Gift_Cards.json.gz")}
    for item in items:
        raw = str(meta[item.item_id].get("price", ""))
        if raw.startswith("$") and " " not in raw:
            assert item.price == float(raw[1:].replace(",", ""))
        elif not raw:
            assert item.price is None


# --- movielens ------------------------------------------------------------------------


def test_movielens_counts_and_tie_break() -> None:
    events = events_of("movielens", MOVIELENS)
    data_lines = (MOVIELENS / "u.data").read_text().splitlines()
    n_items = len((MOVIELENS / "u.item").read_text(encoding="latin-1").splitlines())
    n_users = len((MOVIELENS / "u.user").read_text().splitlines())
    assert (len(data_lines), n_items, n_users) == (100_000, 1_682, 943)
    assert kinds(events) == {"Purchase": 100_000, "Item": n_items, "User": n_users}

    # The catalog and the users come first, then ratings ordered by (ts, line in u.data).
    assert all(isinstance(e, Item) for e in events[:n_items])
    assert all(isinstance(e, User) for e in events[n_items : n_items + n_users])
    line_of = {}
    for line_no, line in enumerate(data_lines):
        user, item, _, stamp = line.split("\t")
        line_of[f"ml-r-{user}-{item}"] = (int(stamp), line_no)
    ratings = [e for e in events if isinstance(e, Purchase)]
    keys = [line_of[e.event_id] for e in ratings]
    assert keys == sorted(keys)
    assert sum(1 for a, b in pairwise(keys) if a[0] == b[0]) > 0  # ties really occur
    assert all(e.ts == k[0] for e, k in zip(ratings, keys, strict=True))


def test_movielens_items_and_users_content() -> None:
    events = events_of("movielens", MOVIELENS)
    genres = [ln.split("|")[0] for ln in (MOVIELENS / "u.genre").read_text().splitlines() if ln]
    items = {e.item_id: e for e in events if isinstance(e, Item)}
    for line in (MOVIELENS / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        expected = [g for g, flag in zip(genres, fields[5:], strict=True) if flag == "1"]
        assert items[fields[0]].title == fields[1].strip()  # a few raw titles end in a space
        assert items[fields[0]].categories == expected
    users = {e.user_id: e for e in events if isinstance(e, User)}
    for line in (MOVIELENS / "u.user").read_text().splitlines():
        uid, age, gender, occupation, zip_code = line.split("|")
        expected_attributes = {"age": int(age), "gender": gender, "occupation": occupation}
        assert users[uid].attributes == {**expected_attributes, "zip": zip_code}


# --- ciao -----------------------------------------------------------------------------


def test_ciao_counts_and_follows_before_behaviour() -> None:
    events = events_of("ciao", CIAO)
    with (CIAO / "movie-ratings.txt").open() as fh:
        ratings = list(csv.reader(fh))
    with (CIAO / "trusts.txt").open() as fh:
        trusts = list(csv.reader(fh))
    counts = kinds(events)
    assert counts["Purchase"] == counts["Review"] == len(ratings)
    assert counts["Follow"] == len(trusts)
    assert counts["Item"] == len({r[1] for r in ratings})

    first_behaviour = next(n for n, e in enumerate(events) if isinstance(e, BEHAVIOUR))
    assert all(not isinstance(e, (Follow, Item)) for e in events[first_behaviour:])

    reviews = {e.event_id: e for e in events if isinstance(e, Review)}
    for user, movie, _genre, review_id, stars, day in ratings[:: len(ratings) // 500]:
        review = reviews[f"ci-r-{review_id}"]
        assert (review.user_id, review.item_id, review.rating) == (user, movie, float(stars))
        assert review.ts == calendar.timegm(dt.date.fromisoformat(day).timetuple())
    follows = {e.event_id for e in events if isinstance(e, Follow)}
    assert follows == {f"ci-f-{a}-{b}" for a, b, _ in trusts}


def test_ciao_items_use_the_readme_genre_names() -> None:
    items = [e for e in events_of("ciao", CIAO) if isinstance(e, Item)]
    names = Counter(c for i in items for c in i.categories)
    assert len(names) <= 17
    assert "Action & Adventure" in names and "Anime" in names


# --- mind -----------------------------------------------------------------------------


def test_mind_clicks_and_impressions_match_the_raw_entries() -> None:
    events = events_of("mind", MIND)
    clicked = 0
    history: set[tuple[str, str]] = set()
    raw_impressions: dict[str, tuple[str, list[str], list[str]]] = {}
    with (MIND / "behaviors.tsv").open(encoding="utf-8") as fh:
        for line in fh:
            imp_id, user, _, hist, entries = line.rstrip("\n").split("\t")
            clicked += sum(1 for entry in entries.split() if entry.endswith("-1"))
            history.update((user, news) for news in hist.split())
            shown = [e.rsplit("-", 1)[0] for e in entries.split()]
            raw_impressions[imp_id] = (user, shown, [e.rsplit("-", 1)[0] for e in entries.split() if e.endswith("-1")])
    n_news = len((MIND / "news.tsv").read_text(encoding="utf-8").splitlines())

    clicks = [e for e in events if isinstance(e, Click)]
    assert sum(1 for c in clicks if c.event_id.startswith("mi-c-")) == clicked
    assert {(c.user_id, c.item_id) for c in clicks if c.event_id.startswith("mi-h-")} == history
    assert kinds(events) == {"Item": n_news, "Click": clicked + len(history), "Impression": len(raw_impressions)}
    assert all(isinstance(e, Item) for e in events[:n_news])  # catalog before history clicks
    # Every impression row, shown and clicked entries in order, before its own clicks.
    position = {e.event_id: n for n, e in enumerate(events)}
    for e in events:
        if isinstance(e, Impression):
            user, shown, hit = raw_impressions[e.event_id.removeprefix("mi-s-")]
            assert (e.user_id, e.items, e.clicked) == (user, shown, hit)
            imp_id = e.event_id.removeprefix("mi-s-")
            assert all(position[e.event_id] < position[f"mi-c-{imp_id}-{n}"] for n in hit)

    first_impression: dict[str, float] = {}
    for c in clicks:
        if c.event_id.startswith("mi-c-"):
            first_impression.setdefault(c.user_id, c.ts)
    for c in clicks:
        if c.event_id.startswith("mi-h-") and c.user_id in first_impression:
            assert c.ts < first_impression[c.user_id]


# --- jsonl ----------------------------------------------------------------------------

SAMPLE: list[Event] = [
    Review(event_id="r1", ts=30.0, user_id="u1", item_id="i1", text="fine", rating=4.0),
    Item(event_id="i1", ts=10.0, item_id="i1", title="Thing", categories=["a"]),
    Click(event_id="c1", ts=20.0, user_id="u1", item_id="i1"),
    Follow(event_id="f1", ts=5.0, user_id="u1", followee_id="u2"),
    User(event_id="us1", ts=1.0, user_id="u1", attributes={"age": 30}),
    Purchase(event_id="p1", ts=40.0, user_id="u1", item_id="i1", price=9.5, quantity=2),
]


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
def test_jsonl_round_trip_keeps_file_order(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    payload = b"".join(encode(e) + b"\n" for e in SAMPLE) + b"\n"
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    assert list(read_events("jsonl", path)) == SAMPLE
    assert list(read_events("jsonl", path, limit=2)) == SAMPLE[:2]


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json",
        b'{"type": "click", "event_id": "x", "ts": 1.0}',  # no user_id / item_id
        b'{"type": "nope", "event_id": "x"}',
        b'{"type": "review", "event_id": "x", "ts": 1, "user_id": "u", "item_id": "i",'
        b' "text": "", "rating": 9}',
    ],
)
def test_jsonl_bad_line_names_the_line(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(encode(SAMPLE[0]) + b"\n" + encode(SAMPLE[1]) + b"\n" + bad + b"\n")
    events = read_events("jsonl", path)
    assert next(events) == SAMPLE[0]
    with pytest.raises(DatasetError, match=r"bad\.jsonl:3: invalid event"):
        list(events)


def test_jsonl_missing_file_fails_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        read_events("jsonl", tmp_path / "absent.jsonl")


# --- synthetic ------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_labelled() -> None:
    events = list(read_events("synthetic", None, seed=3))
    wire = [encode(e) for e in events]
    assert wire == [encode(e) for e in read_events("synthetic", None, seed=3)]
    assert wire != [encode(e) for e in read_events("synthetic", None, seed=4)]
    assert_time_ordered(events)
    assert len({e.event_id for e in events}) == len(events)
    for event in events:
        raw = msgspec.json.decode(encode(event))
        ids = [v for k, v in raw.items() if k.endswith("_id")]
        ids += raw.get("categories", [])
        assert ids and all(str(v).startswith("syn-") for v in ids)
        decoded = decode(KIND_OF[type(event)], key_of(event).encode(), encode(event))
        assert not isinstance(decoded, DeadLetter)

    counts = kinds(tuple(events))
    assert (counts["Item"], counts["User"], counts["Follow"]) == (50, 200, 300)
    behaviour = counts["Click"] + counts["Purchase"] + counts["Review"]
    assert behaviour == 5_000
    assert 0.65 < counts["Click"] / behaviour < 0.75
    assert 0.15 < counts["Purchase"] / behaviour < 0.25
    assert events[0].ts == 1_700_000_000
    assert all(p.price is not None for p in events if isinstance(p, Purchase))


def test_synthetic_popularity_is_skewed() -> None:
    events = list(read_events("synthetic", None))
    per_item = Counter(e.item_id for e in events if isinstance(e, BEHAVIOUR))
    top5 = sum(n for _, n in per_item.most_common(5))
    assert top5 > 0.3 * sum(per_item.values())  # uniform would give 10%


# --- limit and arguments --------------------------------------------------------------


def test_limit_caps_after_ordering() -> None:
    full = list(read_events("synthetic", None))
    assert list(read_events("synthetic", None, limit=260)) == full[:260]
    assert list(read_events("synthetic", None, limit=0)) == []
    assert len(list(read_events("synthetic", None, limit=10**9))) == len(full)
    with pytest.raises(ValueError):
        read_events("synthetic", None, limit=-1)


def test_limit_on_real_data() -> None:
    events = list(read_events("movielens", need(MOVIELENS), limit=1_700))
    assert len(events) == 1_700
    assert events == list(events_of("movielens", MOVIELENS)[:1_700])
    assert kinds(tuple(events)) == {"Item": 1_682, "User": 18}


def test_a_path_is_required_for_real_formats() -> None:
    with pytest.raises(DatasetError, match="needs a path"):
        read_events("movielens", None)
