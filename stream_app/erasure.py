"""Erasing a user, the pipeline's side: the steps :class:`stream_app.pipeline.Pipeline` takes
for an ``erasure`` record of a user it owns, and for another worker's erase delta.

What goes, and why the aggregates stay, is in the README ("Erasure"); the CLI side (``persona
erase``) is :mod:`stream_app.erase`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from scoring.shared import ERASE, Delta, SharedState
from state.events import Erasure, EventKind
from state.profile import Origin, Profile
from stream_app import metrics
from stream_app.emitter import Coalescer, Trigger
from stream_app.experiment import LiveQuality

if TYPE_CHECKING:
    from stream_app.stores import Emit, Publish, Store


class ErasureSteps:
    """Mixed into :class:`stream_app.pipeline.Pipeline`, whose state it works on."""

    store: Store
    coalescer: Coalescer
    live: LiveQuality
    shared: SharedState
    _publish: Publish | None
    _emit_raw: Emit
    _topic_of: Callable[[EventKind], str]
    _monotonic: Callable[[], float]
    _wall: Callable[[], float]

    def emit(self, user_id: str, profile: Profile, trigger: Trigger) -> None:
        raise NotImplementedError  # Pipeline.emit

    def erase(self, event: Erasure, origin: Origin, partition: int) -> None:
        """Erase ``event.user_id``: the profile (cache, RocksDB, changelog tombstone), pending
        and last messages, the user in the social graph (here, and through the published
        delta on every worker, where the same delta also enters the suppression list that
        drops a replay of the user's older input), the user in the profiles of their followers,
        and a tombstone on the recommendations topic. Idempotent: a redelivered erasure
        deletes what is there again (nothing) and sends the tombstones again."""
        user = event.user_id
        key = user.encode()
        followers = self.shared.social.all_followers(user)
        self.store.delete(key, partition)
        metrics.ERASED_COPIES_PURGED.inc(self.store.purge(key))
        self.coalescer.forget(user)
        self.live.forget(user)
        delta = Delta(source=origin.source, offset=origin.offset, kind=ERASE, user=user, ts=event.ts)
        # Seen before only when this very record was erased before (a redelivery): its delta
        # is on the deltas topic already, and the state rebuilt from it knows the erasure.
        if self.shared.apply(delta) and self._publish is not None:
            self._publish(delta)
        self._emit_raw(key, None)
        metrics.ERASURES.inc()
        metrics.USERS_ERASED.set(len(self.shared.erased))
        self._unfollow_erased(user, followers, None)

    def erased_elsewhere(self, user: str, followers: list[str], record_ts: float | None) -> None:
        """Another worker erased ``user`` (its delta, already applied to the shared state): the
        caches here, stale copies in partitions held before, and the followers held here."""
        self.coalescer.forget(user)
        self.live.forget(user)
        metrics.ERASED_COPIES_PURGED.inc(self.store.purge(user.encode()))
        metrics.USERS_ERASED.set(len(self.shared.erased))
        self._unfollow_erased(user, followers, record_ts)

    def _unfollow_erased(self, user: str, followers: list[str], record_ts: float | None) -> None:
        """The erased ``user`` leaves the ``following`` (and ``unfollowed``) of their followers
        held here; each gets a fresh list (their social candidates drew on the user)."""
        for follower in followers:
            found = self.store.find(follower.encode())
            if found is None:
                continue
            profile, partition = found
            # Both the edge and an unfollow's tombstone name the erased user.
            followed = profile.following.pop(user, None) is not None
            if profile.unfollowed.pop(user, None) is None and not followed:
                continue
            self.store.put(follower.encode(), profile, partition)
            trigger = Trigger(event_ts=profile.last_event_ts, record_ts=record_ts if record_ts is not None else self._wall())
            if self.coalescer.offer(follower, self._monotonic(), trigger):
                self.emit(follower, profile, trigger)
