"""The follow graph and what followed users engaged with lately: a social candidate source.

"People you follow engaged with this" is a strong signal where a trust graph exists (CiaoDVD's
``trusts.txt`` becomes ``Follow`` events), and it is the one signal that reaches a user whose own
history is empty but who follows somebody. This module keeps the two pieces of state it needs,
from events only, and scores from them:

- **edges**: per (follower, followee), the latest ``follow`` and the latest ``unfollow`` event
  time. The edge is on when the follow is newer; an unfollow wins a tie. Both are maxima, so the
  result does not depend on arrival order: a late (replayed, re-delivered) follow older than an
  unfollow cannot resurrect the edge. The same rule as :func:`state.profile.apply` uses for a
  user's own ``following``, so both sides of the graph agree. Tombstones are kept forever (that is
  what makes the rule order-independent): memory is one entry per pair ever seen. Self-follows
  are ignored.
- **recent engagement**: per user, the last ``recent`` distinct items engaged with (by event time)
  and a decayed weight for each (``sum of weights x 2 ** (-(T - t) / half_life)``, kept at the
  item's own reference time exactly as :class:`scoring.popularity.Popularity` does). It is kept
  for every followed user, and for the users nobody follows who engaged most recently, within
  ``quiet_bytes`` of estimated memory (:func:`quiet_window_bytes`): a follow may arrive after
  the followee's engagements, so those are not dropped at once, but every worker holds this
  state for *all* users, and a million users who engage and are never followed must not cost
  ``recent x users`` entries (issue 13: that was most of a worker's memory per user). The bound
  is bytes, not users: a bound of 100,000 users held ~44 MB of one-item windows and ~320 MB of
  full (20-item) ones. A follow moves a quiet user's window into the followed set; a
  quiet user pushed out of the bounded set starts over if followed later. Which quiet user is
  pushed out depends on the order deltas arrive in, so two workers may differ there (as the
  co-occurrence cut does). An item evicted from a window loses its accumulated weight; one
  engaged again later starts over.

Scores: ``score(F, i) = sum over f in F of w_f(i)`` decayed to the caller's ``now``, for the
followees ``F`` given. Equal scores go by :func:`scoring.popularity.tie_hash` (a stable hash of
the item id), the id only settling a hash collision, never by the id string alone. Nothing reads
a wall clock: ``now`` is an event time the caller passes in.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import OrderedDict
from collections.abc import Collection, Iterable

import msgspec

from scoring.popularity import tie_hash
from state.decay import SECONDS_PER_DAY, factor, weight_at

#: Distinct recent items kept per user.
RECENT = 20
#: Followers returned by :meth:`SocialGraph.followers_of` (the fan-out of one refresh).
FANOUT_CAP = 1000
#: Estimated memory of the windows of users nobody follows (the most recently engaged first).
QUIET_BYTES = 32 * 1024 * 1024
#: A quiet window's memory beside its user id string: the ordered dict's slot and node and the
#: window's own dict; and one item's beside its id string: its slot, _Engagement and floats
#: (tracemalloc over 20,000 windows of 1, 5 and 20 items: 294 + 145 B per item with the ids).
WINDOW_OVERHEAD = 235
ITEM_OVERHEAD = 87


def quiet_window_bytes(user: str, items: Collection[str]) -> int:
    """The estimated memory of one user's window (what ``quiet_bytes`` counts)."""
    return WINDOW_OVERHEAD + sys.getsizeof(user) + sum(ITEM_OVERHEAD + sys.getsizeof(i) for i in items)


class _Engagement:
    """One user's decayed weight on one item: ``value`` at ``ref`` (its latest event time)."""

    __slots__ = ("value", "ref")

    def __init__(self, value: float, ref: float) -> None:
        self.value = value
        self.ref = ref


class WindowSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """One user's window of recent engagement, in its order."""

    user: str
    items: list[str]
    values: list[float]
    refs: list[float]


class SocialSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """:class:`SocialGraph`'s edges and windows, exactly (``scoring.snapshot``)."""

    #: every (follower, followee) pair ever seen, with its latest follow and unfollow times
    followers: list[str]
    followees: list[str]
    followed: list[float]
    unfollowed: list[float]
    #: the windows of followed users, then those of quiet users, least recently engaged first
    recent: list[WindowSnapshot]
    quiet: list[WindowSnapshot]
    quiet_evictions: int


def _windows(windows: Iterable[tuple[str, dict[str, _Engagement]]]) -> list[WindowSnapshot]:
    return [
        WindowSnapshot(user=user, items=list(items), values=[e.value for e in items.values()], refs=[e.ref for e in items.values()])
        for user, items in windows
    ]


def _window_of(w: WindowSnapshot) -> dict[str, _Engagement]:
    return {item: _Engagement(v, r) for item, v, r in zip(w.items, w.values, w.refs, strict=True)}


class SocialGraph:
    """Who follows whom (event-time last-writer-wins, unfollow wins a tie), and what each followed user engaged with recently."""

    def __init__(
        self, *, half_life_days: float, recent: int = RECENT, fanout_cap: int = FANOUT_CAP, quiet_bytes: int = QUIET_BYTES
    ) -> None:
        if not half_life_days > 0.0 or not math.isfinite(half_life_days):
            raise ValueError(f"half_life_days must be a positive number, got {half_life_days}")
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        if fanout_cap < 0:
            raise ValueError(f"fanout_cap must be >= 0, got {fanout_cap}")
        if quiet_bytes < 0:
            raise ValueError(f"quiet_bytes must be >= 0, got {quiet_bytes}")
        self._half_life_days = half_life_days
        self._hl = half_life_days * SECONDS_PER_DAY
        self.recent = recent
        self.fanout_cap = fanout_cap
        # (follower, followee) -> (latest follow ts, latest unfollow ts); -inf for "never".
        self._edges: dict[tuple[str, str], tuple[float, float]] = {}
        # The edges that are on, both ways: id -> other id -> the follow's event time.
        self._out: dict[str, dict[str, float]] = {}
        self._in: dict[str, dict[str, float]] = {}
        # user -> item -> decayed weight; at most ``recent`` items per user. Followed users
        # (or users that were followed) here; users nobody follows in ``_quiet``, least
        # recently engaged first, within ``quiet_bytes`` (module docstring).
        self._recent: dict[str, dict[str, _Engagement]] = {}
        self._quiet: OrderedDict[str, dict[str, _Engagement]] = OrderedDict()
        self.quiet_bytes = quiet_bytes
        #: estimated memory of the quiet windows held (:func:`quiet_window_bytes`)
        self.quiet_nbytes = 0
        #: quiet users whose window was dropped to keep the bound
        self.quiet_evictions = 0

    # --- the graph -------------------------------------------------------------------------
    def follow(self, follower: str, followee: str, ts: float) -> None:
        """``follower`` follows ``followee`` as of event time ``ts``."""
        self._set(follower, followee, ts, follow=True)

    def unfollow(self, follower: str, followee: str, ts: float) -> None:
        """``follower`` stops following ``followee`` as of ``ts``. Kept as a tombstone, so a
        follow older than it (or as old) that arrives later does not bring the edge back."""
        self._set(follower, followee, ts, follow=False)

    def _set(self, follower: str, followee: str, ts: float, *, follow: bool) -> None:
        if follower == followee:
            return
        key = (follower, followee)
        followed, unfollowed = self._edges.get(key, (-math.inf, -math.inf))
        if follow:
            followed = max(followed, ts)
        else:
            unfollowed = max(unfollowed, ts)
        self._edges[key] = (followed, unfollowed)
        if followed > unfollowed:
            self._out.setdefault(follower, {})[followee] = followed
            self._in.setdefault(followee, {})[follower] = followed
            window = self._pop_quiet(followee)
            if window is not None:
                self._recent.setdefault(followee, window)
        else:
            self._drop(self._out, follower, followee)
            self._drop(self._in, followee, follower)

    @staticmethod
    def _drop(index: dict[str, dict[str, float]], a: str, b: str) -> None:
        row = index.get(a)
        if row is not None and row.pop(b, None) is not None and not row:
            del index[a]

    def edges(self) -> int:
        """Follow edges that are on now."""
        return sum(len(row) for row in self._out.values())

    def is_following(self, follower: str, followee: str) -> bool:
        """Whether the edge is on now."""
        return followee in self._out.get(follower, {})

    def followers(self, user: str) -> int:
        """How many users follow ``user`` now."""
        return len(self._in.get(user, {}))

    def followees(self, user: str) -> int:
        """How many users ``user`` follows now."""
        return len(self._out.get(user, {}))

    def following_of(self, user: str) -> list[str]:
        """The users ``user`` follows now, sorted by id (what :meth:`top` takes)."""
        return sorted(self._out.get(user, {}))

    def followers_of(self, user: str) -> list[str]:
        """The users following ``user`` now, at most ``fanout_cap`` of them: the earliest
        following first (by the event time of their latest follow), equal times by id. For the
        fan-out of refreshes when ``user`` engages with something; the cap bounds what one
        celebrity's event costs."""
        row = self._in.get(user)
        if not row or self.fanout_cap == 0:
            return []
        best = heapq.nsmallest(self.fanout_cap, ((ts, f) for f, ts in row.items()))
        return [f for _, f in best]

    def all_followers(self, user: str) -> list[str]:
        """Every user who follows ``user`` now or unfollowed them (a tombstone), sorted, no
        cap: for an erasure, whose followers' profiles name the user either way. A scan of
        every pair, like :meth:`forget`."""
        return sorted({follower for follower, followee in self._edges if followee == user})

    def forget(self, user: str) -> None:
        """Erase ``user``: every edge from or to them (tombstones too) and their recent
        engagement.

        Tombstones are not indexed by user, so this scans every pair ever seen: erasures are
        rare, and a scan of a million pairs takes a fraction of a second."""
        followers = sorted(self._in.get(user, {}))
        for followee in list(self._out.get(user, {})):
            self._drop(self._in, followee, user)
        for follower in followers:
            self._drop(self._out, follower, user)
        self._out.pop(user, None)
        self._in.pop(user, None)
        for pair in [p for p in self._edges if user in p]:
            del self._edges[pair]
        self._recent.pop(user, None)
        self._pop_quiet(user)

    def knows(self, user: str) -> bool:
        """Whether anything here names ``user`` (an edge, a tombstone or recent engagement)."""
        return (
            user in self._out or user in self._in or user in self._recent or user in self._quiet
            or any(user in p for p in self._edges)
        )

    # --- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> SocialSnapshot:
        """The edges (with tombstones) and every window; the on-edge indexes are derived."""
        return SocialSnapshot(
            followers=[a for a, _ in self._edges],
            followees=[b for _, b in self._edges],
            followed=[f for f, _ in self._edges.values()],
            unfollowed=[u for _, u in self._edges.values()],
            recent=_windows(self._recent.items()),
            quiet=_windows(self._quiet.items()),
            quiet_evictions=self.quiet_evictions,
        )

    def empty_like(self) -> SocialGraph:
        """A new, empty graph made as this one was."""
        return SocialGraph(
            half_life_days=self._half_life_days, recent=self.recent, fanout_cap=self.fanout_cap, quiet_bytes=self.quiet_bytes
        )

    def restore(self, snap: SocialSnapshot) -> None:
        """Load ``snap`` into this empty graph: it then answers as the one that made it."""
        if self._edges or self._recent or self._quiet:
            raise ValueError("restore needs an empty SocialGraph")
        pairs = zip(snap.followers, snap.followees, snap.followed, snap.unfollowed, strict=True)
        for follower, followee, followed, unfollowed in pairs:
            self._edges[(follower, followee)] = (followed, unfollowed)
            # What _set leaves for a pair: on while the latest follow is newer than the latest unfollow.
            if followed > unfollowed:
                self._out.setdefault(follower, {})[followee] = followed
                self._in.setdefault(followee, {})[follower] = followed
        self._recent = {w.user: _window_of(w) for w in snap.recent}
        self._quiet = OrderedDict((w.user, _window_of(w)) for w in snap.quiet)
        # The estimate is what every change kept it at (this Python's sizes), recomputed.
        self.quiet_nbytes = sum(quiet_window_bytes(user, window) for user, window in self._quiet.items())
        self.quiet_evictions = snap.quiet_evictions

    # --- engagement ------------------------------------------------------------------------
    def engaged(self, user: str, item: str, weight: float, ts: float) -> None:
        """``user`` engaged with ``item`` with ``weight`` at event time ``ts``.

        The item's weight is decayed by event time (exact, whatever the arrival order, while it
        stays in the window). A new item enters the user's window of ``recent`` items by pushing
        out the one engaged with longest ago (by its latest event time, then id); an event older
        than everything in a full window is dropped, since it would be pushed out at once.
        """
        items = self._recent.get(user)
        quiet = False  # whether the window counts against quiet_bytes
        if items is None:
            items = self._quiet_window(user)
            quiet = user in self._quiet  # not when a follow came first (_quiet_window)
        e = items.get(item)
        if e is None:
            if len(items) >= self.recent:
                oldest = min(items, key=lambda i: (items[i].ref, i))
                if (ts, item) < (items[oldest].ref, oldest):
                    return
                del items[oldest]
                if quiet:
                    self.quiet_nbytes -= ITEM_OVERHEAD + sys.getsizeof(oldest)
            items[item] = _Engagement(weight, ts)
            if quiet:
                self.quiet_nbytes += ITEM_OVERHEAD + sys.getsizeof(item)
                self._shrink_quiet()
            return
        if ts > e.ref:
            e.value, e.ref = e.value * factor(ts - e.ref, self._hl), ts
        e.value += weight_at(weight, ts, e.ref, self._hl)

    def _quiet_window(self, user: str) -> dict[str, _Engagement]:
        """The window of a user not in the followed set, made the most recent quiet one."""
        if user in self._in:  # followed before engaging at all: no window was there to move
            items = self._recent[user] = self._pop_quiet(user) or {}
            return items
        items_or_none = self._quiet.get(user)
        if items_or_none is not None:
            self._quiet.move_to_end(user)
            return items_or_none
        items = self._quiet[user] = {}
        self.quiet_nbytes += quiet_window_bytes(user, ())
        return items

    def _pop_quiet(self, user: str) -> dict[str, _Engagement] | None:
        window = self._quiet.pop(user, None)
        if window is not None:
            self.quiet_nbytes -= quiet_window_bytes(user, window)
        return window

    def _shrink_quiet(self) -> None:
        """Drop the least recently engaged quiet windows while over the budget; never the
        most recent one (the window just engaged with)."""
        while self.quiet_nbytes > self.quiet_bytes and len(self._quiet) > 1:
            user, window = self._quiet.popitem(last=False)
            self.quiet_nbytes -= quiet_window_bytes(user, window)
            self.quiet_evictions += 1

    def _window(self, user: str) -> dict[str, _Engagement]:
        items = self._recent.get(user)
        return items if items is not None else self._quiet.get(user, {})

    def recent_items(self, user: str, now: float) -> dict[str, float]:
        """The user's window: item -> its weight decayed to ``now``."""
        return {i: weight_at(e.value, e.ref, now, self._hl) for i, e in self._window(user).items()}

    def interest_users(self, following: Iterable[str]) -> list[str]:
        """Those of ``following`` (followee ids) that engaged with anything still in their
        window, sorted and without repeats: the users whose activity :meth:`top` draws on."""
        return sorted(u for u in set(following) if self._window(u))

    def top(self, following: Iterable[str], k: int, *, exclude: Collection[str], now: float) -> list[tuple[str, float, int]]:
        """The ``k`` best items the followees ``following`` engaged with recently, not in
        ``exclude``: ``(item, score, followees who engaged with it)``, best first.

        ``score = sum over followees of their weight on the item decayed to now``; only
        positive scores are returned (so the list may be shorter than ``k``). Followees are
        summed in id order so the float result does not depend on the order given.
        """
        if k <= 0:
            return []
        scores: dict[str, float] = {}
        counts: dict[str, int] = {}
        hl = self._hl
        for user in sorted(set(following)):
            for item, e in self._window(user).items():
                if item in exclude:
                    continue
                scores[item] = scores.get(item, 0.0) + weight_at(e.value, e.ref, now, hl)
                counts[item] = counts.get(item, 0) + 1
        keyed = ((-s, tie_hash(i), i) for i, s in scores.items() if s > 0.0)
        return [(i, -s, counts[i]) for s, _, i in heapq.nsmallest(k, keyed)]
