"""The baseline recommender: decayed category affinity x decayed item popularity.

``score(u, i) = share_u(i) * (pop(i) + 1) / (max_pop + 1)`` where ``share_u(i)`` is the
mean, over the item's categories, of the user's decayed affinity for that category divided
by the user's total affinity, and ``pop`` is the item's decayed popularity. The +1 (one
pseudo-event per item) keeps liked categories rankable while popularity is still unknown,
e.g. for a new item or right after a worker restart (popularity lives in memory). Items the user bought are
never recommended. A user with no affinity yet (cold start) gets the most popular items.
Candidates are the most popular items of the user's strongest categories, so a message
costs O(top categories x per-category pool), not O(catalog).
"""

from __future__ import annotations

import msgspec

from scoring.popularity import Popularity
from state.catalog import Catalog
from state.profile import Params, Profile

TOP_CATEGORIES = 5
#: Candidates per strong category, as a multiple of k: an item outside its category's
#: top 2k by popularity cannot enter the top k unless its other categories lift it.
POOL_FACTOR = 2


class Scored(msgspec.Struct, frozen=True):
    item_id: str
    score: float
    reasons: list[str]


def _unseen(ranked: list[tuple[float, str]], exclude: dict[str, float], n: int) -> list[tuple[float, str]]:
    """The first ``n`` entries of ``ranked`` whose item is not excluded."""
    out: list[tuple[float, str]] = []
    for entry in ranked:
        if entry[1] not in exclude:
            out.append(entry)
            if len(out) == n:
                break
    return out


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
        return [
            Scored(item_id=i, score=(p + 1.0) / (best + 1.0), reasons=["popular overall"])
            for p, i in _unseen(ranked, exclude, k)
        ]
    strongest = sorted(affinity.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
    candidates: dict[str, float] = {}
    for category, _ in strongest:
        ranked = popularity.ranked(catalog.items_in(category), key=category)
        for p, item_id in _unseen(ranked, exclude, max(POOL_FACTOR * k, 10)):
            candidates[item_id] = p
    best_pop = max(candidates.values(), default=0.0)
    scored: list[Scored] = []
    for item_id, pop in candidates.items():
        cats = catalog.categories(item_id)
        shares = {c: affinity.get(c, 0.0) / total for c in cats}
        share = sum(shares.values()) / len(cats) if cats else 0.0
        score = share * (pop + 1.0) / (best_pop + 1.0)
        if score <= 0.0:
            continue
        lead = max(shares, key=lambda c: (shares[c], c))
        reasons = [
            f"you engage with {lead} ({shares[lead]:.0%} of your recent activity)",
            f"popular now (popularity {pop:.2f})",
        ]
        scored.append(Scored(item_id=item_id, score=score, reasons=reasons))
    scored.sort(key=lambda s: (-s.score, s.item_id))
    return scored[:k]
