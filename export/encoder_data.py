"""Point-in-time training pairs for the text encoder, read from the event stream (no torch).

A pair is (what the user's history says, in text) -> (the text of the item they engage with
next), both as they stood *before* that engagement:

- the query is the user's last ``history`` texts, newest first: their own review texts, and
  for a click or purchase without text the engaged item's text at that time;
- the positive is the next item's catalog text (``Item.text``) when the stream has one, else
  the newest earlier review of that item by someone else (Amazon 5-core has no catalog: an
  item is known by what others wrote about it, which is also what its interest vector is
  made of in the worker);
- only a user's first engagement with an item makes a pair (a review after the purchase of
  the same item would find the item's text in its own query);
- only engagements whose position lies in the training window make pairs, and every text
  used was on the stream before them. Nothing later can reach a pair (the leakage test).

Reviews with stars in the window also come back as (text, stars): the sentiment objective
during fine-tuning, and the data the exported head is fitted on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from state.events import Click, Event, Item, Purchase, Review, encoder_text

#: Texts of the user's history joined into one query (newest first).
HISTORY = 3
#: A query is cut here (the encoder truncates at its max length anyway).
QUERY_CHARS = 1_200


@dataclass
class EncoderPairs:
    queries: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    #: the positive's item id: two pairs of one item in a batch are not each other's negatives
    items: list[str] = field(default_factory=list)
    #: replay position of each pair's engagement
    positions: list[int] = field(default_factory=list)
    #: (review text, stars) of the rated reviews in the window
    rated: list[tuple[str, float]] = field(default_factory=list)


def _text(review: Review) -> str:
    return encoder_text(review.summary.strip(), review.text.strip())


def pairs_from(
    events: Sequence[Event], window: tuple[float, float], *, history: int = HISTORY, limit: int | None = None
) -> EncoderPairs:
    """Pairs from the engagements at replay positions ``[a·n, b·n)`` (see the module doc).
    ``limit``: keep at most that many, evenly spread over the window (deterministic)."""
    start, end = int(window[0] * len(events)), int(window[1] * len(events))
    out = EncoderPairs()
    catalog: dict[str, str] = {}
    latest_review: dict[str, tuple[str, str]] = {}  # item -> (author, text)
    past: dict[str, deque[str]] = {}
    engaged: set[tuple[str, str]] = set()
    for position, event in enumerate(events[:end]):
        if isinstance(event, Item):
            if event.text.strip():
                catalog[event.item_id] = event.text
            continue
        if not isinstance(event, Click | Purchase | Review):
            continue
        user, item = event.user_id, event.item_id
        own = _text(event) if isinstance(event, Review) and event.text.strip() else ""
        # The item's text as it stood before this event.
        target = catalog.get(item, "")
        if not target:
            prior = latest_review.get(item)
            if prior is not None and prior[0] != user:
                target = prior[1]
        seen = past.get(user)
        # Only a first engagement makes a pair: the review that follows a purchase of the same
        # item would find that item's text already in its own history.
        first = (user, item) not in engaged
        engaged.add((user, item))
        if first and position >= start and seen and target:
            out.queries.append(" | ".join(reversed(seen))[:QUERY_CHARS])
            out.positives.append(target)
            out.items.append(item)
            out.positions.append(position)
        if position >= start and isinstance(event, Review) and own and event.rating is not None:
            out.rated.append((own, float(event.rating)))
        # Then the event joins the history.
        if seen is None:
            seen = past[user] = deque(maxlen=history)
        mine = own or (target if first else "")
        if mine:
            seen.append(mine)
        if own:
            latest_review[item] = (user, own)
    if limit is not None and len(out.queries) > limit:
        step = len(out.queries) / limit
        keep = [int(i * step) for i in range(limit)]
        out.queries = [out.queries[i] for i in keep]
        out.positives = [out.positives[i] for i in keep]
        out.items = [out.items[i] for i in keep]
        out.positions = [out.positions[i] for i in keep]
    return out
