"""The ranker: candidates from several generators, one score from the profile's dimensions.

Candidates (each generator pure, over state that depends on event time only; the global
parts live in :class:`scoring.shared.SharedState`):

- *collaborative*: items that co-occur with the user's recent items (:class:`scoring.knn.ItemKNN`);
- *content*: the items nearest to the user's interest vector (the decayed mean of their review
  texts and of the text vectors of items they engaged with) in the item vector index
  (:class:`scoring.content.ContentIndex`: catalog text, else the item's review centroid);
- *category affinity*: the most popular unseen items of the user's strongest categories;
- *trending*: the most popular unseen items overall (decayed popularity);
- *social*: what the people the user follows engaged with recently (:class:`scoring.social.SocialGraph`);
- *attributes*: what users of the same attribute segments engage with (:class:`scoring.segments.SegmentPopularity`),
  mainly for cold start.

Each candidate gets features in [0, 1]: ``cooc`` (co-occurrence score over the best
candidate's), ``category`` (the user's decayed affinity share of the item's categories),
``trending`` (log popularity over the best candidate's), ``content`` (cosine with the interest
vector over the best candidate's, negatives at 0), ``social`` and ``segment`` (their generator's
score over the best candidate's) and ``negative``: the *sentiment* dimension, how close the item
is to what the user reviewed badly (co-occurrence with those items over the best positive
co-occurrence, plus the negative mean sentiment of the item's categories). The score is
the weighted sum, ``negative`` subtracted (:class:`Weights`, chosen on a validation time slice:
docs/EVALUATION.md). Never an item the user bought (nor one they clicked, when
``exclude_clicked``). Diversity: maximal marginal relevance with weight ``diversity``. Ties go by
score, then a stable per-user hash, never by id string. Reasons name the dimension that
contributed most and its evidence.

The interface is one function, :func:`rank`, so that a trained ranker (a later issue)
replaces the weighted sum without touching the generators.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from scoring.baseline import Scored, tie_key
from scoring.migrate import migrated_interest
from scoring.popularity import tie_hash
from scoring.reasons import POSITIVE, Evidence
from scoring.segments import segments_of
from scoring.shared import SharedState
from state.catalog import Catalog
from state.interest import sentiment_means
from state.profile import Params, Profile

#: How many recent items a user's collaborative score sums over.
HISTORY = 50
#: Catalog items taken past k when filling a short list, so the per-user tie order picks among them.
TIE_FILL = 20
#: The features, in the order of a candidate's feature tuple.
FEATURES = (*POSITIVE, "negative")


class Scorer(Protocol):
    """A trained ranker: scores for a (features, candidates) array, one per candidate.

    It sees every feature (each generator runs as if its hand weight were positive), so
    the weights it was trained with, not the hand-set ones, decide what counts."""

    version: str

    def __call__(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True, slots=True)
class Weights:
    """The hand-set ranker: weights of each dimension's feature, and the diversity weight."""

    cooc: float = 1.0
    category: float = 0.3
    trending: float = 0.2
    content: float = 0.0
    social: float = 0.0
    segment: float = 0.0
    #: sentiment: weight of the ``negative`` feature (subtracted)
    sentiment: float = 0.0
    diversity: float = 0.0
    #: weight of the k-th most recent history item in the co-occurrence score: recency**k
    recency: float = 1.0
    #: candidates taken from each generator
    pool: int = 100
    exclude_clicked: bool = False
    #: a trained ranker replacing the weighted sum (None: the hand-set weights above)
    model: Scorer | None = None

    def only(self, *dims: str) -> Weights:
        """These weights with every optional dimension not named in ``dims`` switched off
        (the evaluator's per-dimension variants: behaviour only, + text, + sentiment, ...)."""
        return replace(
            self,
            content=self.content if "content" in dims else 0.0,
            social=self.social if "social" in dims else 0.0,
            segment=self.segment if "segment" in dims else 0.0,
            sentiment=self.sentiment if "sentiment" in dims else 0.0,
        )


#: Frozen: one shared default is safe.
DEFAULT_WEIGHTS = Weights()


def history(profile: Profile, n: int = HISTORY) -> list[str]:
    """The user's last ``n`` engaged items, oldest first (ties by id: a fixed order, not a rank)."""
    purchased = profile.purchased
    if len(purchased) <= n:
        return [i for i, _ in sorted(purchased.items(), key=_TIME_THEN_ID)]
    # Called for every first engagement and every ranking, over up to hundreds of items: the
    # n-th latest time is found by sorting the bare floats (C compares), and only the items at
    # or after it are sorted by (time, id); 3x faster than sorting every pair at 300-700 items,
    # with the same result (ties at the threshold are all kept, then cut in (time, id) order).
    times = sorted(purchased.values())
    threshold = times[len(times) - n]
    items = [(i, t) for i, t in purchased.items() if t >= threshold]
    items.sort(key=_TIME_THEN_ID)
    return [i for i, _ in items[-n:]]


_TIME_THEN_ID = operator.itemgetter(1, 0)


class _Exclude(Collection[str]):
    """Purchased items, plus clicked ones when asked: a view, not a merged copy."""

    def __init__(self, profile: Profile, clicked: bool) -> None:
        self._a = profile.purchased
        self._b = profile.clicked if clicked else {}

    def __contains__(self, x: object) -> bool:
        return x in self._a or x in self._b

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from self._a
        yield from (x for x in self._b if x not in self._a)

    def __len__(self) -> int:
        return len(self._a) + sum(1 for x in self._b if x not in self._a)


def interest_query(profile: Profile, shared: SharedState, half_life_s: float | None = None) -> np.ndarray | None:
    """The user's interest vector in the content index's encoder version. An interest of
    another version (the encoder was swapped) is rebuilt from the engaged items' new vectors
    (:func:`scoring.migrate.migrated_interest`) when ``half_life_s`` is given."""
    interest = profile.interest
    if interest is not None and interest.version != shared.content.version and half_life_s is not None:
        interest = migrated_interest(profile, shared.content, half_life_s)
    if interest is None or interest.version != shared.content.version or interest.weight <= 0.0:
        return None
    return interest.mean()


def linear(w: Weights) -> tuple[float, ...]:
    """The hand-set ranker as one weight per feature (``negative`` subtracted)."""
    return (w.cooc, w.category, w.trending, w.content, w.social, w.segment, -w.sentiment)


def all_on(weights: Weights) -> Weights:
    """What the generators run with under a trained ranker: every dimension on."""
    return replace(weights, cooc=1.0, category=1.0, trending=1.0, content=1.0, social=1.0, segment=1.0, sentiment=1.0)


@dataclass(slots=True)
class Pool:
    """One ranking's candidates (sorted ids) and their (features, candidates) array, with the
    evidence the reasons cite."""

    items: list[str]
    f: npt.NDArray[np.float64]
    evidence: Evidence


def features(
    profile: Profile,
    *,
    catalog: Catalog,
    shared: SharedState,
    params: Params,
    k: int,
    weights: Weights = DEFAULT_WEIGHTS,
    items: Collection[str] | None = None,
) -> Pool | None:
    """The candidates and features that :func:`rank` would score (every dimension on): the
    trainer's view of a ranking, point in time by construction (it reads the state as it
    is now). ``items``: these candidates instead of the generators' (e.g. the items of an
    impression, shown or bought before or not). None when there is no candidate."""
    return _pool(profile, catalog, shared, params, k, all_on(weights), items)


def rank(
    profile: Profile,
    *,
    catalog: Catalog,
    shared: SharedState,
    params: Params,
    k: int,
    weights: Weights = DEFAULT_WEIGHTS,
) -> list[Scored]:
    """The user's top ``k`` (see the module docstring): the weighted sum of the features, or
    ``weights.model``'s scores when a trained ranker is set."""
    model = weights.model
    pool = _pool(profile, catalog, shared, params, k, weights if model is None else all_on(weights))
    if pool is None:
        return []
    items, f, user = pool.items, pool.f, profile.user_id
    w = weights
    if model is None:
        scores = np.array(linear(w)) @ f
    else:
        scores = np.asarray(model(f), dtype=np.float64).reshape(-1)
    # Only the head needs the per-user tie order: everything scoring at least the n-th best
    # (n = k, or MMR's pool of 4k) is ordered by (score, tie_key); the rest never shows.
    n = 4 * k if weights.diversity > 0.0 else k
    floor = float(np.partition(scores, len(items) - n)[len(items) - n]) if len(items) > n else -math.inf
    head = np.flatnonzero(scores >= floor).tolist()
    scored = [(float(scores[j]), tie_key(user, items[j]), items[j], tuple(f[:, j].tolist())) for j in head]
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    chosen = _mmr(scored, catalog, k, weights.diversity) if weights.diversity > 0.0 else scored[:k]
    if model is None:
        parts = [_linear_parts(fj, w) for _, _, _, fj in chosen]
    else:
        parts = _occlusion_parts(model, [fj for _, _, _, fj in chosen])
    evidence = pool.evidence
    evidence.prepare([item for _, _, item, _ in chosen])
    return [
        Scored(item_id=item, score=round(score, 6), reasons=evidence.reasons(item, part))
        for (score, _, item, _), part in zip(chosen, parts, strict=True)
    ]


def _linear_parts(f: tuple[float, ...], w: Weights) -> tuple[float, ...]:
    """Each positive dimension's share of a hand-weighted score."""
    return (w.cooc * f[0], w.category * f[1], w.trending * f[2], w.content * f[3], w.social * f[4], w.segment * f[5])


def _occlusion_parts(model: Scorer, chosen: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    """Each positive dimension's share of a trained ranker's score: how much the score drops
    when that feature is zeroed (one batched call for the whole list)."""
    if not chosen:
        return []
    base = np.array(chosen, dtype=np.float64).T  # (features, k)
    dims = 6
    stacked = np.repeat(base[:, None, :], dims + 1, axis=1)  # (features, 1 + dims, k)
    for d in range(dims):
        stacked[d, d + 1, :] = 0.0
    out = np.asarray(model(stacked.reshape(len(FEATURES), -1)), dtype=np.float64).reshape(dims + 1, -1)
    drop = out[0][None, :] - out[1:]
    return [tuple(float(x) if base[d, j] > 0.0 else 0.0 for d, x in enumerate(drop[:, j])) for j in range(base.shape[1])]


def _pool(
    profile: Profile,
    catalog: Catalog,
    shared: SharedState,
    params: Params,
    k: int,
    weights: Weights,
    only: Collection[str] | None = None,
) -> Pool | None:
    user = profile.user_id
    popularity, knn = shared.popularity, shared.knn
    exclude: Collection[str] = _Exclude(profile, True) if weights.exclude_clicked and profile.clicked else profile.purchased
    recent = history(profile)
    disliked = [i for i in recent if i in profile.disliked] if weights.sentiment else []
    if disliked:
        recent = [i for i in recent if i not in profile.disliked]
    now = max(popularity.now, profile.affinity_ref_ts)
    affinity = profile.affinity_at(now, params)
    total = sum(affinity.values())

    if not (recent and weights.cooc):
        cooc: dict[str, float] = {}
    elif only is not None:
        cooc = {i: v for i, v in knn.score(recent, only, recency=weights.recency).items() if v > 0.0}
    else:
        cooc = dict(knn.top(recent, weights.pool, user_id=user, exclude=exclude, recency=weights.recency))
    candidates: set[str] = set(cooc)
    query = interest_query(profile, shared, params.half_life_s) if weights.content else None
    found: dict[str, float] = {}
    if query is not None:
        found = dict(shared.content.search(query, weights.pool, version=shared.content.version or "", exclude=exclude))
        candidates.update(found)
    social: dict[str, tuple[float, int]] = {}
    if weights.social and profile.following:
        social = {i: (s, n) for i, s, n in shared.social.top(profile.following, weights.pool, exclude=exclude, now=now)}
        candidates.update(social)
    segs = segments_of(profile.attributes) if weights.segment and profile.attributes else ()
    segment: dict[str, tuple[float, str]] = {}
    if segs:
        segment = {i: (s, g) for i, s, g in shared.segments.top(segs, weights.pool // 2, exclude=exclude, now=now, scan=2)}
        candidates.update(segment)
    if only is not None:
        candidates = set(only)
    # One popularity order serves both pools (kept incrementally by Popularity.order, not
    # re-sorted per ranking): the trending items, and the popular items of the strongest categories.
    order = popularity.order()
    wanted = max(weights.pool // 2, k) if only is None else 0
    for _, _, item in order:
        if wanted <= 0:
            break
        if item not in exclude:
            candidates.add(item)
            wanted -= 1
    if weights.category and total > 0.0 and only is None:
        strongest = {c for c, _ in heapq.nlargest(5, affinity.items(), key=lambda kv: (kv[1], kv[0]))}
        wanted, window = weights.pool, 20 * weights.pool
        # Sizes first: on MovieLens the strongest genres hold most of the catalog, and their
        # union would be built for every ranking only to be thrown away.
        if sum(len(catalog.items_in(c)) for c in strongest) <= 4 * weights.pool:
            members = set().union(*(catalog.items_in(c) for c in strongest))
            # Few items in those categories (a new user's one category of many): their entries of
            # the popularity order, sorted, are what the scan below would meet, in the same order,
            # without walking past thousands of other items' categories (40% of a new user's
            # ranking on 20 categories).
            last = order[window - 1] if len(order) > window else None  # the window's last entry
            for entry in sorted(e for e in map(popularity.entry, members) if e is not None):
                if wanted <= 0 or (last is not None and entry > last):
                    break
                if entry[2] not in exclude:
                    candidates.add(entry[2])
                    wanted -= 1
        else:
            # Bounded scan: a user's strongest categories may be rare among popular items (CiaoDVD
            # has 16k films); scanning the whole catalog per ranking dominated its cost.
            for _, _, item in order[:window]:
                if wanted <= 0:
                    break
                if item not in exclude and not strongest.isdisjoint(catalog.categories(item)):
                    candidates.add(item)
                    wanted -= 1
    if len(candidates) < k and only is None:  # nothing popular yet (a stream's first events): fill from the catalog
        for item in _catalog_order(shared, catalog):
            if len(candidates) >= k + TIE_FILL:
                break
            if item not in exclude:
                candidates.add(item)
    if not candidates:
        return None

    # Features as one (7, candidates) array: a ranking scores a few hundred candidates, and
    # one Python expression per feature (not per candidate and feature) is most of the speed.
    # Sorted, not set order: string hashing is salted per process, and a vectorised sum may round
    # an element differently at a different position, so the same candidates in another order
    # could score a last bit apart in another process (the worker vs the in-process harness).
    items = sorted(candidates)
    w = weights
    cat_of = catalog.categories
    cats = [cat_of(i) for i in items]
    f = np.zeros((len(FEATURES), len(items)))
    best_cooc = max(cooc.values(), default=0.0) or 1.0
    if cooc:
        f[0] = [cooc.get(i, 0.0) for i in items]
        f[0] /= best_cooc
    if total > 0.0 and w.category:
        share = {c: v / total for c, v in affinity.items()}
        f[1] = [sum([share.get(x, 0.0) for x in c]) / len(c) if c else 0.0 for c in cats]
    f[2] = np.log1p(popularity.values(items))
    f[2] /= f[2].max() or 1.0
    # The search's own results are not scored again: the same cosines, computed once.
    content = shared.content.similarities(query, items, version=shared.content.version or "", known=found) if query is not None else {}
    if content:
        f[3] = np.maximum(0.0, [content.get(i, 0.0) for i in items])
        f[3] /= f[3].max() or 1.0
    if social:
        f[4] = [social[i][0] if i in social else 0.0 for i in items]
        f[4] /= f[4].max() or 1.0
    if segment:
        f[5] = [segment[i][0] if i in segment else 0.0 for i in items]
        f[5] /= f[5].max() or 1.0
    negative = knn.score(disliked, items) if disliked else {}
    cat_sentiment = _negative_categories(profile) if w.sentiment else {}
    if negative or cat_sentiment:
        f[6] = [
            negative.get(i, 0.0) / best_cooc + (max(cat_sentiment.get(x, 0.0) for x in c) if c and cat_sentiment else 0.0)
            for i, c in zip(items, cats, strict=True)
        ]
        np.minimum(f[6], 1.0, out=f[6])
    return Pool(items, f, Evidence(profile, recent, shared, catalog, affinity, total, social, segment, query))


def _catalog_order(shared: SharedState, catalog: Catalog) -> list[str]:
    """The catalog in a stable hash order, cached until the catalog's id set changes. The items
    taken from it all score 0, so the final per-user tie order decides among them."""
    ids = catalog.ids()
    cached = shared.cache.get("catalog_order")
    if cached is None or cached[0] is not ids:
        cached = (ids, sorted(ids, key=lambda i: (tie_hash(i), i)))
        shared.cache["catalog_order"] = cached
    return cached[1]


def _negative_categories(profile: Profile) -> dict[str, float]:
    """Category -> how negative the user's mean sentiment on it is (0 when not negative)."""
    return {c: -m for c, m in sentiment_means(profile.sentiment).items() if m < 0.0 and c != "*"}


def _jaccard(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    if not a or not b:
        return 0.0
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


_Entry = tuple[float, bytes, str, tuple[float, ...]]


def _mmr(scored: list[_Entry], catalog: Catalog, k: int, diversity: float) -> list[_Entry]:
    """Greedy maximal marginal relevance over the best ``4k``: relevance scaled to [0, 1],
    minus ``diversity`` times the largest category overlap with what was chosen."""
    pool = scored[: 4 * k]
    top = pool[0][0] or 1.0
    cats = {t[2]: catalog.categories(t[2]) for t in pool}
    chosen: list[_Entry] = []
    while pool and len(chosen) < k:
        best_i, best_v = 0, -math.inf
        for i, t in enumerate(pool):
            overlap = max((_jaccard(cats[t[2]], cats[c[2]]) for c in chosen), default=0.0)
            value = (1.0 - diversity) * t[0] / top - diversity * overlap
            if value > best_v:  # strict: earlier (better-ranked) entries win ties
                best_i, best_v = i, value
        chosen.append(pool.pop(best_i))
    return chosen
