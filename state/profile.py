"""The user profile and the one pure function that changes it.

Idempotency scheme
------------------
Each profile remembers, for every input ``topic:partition`` that has touched it, the
offset of the last event it applied (the *watermark*). A user's events in one
partition arrive in offset order, so after a crash or rebalance any event at or below
the watermark is a replay and is skipped: exactly once per Kafka record, with at most
one integer per input topic per user (the user key fixes the partition). Producers
that resend the same logical event as a new record are caught by a bounded ring of the
last ``dedupe_window`` event ids (32 by default, about 1 KiB per user).

Out-of-order events (event time older than what the profile has seen) are applied,
not dropped: decayed sums are kept at a reference time and an old event adds its
weight decayed to that reference (see :mod:`state.decay`), so the profile depends only
on the set of events applied, never on their arrival order. Recency fields take the
maximum event time. One exception, past any shipped dataset's users: a user's maps of items
and accounts keep their ``MAX_ENTRIES`` latest whatever the order, but which older entries
they still hold between two cuts depends on it (:func:`bound`).
"""

from __future__ import annotations

from typing import Final

import msgspec
import numpy as np

from state.decay import SECONDS_PER_DAY, factor, weight_at
from state.events import AttributeValue, Click, Erasure, Event, Follow, Item, Purchase, Review, User, kind_of
from state.interest import INTEREST_WEIGHTS, Interest, ItemVector, add_sentiment, add_vector, blend_sentiment

#: Default weight of one event in the category affinity (split evenly over the item's
#: categories) and in item popularity; ``PERSONA_EVENT_WEIGHTS`` overrides it.
EVENT_WEIGHTS: Final[dict[str, float]] = {"click": 1.0, "purchase": 3.0, "review": 2.0}
#: Default multiplier of a review's weight by its stars (rounded); ``PERSONA_RATING_WEIGHTS``
#: overrides it. 1.0 everywhere: stars then count only through the sentiment dimension.
RATING_WEIGHTS: Final[dict[int, float]] = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}
#: Clicks remembered per user (for excluding clicked items): clicks are many and cheap, so
#: the oldest are forgotten rather than letting a profile grow without bound.
CLICK_MEMORY: Final = 200
#: Latest entries by event time that each of ``purchased``, ``reviewed`` (and its ``disliked``),
#: ``following`` and ``unfollowed`` always keeps (:func:`bound`; see :mod:`state.bounds`): above
#: any user of the shipped datasets. A map holds at most twice this: 8,192 ids of 20 bytes are
#: ~240 KB of a profile.
MAX_ENTRIES: Final = 4_096
#: A review whose sentiment (text blended with stars, in [-1, 1]) is at most this is a
#: dislike: two stars are -0.5, three are 0.
DISLIKE_AT: Final = -0.25


class Origin(msgspec.Struct, frozen=True):
    """Where an event came from: the coordinates the idempotency watermark uses. A record of
    one event is event 0 of 1; a batch record (:mod:`state.batch`) holds events 0 to ``of - 1``
    at one offset."""

    topic: str
    partition: int
    offset: int
    index: int = 0
    of: int = 1

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}"


def seen(offset: int, index: int, watermark: int, watermark_index: int | None) -> bool:
    """Whether event ``index`` of the record at ``offset`` is at or below a watermark: the last
    record applied (``watermark``) and, while that record is a batch not yet applied to its end,
    the index of its last event applied (``watermark_index``; None: the whole record). Events
    of one source arrive in (offset, index) order, so at or below means a replay."""
    if offset != watermark:
        return offset < watermark
    return watermark_index is None or index <= watermark_index


def advance(applied: dict[str, int], applied_index: dict[str, int], source: str, offset: int, index: int, of: int) -> None:
    """Move ``source``'s watermark to event ``index`` of ``of`` at ``offset`` (see :func:`seen`).
    The index is kept only until the record's last event: a finished batch weighs what a record
    of one event does."""
    applied[source] = offset
    if index < of - 1:
        applied_index[source] = index
    elif applied_index:
        applied_index.pop(source, None)


class Params(msgspec.Struct, frozen=True):
    """The knobs of the profile math (from settings)."""

    half_life_days: float = 30.0
    dedupe_window: int = 32
    #: behaviour weight per event kind (affinity and popularity)
    event_weights: dict[str, float] = msgspec.field(default_factory=lambda: dict(EVENT_WEIGHTS))
    #: multiplier of a review's weight by its rounded stars
    rating_weights: dict[int, float] = msgspec.field(default_factory=lambda: dict(RATING_WEIGHTS))

    def weight(self, event: Event) -> float:
        """The behaviour weight of ``event``: its kind's weight, times its stars' band for a
        rated review; 0 for kinds that carry no engagement (follows, attributes)."""
        w = self.event_weights.get(kind_of(event), 0.0)
        if isinstance(event, Review) and event.rating is not None:
            w *= self.rating_weights.get(round(event.rating), 1.0)
        return w

    @property
    def half_life_s(self) -> float:
        return self.half_life_days * SECONDS_PER_DAY


#: Frozen, so one shared default is safe.
DEFAULT_PARAMS: Final = Params()


class Profile(msgspec.Struct, kw_only=True):
    """One user's profile. Mutable on purpose: :func:`apply` copies before it changes it."""

    user_id: str
    #: Number of events applied; consumers use it to order recommendation messages.
    version: int = 0
    first_event_ts: float | None = None
    last_event_ts: float = 0.0
    # behaviour
    counts: dict[str, int] = {}
    affinity_ref_ts: float = 0.0
    #: category -> decayed engagement weight at ``affinity_ref_ts``
    affinity: dict[str, float] = {}
    #: event kind -> latest event time of that kind
    recency: dict[str, float] = {}
    purchase_value: float = 0.0
    #: item -> latest purchase time; drives "never recommend what was bought"
    purchased: dict[str, float] = {}
    #: item -> latest click time, the ``CLICK_MEMORY`` latest only (``exclude_clicked``)
    clicked: dict[str, float] = {}
    #: item -> time of the user's latest review of it
    reviewed: dict[str, float] = {}
    #: item -> time of the user's latest review of it, when that review was negative
    #: (sentiment at most ``DISLIKE_AT``): the ranker demotes what is close to these
    disliked: dict[str, float] = {}
    rating_sum: float = 0.0
    rating_count: int = 0
    # attributes and social
    attributes: dict[str, AttributeValue] = {}
    following: dict[str, float] = {}
    #: followee -> time of the latest unfollow (a tombstone, so a late follow cannot resurrect it)
    unfollowed: dict[str, float] = {}
    #: attribute -> event time of its current value
    attribute_ts: dict[str, float] = {}
    # language-model dimensions (state.interest)
    interest: Interest | None = None
    sentiment_ref_ts: float = 0.0
    #: category (and "*" overall) -> [decayed sentiment sum, decayed weight]
    sentiment: dict[str, list[float]] = {}
    # bookkeeping
    applied: dict[str, int] = {}
    #: source -> index of the last event applied of the batch record at ``applied[source]``,
    #: while that batch is applied only in part (:func:`seen`)
    applied_index: dict[str, int] = {}
    recent_ids: list[str] = []

    def affinity_at(self, ts: float, params: Params) -> dict[str, float]:
        """Category affinities decayed to ``ts`` (ts >= ``affinity_ref_ts``)."""
        f = factor(max(0.0, ts - self.affinity_ref_ts), params.half_life_s)
        return {c: v * f for c, v in self.affinity.items()}


def keep_latest(entries: dict[str, float], n: int) -> list[str]:
    """Drop all but the ``n`` latest entries of ``entries`` (key -> event time; of equal times
    the larger key stays) and return the dropped keys. Keeping the latest ``n`` does not depend
    on the order entries arrived in: a dropped entry that comes back with an older time is
    dropped again."""
    if len(entries) <= n:
        return []
    if len(entries) == n + 1:  # one insert over the bound, the common case: no sort
        gone = [min(entries.items(), key=lambda kv: (kv[1], kv[0]))[0]]
    else:
        gone = [k for k, _ in sorted(entries.items(), key=lambda kv: (kv[1], kv[0]))[: len(entries) - n]]
    for k in gone:
        del entries[k]
    return gone


def bound(entries: dict[str, float], n: int) -> list[str]:
    """At ``2 n`` entries, cut ``entries`` to its ``n`` latest (:func:`keep_latest`); returns
    the dropped keys. One sort per ``n`` inserts: an exact bound sought the oldest of ``n``
    entries at every insert (0.6 ms an event at 4,096 follows). The ``n`` latest are kept
    whatever order the entries arrived in (a dropped entry had ``n`` later ones, which stay
    later); which older ones are still there until the next cut depends on that order."""
    return keep_latest(entries, n) if len(entries) >= 2 * n else []


def new_profile(user_id: str) -> Profile:
    return Profile(user_id=user_id)


def is_duplicate(profile: Profile, event: Event, origin: Origin | None) -> bool:
    """Whether ``event`` (read at ``origin``) was already applied to ``profile``."""
    if origin is not None and seen(
        origin.offset, origin.index, profile.applied.get(origin.source, -1), profile.applied_index.get(origin.source)
    ):
        return True
    return event.event_id in profile.recent_ids


def _copy(profile: Profile) -> Profile:
    # The dicts are flat, so one level of copying is a full copy.
    return msgspec.structs.replace(
        profile,
        counts=dict(profile.counts),
        affinity=dict(profile.affinity),
        recency=dict(profile.recency),
        purchased=dict(profile.purchased),
        clicked=dict(profile.clicked),
        reviewed=dict(profile.reviewed),
        disliked=dict(profile.disliked),
        attributes=dict(profile.attributes),
        following=dict(profile.following),
        unfollowed=dict(profile.unfollowed),
        attribute_ts=dict(profile.attribute_ts),
        sentiment={k: list(v) for k, v in profile.sentiment.items()},
        applied=dict(profile.applied),
        applied_index=dict(profile.applied_index),
        recent_ids=list(profile.recent_ids),
    )


def _add_affinity(p: Profile, categories: tuple[str, ...], weight: float, ts: float, hl: float) -> None:
    if not categories or weight == 0.0:
        return
    if ts > p.affinity_ref_ts:
        if p.affinity:
            f = factor(ts - p.affinity_ref_ts, hl)
            for c in p.affinity:
                p.affinity[c] *= f
        p.affinity_ref_ts = ts
    share = weight_at(weight / len(categories), ts, p.affinity_ref_ts, hl)
    for c in categories:
        p.affinity[c] = p.affinity.get(c, 0.0) + share


class Encoding(msgspec.Struct, frozen=True):
    """What the encoder made of a review's text (absent when no model is loaded)."""

    version: str
    #: float32 little-endian bytes, L2-normalised
    vector: bytes
    text_sentiment: float


def _apply_language(
    p: Profile, event: Review, categories: tuple[str, ...], encoding: Encoding | None, hl: float
) -> None:
    text_sentiment = None
    if encoding is not None:
        vec = np.frombuffer(encoding.vector, dtype="<f4")
        p.interest = add_vector(p.interest, vec, encoding.version, INTEREST_WEIGHTS["review"], event.ts, hl)
        text_sentiment = encoding.text_sentiment
    value = blend_sentiment(text_sentiment, event.rating)
    if value is not None:
        p.sentiment_ref_ts = add_sentiment(p.sentiment, p.sentiment_ref_ts, categories, value, event.ts, hl)
    # The latest review of an item decides, by event time, whatever order they arrive in: a
    # later good review lifts a dislike, an older bad one arriving late does not return. A
    # review with neither stars nor an encoded text (no model loaded) is remembered too (the
    # worker judges a first engagement by it) and, as the latest, says no dislike.
    if event.ts >= p.reviewed.get(event.item_id, float("-inf")):
        p.reviewed[event.item_id] = event.ts
        if value is not None and value <= DISLIKE_AT:
            p.disliked[event.item_id] = event.ts
        else:
            p.disliked.pop(event.item_id, None)
        for item in bound(p.reviewed, MAX_ENTRIES):
            p.disliked.pop(item, None)


def apply(
    profile: Profile,
    event: Event,
    *,
    origin: Origin | None,
    categories: tuple[str, ...] = (),
    params: Params = DEFAULT_PARAMS,
    in_place: bool = False,
    encoding: Encoding | None = None,
    item_vector: ItemVector | None = None,
) -> Profile | None:
    """The profile after ``event``, or ``None`` if the event was already applied.

    ``categories`` are the catalog categories of the event's item as known when it is
    applied, ``encoding`` a review's text encoding, ``item_vector`` the text vector of a
    click's or purchase's item (both optional: without them only behaviour changes). Does not
    mutate ``profile`` unless ``in_place`` (for an owner that keeps
    the only reference, such as the worker's profile cache: copying every dict on every
    event was a measurable share of the per-event cost).
    """
    # Built-in exceptions on purpose, not PersonaError: these guard invariants of the
    # caller (the worker routes by kind and by user key before it applies anything, and
    # looks the vector up by the event's item), so hitting one is a bug to fix, never a
    # condition a deployment is meant to handle.
    if isinstance(event, Item):
        raise TypeError("catalog events do not belong to a user profile")
    if isinstance(event, Erasure):
        raise TypeError("an erasure deletes a profile (Pipeline.erase); it is not applied to one")
    if event.user_id != profile.user_id:
        raise ValueError(f"event for {event.user_id!r} applied to profile {profile.user_id!r}")
    if is_duplicate(profile, event, origin):
        return None
    p = profile if in_place else _copy(profile)
    ts = event.ts
    kind = kind_of(event)
    p.version += 1
    p.counts[kind] = p.counts.get(kind, 0) + 1
    p.recency[kind] = max(p.recency.get(kind, ts), ts)
    p.first_event_ts = ts if p.first_event_ts is None else min(p.first_event_ts, ts)
    p.last_event_ts = max(p.last_event_ts, ts)
    if isinstance(event, (Click, Purchase, Review)):
        _add_affinity(p, categories, params.weight(event), ts, params.half_life_s)
    if item_vector is not None and isinstance(event, (Click, Purchase)):
        if item_vector.item_id != event.item_id:
            raise ValueError(f"vector of item {item_vector.item_id!r} applied to an event on {event.item_id!r}")
        p.interest = add_vector(
            p.interest, item_vector.array(), item_vector.version, INTEREST_WEIGHTS[kind], ts, params.half_life_s
        )
    if isinstance(event, Click):
        p.clicked[event.item_id] = max(p.clicked.get(event.item_id, ts), ts)
        keep_latest(p.clicked, CLICK_MEMORY)
    elif isinstance(event, Purchase):
        if event.price is not None:
            p.purchase_value += event.price * event.quantity
        p.purchased[event.item_id] = max(p.purchased.get(event.item_id, ts), ts)
        bound(p.purchased, MAX_ENTRIES)
    elif isinstance(event, Review):
        if event.rating is not None:
            p.rating_sum += event.rating
            p.rating_count += 1
        _apply_language(p, event, categories, encoding, params.half_life_s)
    elif isinstance(event, User):
        for name, value in event.attributes.items():
            if ts >= p.attribute_ts.get(name, float("-inf")):
                p.attributes[name] = value
                p.attribute_ts[name] = ts
    elif isinstance(event, Follow):
        # Compare event times so a late "follow" cannot resurrect a newer "unfollow".
        f = event.followee_id
        followed = max(p.following.get(f, -1.0), ts if event.action == "follow" else -1.0)
        unfollowed = max(p.unfollowed.get(f, -1.0), ts if event.action == "unfollow" else -1.0)
        # Last writer wins by event time; an unfollow wins a tie.
        if followed > unfollowed:
            p.following[f] = followed
            p.unfollowed.pop(f, None)
            bound(p.following, MAX_ENTRIES)
        else:
            p.following.pop(f, None)
            p.unfollowed[f] = unfollowed
            bound(p.unfollowed, MAX_ENTRIES)
    if origin is not None:
        advance(p.applied, p.applied_index, origin.source, origin.offset, origin.index, origin.of)
    if params.dedupe_window:
        p.recent_ids.append(event.event_id)
        del p.recent_ids[: -params.dedupe_window]
    return p
