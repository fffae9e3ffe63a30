"""A profile's size, bounded: what a heavy user's profile forgets, and the last line under a byte cap.

A profile is one record on the changelog topic, and Kafka refuses a record larger than the
producer's ``max_request_size`` (1,000,000 bytes in Faust) or the topic's ``max.message.bytes``.
Before these bounds, a user who followed 50,000 accounts (a bot, a bulk import) grew a profile of
1.25 MB: the producer refused its changelog record at once, and the worker stopped processing
without exiting. Two bounds:

- **Counts**, in :func:`state.profile.apply`, deterministic and independent of arrival order: the
  maps keyed by item or by account keep their :data:`state.profile.MAX_ENTRIES` latest entries by event time
  (the oldest go first; equal times by key), as clicks keep their ``CLICK_MEMORY`` latest. A
  forgotten purchase may be recommended again; a forgotten follow stops counting in the social
  dimension; a forgotten unfollow no longer stops an older follow that arrives late.
- **Bytes**, in :func:`fit` (the worker's profile store encodes every profile with it): ids may be up to 256
  characters and attribute values long, so counts alone do not bound bytes. Over ``max_bytes``,
  the largest forgettable part loses its older (or weaker) half until the profile fits. It depends
  on when the worker writes, so two replays may trim at different moments: it is a guard for
  profiles no real user has, and the worker counts every trim (``persona_profiles_trimmed_total``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from state.codec import dumps
from state.profile import Profile, keep_latest

#: Largest profile written, in bytes: half of Faust's producer limit, so a record never nears it.
MAX_PROFILE_BYTES: Final = 512 * 1024


def _size(entries: Mapping[str, object]) -> int:
    """A map's rough encoded size: its keys plus ~9 bytes per value."""
    return sum(len(k) + 9 for k in entries)


def fit(profile: Profile, max_bytes: int = MAX_PROFILE_BYTES) -> tuple[bytes, int]:
    """``profile`` encoded (:func:`state.codec.dumps`) in at most ``max_bytes``, and how many
    entries it forgot to get there (0: it fitted). Forgets in place; deterministic in the
    profile's content."""
    forgot = 0
    data = dumps(profile)
    while len(data) > max_bytes:
        parts: list[tuple[int, str, Callable[[], int]]] = [
            (_size(profile.clicked), "clicked", lambda: _halve_by_time(profile.clicked)),
            (_size(profile.purchased), "purchased", lambda: _halve_by_time(profile.purchased)),
            (_size(profile.reviewed), "reviewed", lambda: _halve_reviewed(profile)),
            (_size(profile.following), "following", lambda: _halve_by_time(profile.following)),
            (_size(profile.unfollowed), "unfollowed", lambda: _halve_by_time(profile.unfollowed)),
            (_size(profile.affinity), "affinity", lambda: _halve_weakest(profile.affinity)),
            (_size(profile.sentiment), "sentiment", lambda: _halve_sentiment(profile)),
            (sum(len(k) + len(str(v)) for k, v in profile.attributes.items()), "attributes", lambda: _halve_attributes(profile)),
        ]
        size, _, forget = max(parts, key=lambda t: (t[0], t[1]))
        if size == 0:
            break  # nothing left to forget: the rest of a profile is bounded well below any cap
        forgot += forget()
        data = dumps(profile)
    return data, forgot


def _halve_by_time(entries: dict[str, float]) -> int:
    return len(keep_latest(entries, len(entries) // 2))


def _halve_reviewed(profile: Profile) -> int:
    gone = keep_latest(profile.reviewed, len(profile.reviewed) // 2)
    for item in gone:
        profile.disliked.pop(item, None)
    return len(gone)


def _halve_weakest(weights: dict[str, float]) -> int:
    order = sorted(weights.items(), key=lambda kv: (kv[1], kv[0]))
    gone = order[: max(1, len(order) - len(order) // 2)]
    for k, _ in gone:
        del weights[k]
    return len(gone)


def _halve_sentiment(profile: Profile) -> int:
    # "*" is the overall sentiment, not a category: it stays.
    order = sorted(((k, v[1]) for k, v in profile.sentiment.items() if k != "*"), key=lambda kv: (kv[1], kv[0]))
    gone = order[: max(1, len(order) - len(order) // 2)] if order else []
    for k, _ in gone:
        del profile.sentiment[k]
    if not gone:  # only "*" was left
        profile.sentiment.clear()
        return 1
    return len(gone)


def _halve_attributes(profile: Profile) -> int:
    stamped = {name: profile.attribute_ts.get(name, float("-inf")) for name in profile.attributes}
    gone = keep_latest(stamped, len(stamped) // 2)
    for name in gone:
        del profile.attributes[name]
        profile.attribute_ts.pop(name, None)
    return len(gone)
