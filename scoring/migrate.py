"""Moving a user's interest to a new encoder version without wiping what it knew.

An interest vector is a decayed mean of vectors of one encoder version; a vector of another
version cannot be added to it. When the encoder is hot-swapped, the content index switches to
the new version (``scoring.content``: the item encoder re-encodes the catalog, review centroids
restart), and every stored interest is of the old one. Rather than restart each user from their
next event, the interest is **rebuilt from the engaged items' new vectors**: every item the
profile remembers engaging with (purchases and reviews weigh 1, clicks 0.5, as in
``state.interest.INTEREST_WEIGHTS``), decayed from its event time to the latest, using the
content index's vectors of the new version (catalog text, else the item's review centroid).

It is used twice: at read time, so that a user's content candidates work from the first
ranking after the swap (``scoring.ranker.interest_query``); and at write time, when the user's
first event with a new-version vector arrives, so that the stored interest starts from the
rebuilt one instead of from that single vector (``stream_app.pipeline``). What is lost: the
user's own review texts, which are not kept, count only through the reviewed items' vectors.
Items not yet re-encoded when the interest is rebuilt are missing from it.
"""

from __future__ import annotations

import numpy as np

from scoring.content import ContentIndex
from state.decay import weight_at
from state.interest import INTEREST_WEIGHTS, Interest
from state.profile import Profile


def migrated_interest(profile: Profile, content: ContentIndex, half_life_s: float) -> Interest | None:
    """The profile's interest rebuilt in ``content``'s version (module docstring), or None when
    none of its engaged items has a vector there."""
    version = content.version
    if version is None:
        return None
    engaged: dict[str, tuple[float, float]] = {}
    for source, weight in ((profile.clicked, INTEREST_WEIGHTS["click"]), (profile.purchased, INTEREST_WEIGHTS["purchase"]),
                           (profile.reviewed, INTEREST_WEIGHTS["review"])):
        for item, ts in source.items():
            have = engaged.get(item)
            if have is None or (weight, ts) > (have[0], have[1]):
                engaged[item] = (weight, ts)
    if not engaged:
        return None
    ref = max(ts for _, ts in engaged.values())
    total = np.zeros(content.ndim, dtype=np.float64)
    w = 0.0
    for item in sorted(engaged):  # a fixed order: the same sum in every process
        vector = content.vector(item)
        if vector is None:
            continue
        weight, ts = engaged[item]
        share = weight_at(weight, ts, ref, half_life_s)
        total += np.asarray(vector, dtype=np.float64) * share
        w += share
    if w <= 0.0:
        return None
    return Interest(version=version, ref_ts=ref, weight=w, sum=total.astype("<f4").tobytes())
