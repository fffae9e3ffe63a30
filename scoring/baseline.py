"""The baseline recommender: decayed category affinity x decayed item popularity.

``score(u, i) = share_u(i) * (pop(i) + 1) / (max_pop + 1)`` where ``share_u(i)`` is the
mean, over the item's categories, of the user's decayed affinity for that category divided
by the user's total affinity, and ``pop`` is the item's decayed popularity. The +1 (one
pseudo-event per item) keeps liked categories rankable while popularity is still unknown,
e.g. for a new item or right after a worker restart (popularity lives in memory). Items the user bought are
never recommended. A user with no affinity yet (cold start) gets the most popular items.
Candidates are the most popular items of the user's strongest categories, so a message
costs O(top categories x per-category pool), not O(catalog).

Equal scores are ordered by a hash of (user id, item id) (:func:`tie_key`), never by the id
string: stable across runs and processes, and different per user, so two users whose scores
tie (cold start on an empty popularity, a tail of items nobody touched yet) do not all get the
same alphabetical slice of the catalog. Pools are cut after the items that tie with the last
one kept (up to ``TIE_SLACK`` x the pool size more), so that per-user order decides which
tied items make the list, not the order popularity happened to rank them in.
"""

from __future__ import annotations

import hashlib

import msgspec

from scoring.popularity import Popularity
from state.catalog import Catalog
from state.profile import Params, Profile

TOP_CATEGORIES = 5
#: Candidates per strong category, as a multiple of k: an item outside its category's
#: top 2k by popularity cannot enter the top k unless its other categories lift it.
POOL_FACTOR = 2
#: How many tied entries past a pool's cut (as a multiple of the pool size) stay in the running.
TIE_SLACK = 4


class Scored(msgspec.Struct, frozen=True):
    item_id: str
    score: float
    reasons: list[str]


def tie_key(user_id: str, item_id: str) -> bytes:
    """The order of equal scores for one user: blake2b of (user, item), salted by the user so
    users get different tie orders, and stable across runs (unlike ``hash()``)."""
    return hashlib.blake2b(f"{user_id}\x00{item_id}".encode(), digest_size=8).digest()


def _unseen(ranked: list[tuple[float, str]], exclude: dict[str, float], n: int) -> list[tuple[float, str]]:
    """The first ``n`` entries of ``ranked`` (best first) whose item is not excluded, then the
    unseen entries that tie with the ``n``-th (up to ``TIE_SLACK * n`` more): the caller breaks
    those ties per user."""
    out: list[tuple[float, str]] = []
    if n <= 0:
        return out
    limit = n + TIE_SLACK * n
    for entry in ranked:
        if entry[1] in exclude:
            continue
        if len(out) >= n and (entry[0] != out[n - 1][0] or len(out) >= limit):
            break
        out.append(entry)
    return out


def _best(scored: list[Scored], user_id: str, k: int) -> list[Scored]:
    """The ``k`` best by score; ties by :func:`tie_key` (the id only settles a hash collision)."""
    scored.sort(key=lambda s: (-s.score, tie_key(user_id, s.item_id), s.item_id))
    return scored[:k]


def recommend(
    profile: Profile,
    catalog: Catalog,
    popularity: Popularity,
    *,
    k: int,
    params: Params,
) -> list[Scored]:
    exclude = profile.purchased
    now = max(popularity.now, profile.affinity_ref_ts)
    affinity = profile.affinity_at(now, params)
    total = sum(affinity.values())
    if total <= 0.0:
        ranked = popularity.ranked(catalog.ids())
        best = ranked[0][0] if ranked else 0.0
        cold = [
            Scored(
                item_id=i,
                score=(p + 1.0) / (best + 1.0),
                # Not "popular" when nobody touched it yet (e.g. right after a restart).
                reasons=[f"popular overall (popularity {p:.2f})" if p > 0.0 else "from the catalog: no activity on it yet"],
            )
            for p, i in _unseen(ranked, exclude, k)
        ]
        return _best(cold, profile.user_id, k)
    strongest = sorted(affinity.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
    candidates: dict[str, float] = {}
    for category, _ in strongest:
        ranked = popularity.ranked(catalog.items_in(category), key=category)
        for p, item_id in _unseen(ranked, exclude, max(POOL_FACTOR * k, 10)):
            candidates[item_id] = p
    best_pop = max(candidates.values(), default=0.0)
    # Score every candidate, but word the reasons only for the k that are kept.
    scored: list[Scored] = []
    for item_id, pop in candidates.items():
        cats = catalog.categories(item_id)
        share = sum(affinity.get(c, 0.0) / total for c in cats) / len(cats) if cats else 0.0
        score = share * (pop + 1.0) / (best_pop + 1.0)
        if score > 0.0:
            scored.append(Scored(item_id=item_id, score=score, reasons=[]))
    return [
        Scored(
            item_id=s.item_id,
            score=s.score,
            reasons=_reasons(catalog.categories(s.item_id), affinity, total, candidates[s.item_id]),
        )
        for s in _best(scored, profile.user_id, k)
    ]


def _reasons(cats: tuple[str, ...], affinity: dict[str, float], total: float, pop: float) -> list[str]:
    shares = {c: affinity.get(c, 0.0) / total for c in cats}
    lead = max(shares, key=lambda c: (shares[c], c))
    return [
        f"you engage with {lead} ({shares[lead]:.0%} of your recent activity)",
        f"popular now (popularity {pop:.2f})" if pop > 0.0 else "new: no activity on it yet",
    ]
