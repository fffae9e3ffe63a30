"""Language-model dimensions of a profile: interest vector and sentiment.

Interest is the decayed, weighted mean of the embeddings of what the user wrote (review
text, weight 1) and of the items they engaged with (the item's text vector: purchase 1,
click 0.5; see ``INTEREST_WEIGHTS``): a decayed weighted sum ``S`` and a decayed weight
``W`` kept at a reference time, exactly like the category affinities, so the result does
not depend on arrival order. The mean is ``S / W``. An engagement contributes only if its
item has a vector of the worker's current encoder version when the engagement is applied
(items are encoded within about a second of their catalog record; see
``stream_app.item_vectors``).

Every vector carries the encoder version that made it, and a profile holds vectors of
one version only: a vector of another version *restarts* the interest under the new
version (the old sum is dropped, never mixed). Stored vectors move to a new encoder
lazily this way, user by user, as new events arrive; scoring compares a user's interest
only with item vectors of the same version.

Sentiment per review is a number in [-1, 1] from the text (the encoder artifact's head,
trained on star ratings in ``export/``), blended with the star rating when the review has
one, and aggregated per category (and overall, under ``"*"``) with the same decay.
"""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
import numpy.typing as npt

from state.decay import factor, weight_at

Vector = npt.NDArray[np.float32]
OVERALL = "*"
#: Weight of one vector in the interest mean, by event kind (review = its own text).
INTEREST_WEIGHTS: dict[str, float] = {"review": 1.0, "purchase": 1.0, "click": 0.5}
#: Weight of the text-derived sentiment when a star rating is also present.
TEXT_SHARE = 0.5


class ItemVector(msgspec.Struct, frozen=True):
    """An item's text embedding, as published on the item-vectors topic (MessagePack)."""

    item_id: str
    #: encoder version that made ``vector``
    version: str
    #: digest of the encoded text (``text_digest``): a changed catalog text is re-encoded
    digest: str
    #: float32 little-endian bytes of an L2-normalised vector rounded to float16 (``item_vector_bytes``)
    vector: bytes

    def array(self) -> Vector:
        return np.frombuffer(self.vector, dtype="<f4")


def item_vector_bytes(vector: npt.ArrayLike) -> bytes:
    """An item vector as published: float32 bytes of float16-rounded values.

    Every worker holds every item's vector (the item-vector replica), so float16 halves what
    the catalog costs each worker; rounding where the vector is made (not where it is held)
    means the replica, the content index and the evaluator all use the very same values, and
    the replica's float16 copy is exact. The rounding (~5e-4 relative) is far below what
    separates one item from another."""
    return np.asarray(vector, dtype=np.float32).astype(np.float16).astype("<f4").tobytes()


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Interest(msgspec.Struct):
    version: str
    ref_ts: float
    weight: float
    #: float32 little-endian bytes of the decayed weighted sum at ``ref_ts``
    sum: bytes

    def mean(self) -> Vector:
        v = np.frombuffer(self.sum, dtype="<f4").astype(np.float64) / max(self.weight, 1e-300)
        return v.astype(np.float32)


def add_vector(
    interest: Interest | None, vector: Vector, version: str, weight: float, ts: float, half_life_s: float
) -> Interest:
    """``interest`` after one more vector (a new ``Interest`` when versions differ)."""
    vec = np.asarray(vector, dtype=np.float64)
    if interest is None or interest.version != version:
        return Interest(version=version, ref_ts=ts, weight=weight, sum=(vec * weight).astype("<f4").tobytes())
    s = np.frombuffer(interest.sum, dtype="<f4").astype(np.float64)
    w, ref = interest.weight, interest.ref_ts
    if ts > ref:
        f = factor(ts - ref, half_life_s)
        s, w, ref = s * f, w * f, ts
    share = weight_at(weight, ts, ref, half_life_s)
    return Interest(version=version, ref_ts=ref, weight=w + share, sum=(s + vec * share).astype("<f4").tobytes())


def blend_sentiment(text_sentiment: float | None, rating: float | None) -> float | None:
    """One review's sentiment in [-1, 1]: the text's, blended with the stars if present."""
    stars = None if rating is None else (rating - 3.0) / 2.0
    if text_sentiment is None:
        return stars
    if stars is None:
        return text_sentiment
    return TEXT_SHARE * text_sentiment + (1.0 - TEXT_SHARE) * stars


def add_sentiment(
    table: dict[str, list[float]],
    ref_ts: float,
    categories: tuple[str, ...],
    value: float,
    ts: float,
    half_life_s: float,
) -> float:
    """Fold one sentiment into ``table`` (``key -> [decayed sum, decayed weight]`` at
    ``ref_ts``), under each category and overall; returns the new reference time."""
    if ts > ref_ts:
        f = factor(ts - ref_ts, half_life_s)
        for entry in table.values():
            entry[0] *= f
            entry[1] *= f
        ref_ts = ts
    w = weight_at(1.0, ts, ref_ts, half_life_s)
    for key in (OVERALL, *categories):
        entry = table.setdefault(key, [0.0, 0.0])
        entry[0] += value * w
        entry[1] += w
    return ref_ts


def sentiment_means(table: dict[str, list[float]]) -> dict[str, float]:
    return {k: s / w for k, (s, w) in table.items() if w > 0}
