"""A small deterministic SYNTHETIC stream (every id starts with ``syn-``) for demos and tests.

Not real data. Shape: 50 items in 8 categories with Zipf-like popularity and prices,
200 users with attributes and Dirichlet category preferences, 300 follows, and 5,000
behaviour events (70% clicks, 20% purchases, 10% reviews) one minute apart on average
from ``T0``. Whether a user picks an item depends on the item's popularity times the
user's taste for its category, so profile updates have a real signal to find.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from state.events import AttributeValue, Click, Event, Follow, Item, Purchase, Review, User

N_ITEMS: Final = 50
N_CATEGORIES: Final = 8
N_USERS: Final = 200
N_BEHAVIOUR: Final = 5_000
N_FOLLOWS: Final = 300
T0: Final = 1_700_000_000.0
KIND_SHARES: Final = (0.7, 0.2, 0.1)  # click, purchase, review

_NOUNS: Final = (
    "gadget", "novel", "jacket", "board game", "drill", "snack box", "headset", "houseplant"
)
_REVIEWS: Final = (
    "Disappointed with {title}; would not buy it again.",
    "{title} was below what I expected.",
    "{title} is fine, nothing special.",
    "Good {noun}: {title} does the job well.",
    "Love {title}, the best {noun} I have had.",
)
_GENDERS: Final = ("F", "M", "X")
_COUNTRIES: Final = ("US", "DE", "IN", "BR", "JP")


def generate(seed: int) -> list[Event]:
    """The synthetic events for ``seed``, in creation order (not yet sorted)."""
    rng = np.random.default_rng(seed)
    item_cat = rng.integers(0, N_CATEGORIES, size=N_ITEMS)
    # The r-th most popular item is drawn ~1/r^1.1 as often; which item is r-th is random.
    popularity = (1.0 / np.arange(1, N_ITEMS + 1) ** 1.1)[rng.permutation(N_ITEMS)]
    prices = np.round(rng.lognormal(mean=3.0, sigma=0.7, size=N_ITEMS), 2)
    # A small concentration gives each user one or two favourite categories.
    prefs = rng.dirichlet(np.full(N_CATEGORIES, 0.4), size=N_USERS)
    activity = rng.lognormal(0.0, 1.0, size=N_USERS)
    activity /= activity.sum()

    titles = [f"Synthetic {_NOUNS[int(k)]} {i:03d}" for i, k in enumerate(item_cat)]
    events: list[Event] = [
        Item(
            event_id=f"syn-item-{i:03d}",
            ts=T0,
            item_id=f"syn-i-{i:03d}",
            title=titles[i],
            text=f"{titles[i]}: a synthetic {_NOUNS[int(k)]} in category syn-cat-{int(k)}.",
            categories=[f"syn-cat-{int(k)}"],
            price=float(prices[i]),
        )
        for i, k in enumerate(item_cat)
    ]
    events.extend(_users(rng))
    behaviour = _behaviour(rng, item_cat, popularity, prefs, activity, prices, titles)
    end = behaviour[-1].ts
    events.extend(_follows(rng, activity, end))
    events.extend(behaviour)
    return events


def _users(rng: np.random.Generator) -> list[Event]:
    ages = rng.integers(18, 75, size=N_USERS).tolist()
    genders = rng.integers(0, len(_GENDERS), size=N_USERS).tolist()
    countries = rng.integers(0, len(_COUNTRIES), size=N_USERS).tolist()
    users: list[Event] = []
    for u in range(N_USERS):
        attributes: dict[str, AttributeValue] = {
            "age": int(ages[u]),
            "gender": _GENDERS[genders[u]],
            "country": _COUNTRIES[countries[u]],
            "synthetic": True,
        }
        uid = f"syn-u-{u:03d}"
        users.append(User(event_id=f"syn-user-{u:03d}", ts=T0, user_id=uid, attributes=attributes))
    return users


def _behaviour(
    rng: np.random.Generator,
    item_cat: np.ndarray,
    popularity: np.ndarray,
    prefs: np.ndarray,
    activity: np.ndarray,
    prices: np.ndarray,
    titles: list[str],
) -> list[Event]:
    affinity = prefs[:, item_cat] * popularity
    cumulative = np.cumsum(affinity / affinity.sum(axis=1, keepdims=True), axis=1)
    users = rng.choice(N_USERS, size=N_BEHAVIOUR, p=activity)
    draws = rng.random(N_BEHAVIOUR)
    # Inverse-CDF sampling per row; the clip guards the last bucket against rounding.
    items = np.minimum((cumulative[users] < draws[:, None]).sum(axis=1), N_ITEMS - 1)
    kinds = rng.choice(3, size=N_BEHAVIOUR, p=KIND_SHARES)
    times = np.round(T0 + 60.0 + np.cumsum(rng.exponential(60.0, size=N_BEHAVIOUR)), 3)
    quantities = rng.choice([1, 2, 3], size=N_BEHAVIOUR, p=[0.85, 0.1, 0.05])
    # Taste relative to a uniform user: above 1 likes the category, below 1 does not.
    taste = prefs[users, item_cat[items]] * N_CATEGORIES
    ratings = np.clip(np.rint(3.0 + np.log(taste + 1e-3) + rng.normal(0.0, 0.8, N_BEHAVIOUR)), 1, 5)

    out: list[Event] = []
    rows = zip(users.tolist(), items.tolist(), kinds.tolist(), times.tolist(), strict=True)
    for n, (u, i, kind, ts) in enumerate(rows):
        user_id, item_id = f"syn-u-{u:03d}", f"syn-i-{i:03d}"
        if kind == 0:
            out.append(Click(event_id=f"syn-c-{n:05d}", ts=ts, user_id=user_id, item_id=item_id))
        elif kind == 1:
            out.append(
                Purchase(
                    event_id=f"syn-p-{n:05d}",
                    ts=ts,
                    user_id=user_id,
                    item_id=item_id,
                    price=float(prices[i]),
                    quantity=int(quantities[n]),
                )
            )
        else:
            stars = int(ratings[n])
            noun = _NOUNS[int(item_cat[i])]
            out.append(
                Review(
                    event_id=f"syn-r-{n:05d}",
                    ts=ts,
                    user_id=user_id,
                    item_id=item_id,
                    text=_REVIEWS[stars - 1].format(title=titles[i], noun=noun),
                    rating=float(stars),
                    summary=f"{stars} stars (synthetic)",
                )
            )
    return out


def _follows(rng: np.random.Generator, activity: np.ndarray, end: float) -> list[Event]:
    # Active users attract followers, as on real platforms.
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(pairs) < N_FOLLOWS:
        follower = int(rng.integers(0, N_USERS))
        followee = int(rng.choice(N_USERS, p=activity))
        if follower != followee and (follower, followee) not in seen:
            seen.add((follower, followee))
            pairs.append((follower, followee))
    times = np.sort(np.round(rng.uniform(T0 + 1.0, end, size=N_FOLLOWS), 3)).tolist()
    return [
        Follow(
            event_id=f"syn-f-{a:03d}-{b:03d}",
            ts=ts,
            user_id=f"syn-u-{a:03d}",
            followee_id=f"syn-u-{b:03d}",
        )
        for (a, b), ts in zip(pairs, times, strict=True)
    ]
