"""The ranker: candidates from several generators, one score from the profile's dimensions.

Candidates (each generator pure, over state that depends on event time only):

- *collaborative*: items that co-occur with the user's recent items (:class:`scoring.knn.ItemKNN`);
- *category affinity*: the most popular unseen items of the user's strongest categories
  (the baseline ranker's pool);
- *trending*: the most popular unseen items overall (decayed popularity).

Each candidate gets features in [0, 1]: ``cooc`` (co-occurrence score over the best
candidate's), ``category`` (the user's decayed affinity share of the item's categories) and
``trending`` (log popularity over the best candidate's). The score is their weighted sum
(:class:`Weights`, chosen on a validation time slice: see docs/EVALUATION.md). Never an item
the user bought. Diversity: maximal marginal relevance with weight ``diversity`` (0 = by score
only; raising it penalises items whose categories repeat those already chosen). Ties go by
score, then a stable per-user hash, never by id string. Reasons name the dimension that
contributed most and its evidence.

The interface is one function, :func:`rank`, so that a trained ranker (a later issue)
replaces the weighted sum without touching the generators.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from scoring.baseline import Scored, tie_key
from scoring.knn import ItemKNN
from scoring.popularity import Popularity
from state.catalog import Catalog
from state.profile import Params, Profile

#: How many recent items a user's collaborative score sums over.
HISTORY = 50


@dataclass(frozen=True, slots=True)
class Weights:
    """The hand-set ranker: weights of each dimension's feature, and the diversity weight."""

    cooc: float = 1.0
    category: float = 0.3
    trending: float = 0.2
    diversity: float = 0.0
    #: weight of the k-th most recent history item in the co-occurrence score: recency**k
    recency: float = 1.0
    #: candidates taken from each generator
    pool: int = 100


#: Frozen: one shared default is safe.
DEFAULT_WEIGHTS = Weights()


def history(profile: Profile, n: int = HISTORY) -> list[str]:
    """The user's last ``n`` engaged items, oldest first (ties by id: a fixed order, not a rank)."""
    items = sorted(profile.purchased.items(), key=lambda kv: (kv[1], kv[0]))
    return [i for i, _ in items[-n:]]


def _category_share(cats: Sequence[str], affinity: dict[str, float], total: float) -> float:
    if not cats or total <= 0.0:
        return 0.0
    return sum(affinity.get(c, 0.0) for c in cats) / (total * len(cats))


def rank(
    profile: Profile,
    *,
    catalog: Catalog,
    popularity: Popularity,
    knn: ItemKNN,
    params: Params,
    k: int,
    weights: Weights = DEFAULT_WEIGHTS,
) -> list[Scored]:
    """The user's top ``k`` (see the module docstring)."""
    user = profile.user_id
    exclude = profile.purchased
    recent = history(profile)
    now = max(popularity.now, profile.affinity_ref_ts)
    affinity = profile.affinity_at(now, params)
    total = sum(affinity.values())

    cooc = dict(knn.top(recent, weights.pool, user_id=user, exclude=exclude, recency=weights.recency)) if recent and weights.cooc else {}
    candidates: set[str] = set(cooc)
    # One popularity ranking serves both pools (one sorted list per cache refresh, not one
    # per category): the trending items, and the popular items of the strongest categories.
    ranked = popularity.ranked(None, key="all")
    candidates.update(i for _, i in _unseen_top(ranked, exclude, max(weights.pool // 2, k)))
    if weights.category and total > 0.0:
        strongest = {c for c, _ in heapq.nlargest(5, affinity.items(), key=lambda kv: (kv[1], kv[0]))}
        wanted = weights.pool
        # Bounded scan: a user's strongest categories may be rare among popular items (CiaoDVD
        # has 16k films); scanning the whole catalog per ranking dominated its cost.
        for _, item in ranked[: 20 * weights.pool]:
            if wanted <= 0:
                break
            if item not in exclude and not strongest.isdisjoint(catalog.categories(item)):
                candidates.add(item)
                wanted -= 1
    if len(candidates) < k:  # a tiny or empty history: fill from the catalog
        for _, item in _unseen_top(popularity.ranked(catalog.ids(), key="catalog"), exclude, k):
            candidates.add(item)
    if not candidates:
        return []

    best_cooc = max(cooc.values(), default=0.0) or 1.0
    pops = {i: popularity.value(i) for i in candidates}
    log_best = math.log1p(max(pops.values(), default=0.0)) or 1.0
    raw: list[tuple[float, str, float, float, float]] = []
    for item, pop in pops.items():
        f_cooc = cooc.get(item, 0.0) / best_cooc
        f_cat = _category_share(catalog.categories(item), affinity, total) if total > 0.0 else 0.0
        f_pop = math.log1p(pop) / log_best
        raw.append((weights.cooc * f_cooc + weights.category * f_cat + weights.trending * f_pop, item, f_cooc, f_cat, f_pop))
    # Only the head needs the per-user tie order: everything scoring at least the n-th best
    # (n = k, or MMR's pool of 4k) is ordered by (score, tie_key); the rest never shows.
    n = 4 * k if weights.diversity > 0.0 else k
    floor = heapq.nlargest(n, (t[0] for t in raw))[-1]
    scored = [(s, tie_key(user, i), i, a, b, c) for s, i, a, b, c in raw if s >= floor]
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    chosen = _mmr(scored, catalog, k, weights.diversity) if weights.diversity > 0.0 else scored[:k]
    return [
        Scored(item_id=item, score=round(score, 6), reasons=_reasons(item, f, recent, knn, catalog, affinity, total, popularity, weights))
        for score, _, item, *f in chosen
    ]


def _unseen_top(ranked: list[tuple[float, str]], exclude: dict[str, float], n: int) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    for entry in ranked:
        if entry[1] not in exclude:
            out.append(entry)
            if len(out) >= n:
                break
    return out


def _jaccard(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    if not a or not b:
        return 0.0
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


def _mmr(
    scored: list[tuple[float, bytes, str, float, float, float]], catalog: Catalog, k: int, diversity: float
) -> list[tuple[float, bytes, str, float, float, float]]:
    """Greedy maximal marginal relevance over the best ``4k``: relevance scaled to [0, 1],
    minus ``diversity`` times the largest category overlap with what was chosen."""
    pool = scored[: 4 * k]
    top = pool[0][0] or 1.0
    cats = {t[2]: catalog.categories(t[2]) for t in pool}
    chosen: list[tuple[float, bytes, str, float, float, float]] = []
    while pool and len(chosen) < k:
        best_i, best_v = 0, -math.inf
        for i, t in enumerate(pool):
            overlap = max((_jaccard(cats[t[2]], cats[c[2]]) for c in chosen), default=0.0)
            value = (1.0 - diversity) * t[0] / top - diversity * overlap
            if value > best_v:  # strict: earlier (better-ranked) entries win ties
                best_i, best_v = i, value
        chosen.append(pool.pop(best_i))
    return chosen


def _reasons(
    item: str,
    features: Sequence[float],
    recent: list[str],
    knn: ItemKNN,
    catalog: Catalog,
    affinity: dict[str, float],
    total: float,
    popularity: Popularity,
    weights: Weights,
) -> list[str]:
    f_cooc, f_cat, f_pop = features
    parts = sorted(
        [("cooc", weights.cooc * f_cooc), ("category", weights.category * f_cat), ("trending", weights.trending * f_pop)],
        key=lambda kv: -kv[1],
    )
    out: list[str] = []
    for name, value in parts:
        if value <= 0.0:
            continue
        if name == "cooc":
            # The evidence: the user's item most similar to this one, among the latest ten
            # (a reason, not a score: cheap beats exhaustive here).
            anchor = max(recent[-10:], key=lambda h: (knn.similarity(h, item), h))
            if knn.similarity(anchor, item) == 0.0:
                anchor = max(recent, key=lambda h: (knn.similarity(h, item), h))
            title = catalog.get(anchor)
            out.append(f"people who engaged with {title.title if title and title.title else anchor} also engaged with this")
        elif name == "category":
            cats = catalog.categories(item)
            lead = max(cats, key=lambda c: (affinity.get(c, 0.0), c))
            out.append(f"you engage with {lead} ({affinity.get(lead, 0.0) / total:.0%} of your recent activity)")
        else:
            out.append(f"trending now (popularity {popularity.value(item):.2f})")
    return out or ["from the catalog: no activity on it yet"]
