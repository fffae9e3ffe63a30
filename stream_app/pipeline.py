"""The per-event path, without Faust: decode -> apply -> scoring state -> coalesce -> score -> message.

The worker's agents only *wire* this object: they turn a Kafka message into a
:class:`Record`, hand it to :meth:`Pipeline.process`, send the dead letter it returns
(if any) and keep offsets moving. Everything that decides what a user's profile and
recommendations become lives here, behind two small seams:

- a :class:`Store` of decoded profiles (the worker's write-back cache over RocksDB; a
  dict in tests and in the in-process evaluator),
- an :data:`Emit` callable that takes one encoded recommendation message (the worker
  buffers it on the producer with ``send_soon``; tests collect it in a list).

Catalog and item vectors come from anything with the replicas' read methods. Global
scoring knowledge (popularity, co-occurrence, content vectors, segment priors, the social
graph) is a :class:`scoring.shared.SharedState` fed by :class:`scoring.shared.Delta` records:
each applied event becomes one, applied here at once and handed to ``publish`` (the worker
sends it to the ``scoring.deltas`` topic, which every worker tails: see
``stream_app.shared_replica``); :meth:`Pipeline.apply_delta` folds in the deltas of other workers.

Clocks are injected: ``monotonic`` paces the coalescer, ``wall`` stamps ``generated_at``.
Scores depend on event-time state only (the popularity ranking cache too is refreshed by
event time), so a replay gives the same messages whether it runs in process or through
the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from scoring.baseline import recommend
from scoring.knn import ItemKNN
from scoring.messages import Recommendations
from scoring.messages import encode as encode_recs
from scoring.migrate import migrated_interest
from scoring.popularity import Popularity
from scoring.ranker import DEFAULT_WEIGHTS, HISTORY, Scorer, Weights, history, rank
from scoring.segments import segments_of
from scoring.shared import ENGAGE, ERASE, FOLLOW, UNFOLLOW, Delta, new_shared_state
from scoring.social import QUIET_BYTES
from state.batch import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, is_batch
from state.catalog import Catalog
from state.events import MAX_AHEAD_S, DeadLetter, Erasure, Event, EventKind, Follow, Item, Purchase, Review, decode, kind_of
from state.interest import ItemVector
from state.profile import Encoding, Origin, Params, Profile, apply, is_duplicate, new_profile
from stream_app import metrics
from stream_app.batches import process_batch
from stream_app.emitter import Coalescer, Trigger
from stream_app.erasure import ErasureSteps
from stream_app.experiment import CAPACITY_BYTES, SERVED, SHADOW, Candidate, LiveQuality, assigned
from stream_app.records import APPLIED, CATALOG, DUPLICATE, ERASED, Outcome, Record, Result
from stream_app.settings import Settings
from stream_app.stores import Emit, Publish, Store, Vectors

# Record, Result and the outcomes live in stream_app.records; callers import them from here too.
__all__ = ["APPLIED", "CATALOG", "DUPLICATE", "ERASED", "Outcome", "Pipeline", "Record", "Result"]


class Pipeline(ErasureSteps):
    """The worker's per-event logic over a profile store, a catalog and item vectors (the
    erasure steps live in :mod:`stream_app.erasure`)."""

    def __init__(
        self,
        *,
        params: Params,
        store: Store,
        catalog: Catalog,
        vectors: Vectors,
        emit: Emit,
        topic_of: Callable[[EventKind], str],
        top_k: int,
        emit_interval_s: float,
        popularity_half_life_days: float,
        max_payload_bytes: int,
        max_event_ahead_s: float = MAX_AHEAD_S,
        max_batch_events: int = MAX_BATCH_EVENTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        ranker: str = "blend",
        weights: Weights = DEFAULT_WEIGHTS,
        publish: Publish | None = None,
        social_fanout: int = 100,
        cooc_neighbours: int = 0,
        cooc_window: int = HISTORY,
        live_quality_bytes: int = CAPACITY_BYTES,
        social_quiet_bytes: int = QUIET_BYTES,
        catchup_after_s: float = 0.0,
    ) -> None:
        self.params = params
        #: "blend": scoring.ranker over collaborative, category and trending candidates;
        #: "baseline": scoring.baseline (category affinity x popularity)
        self.ranker = ranker
        self.weights = weights
        #: global scoring knowledge, the same on every worker (module docstring)
        self.shared = new_shared_state(
            popularity_half_life_days=popularity_half_life_days,
            cooc_neighbours=cooc_neighbours,
            social_fanout=social_fanout,
            social_quiet_bytes=social_quiet_bytes,
        )
        self.store = store
        self.catalog = catalog
        self.vectors = vectors
        self._publish = publish
        #: a first engagement co-occurs with the user's last this many distinct items
        self.cooc_window = cooc_window
        #: followers refreshed when someone they follow engages (0: none)
        self.social_fanout = social_fanout
        self.coalescer = Coalescer(emit_interval_s)
        #: a change whose record is older than this (by its timestamp) is offered as catch-up
        #: (``Coalescer.offer``); 0: never
        self.catchup_after_s = catchup_after_s
        #: a trained ranker in shadow or on an A/B share (None: production only)
        self.candidate: Candidate | None = None
        #: the live hit rate, per ranker version (stream_app.experiment)
        self.live = LiveQuality(live_quality_bytes)
        self._emit_raw = emit
        self._topic_of = topic_of
        self._top_k = top_k
        self.max_payload_bytes = max_payload_bytes
        self.max_event_ahead_s = max_event_ahead_s
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self._monotonic = monotonic
        self._wall = wall

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store: Store,
        catalog: Catalog,
        vectors: Vectors,
        emit: Emit,
        top_k: int | None = None,
        emit_interval_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        publish: Publish | None = None,
        catchup_after_s: float | None = None,
    ) -> Pipeline:
        """The pipeline the worker runs, from its settings (the evaluator overrides ``top_k``,
        the emit interval, the catch-up age and the clocks)."""
        return cls(
            params=settings.params(),
            store=store,
            catalog=catalog,
            vectors=vectors,
            emit=emit,
            topic_of=settings.topic,
            top_k=settings.top_k if top_k is None else top_k,
            emit_interval_s=settings.emit_interval_s if emit_interval_s is None else emit_interval_s,
            popularity_half_life_days=settings.popularity_half_life_days,
            max_payload_bytes=settings.max_payload_bytes,
            max_event_ahead_s=settings.max_event_ahead_s,
            max_batch_events=settings.max_batch_events,
            max_batch_bytes=settings.max_batch_bytes,
            ranker=settings.ranker,
            weights=settings.rank_weights(),
            social_fanout=settings.social_fanout,
            cooc_neighbours=settings.cooc_neighbours,
            cooc_window=settings.cooc_window,
            live_quality_bytes=settings.live_quality_bytes,
            social_quiet_bytes=settings.social_quiet_bytes,
            catchup_after_s=settings.catchup_after_s if catchup_after_s is None else catchup_after_s,
            publish=publish,
            monotonic=monotonic,
            wall=wall,
        )

    def use_ranker(self, model: Scorer | None) -> None:
        """Rank with a trained ranker from the next ranking on (None: the hand-set weights).
        The worker calls it when the ranker registry's CURRENT moves: a hot swap, no restart."""
        self.weights = replace(self.weights, model=model)

    def use_candidate(self, candidate: Candidate | None) -> None:
        """Run a candidate ranker in shadow or on an A/B share (:mod:`stream_app.experiment`);
        None stops it."""
        self.candidate = candidate

    def ranker_version(self, weights: Weights | None = None) -> str:
        """The name a list's ranker goes by (the message's ``model``, the live-quality label)."""
        model = (self.weights if weights is None else weights).model
        if self.ranker == "baseline":
            return "baseline-v1"
        return "blend-v1" if model is None else model.version

    @property
    def popularity(self) -> Popularity:
        return self.shared.popularity

    @property
    def knn(self) -> ItemKNN:
        return self.shared.knn

    # --- per record ------------------------------------------------------------------
    def decode(self, kind: EventKind, record: Record) -> Event | DeadLetter:
        return decode(
            kind, record.key, record.value, max_bytes=self.max_payload_bytes, record_ts=record.timestamp, max_ahead_s=self.max_event_ahead_s
        )

    def process(self, kind: EventKind, record: Record) -> Result:
        """Decode one record of a ``kind`` topic and apply it (or say why not); a batch record
        (``state.batch``) event by event."""
        if is_batch(record.value):
            return process_batch(self, kind, record)
        started = time.perf_counter()
        event = self.decode(kind, record)
        if isinstance(event, DeadLetter):
            self.count_dead_letter(record.topic, event)
            return Result("dead_letter", letter=event)
        if isinstance(event, Item):
            # The catalog replica applies it; the items agent only validates and counts.
            metrics.event_counter(record.topic, CATALOG).inc()
            return Result(CATALOG)
        if isinstance(event, Erasure):
            self.erase(event, record.origin, record.partition)
            metrics.event_counter(record.topic, APPLIED).inc()
            return Result(APPLIED, emitted=True)
        result = self.apply_event(event, record.origin, record.partition, record.timestamp)
        metrics.PROCESSING.observe(time.perf_counter() - started)
        return result

    def count_dead_letter(self, topic: str, letter: DeadLetter) -> None:
        metrics.DEAD_LETTERS.labels(letter.reason).inc()
        metrics.event_counter(topic, "dead_letter").inc()

    def apply_event(
        self,
        event: Event,
        origin: Origin,
        partition: int,
        record_ts: float | None,
        encoding: Encoding | None = None,
        deferred: list[Delta] | None = None,
    ) -> Result:
        """Fold one decoded event into its user's profile; update scoring state; maybe emit.
        ``deferred`` (an event of a batch record): no list yet, the event's delta is added there
        for :meth:`settle` once the batch is applied."""
        if isinstance(event, Item):
            raise TypeError("catalog events are applied by the catalog replica, not to a profile")
        if isinstance(event, Erasure):
            raise TypeError("an erasure is not applied to a profile: see Pipeline.erase")
        kind = kind_of(event)
        topic = self._topic_of(kind)
        if self.shared.is_erased(event.user_id, event.ts) or (
            isinstance(event, Follow) and self.shared.is_erased(event.followee_id, event.ts)
        ):
            # A replay of input from before an erasure must not bring the user back, nor put
            # them back into a follower's profile.
            metrics.event_counter(topic, ERASED).inc()
            return Result(ERASED)
        key = event.user_id.encode()
        profile = self.store.get(key, partition) or new_profile(event.user_id)
        item_id: str | None = getattr(event, "item_id", None)
        # A first engagement with an item co-occurs with the user's recent items; read both
        # before the profile changes in place. Reviewed counts as engaged too: a purchase and a
        # review of one item come on two topics in either order, and each order must teach the
        # shared state and the live hit rate the same (test_regression_a_review_that_came_before_
        # its_purchase_made_the_item_new_twice).
        first_engagement = (
            isinstance(event, (Purchase, Review))
            and item_id is not None
            and item_id not in profile.purchased
            and item_id not in profile.reviewed
        )
        if first_engagement and item_id is not None and (not isinstance(event, Review) or event.rating is None or event.rating >= 4):
            self.live.positive(event.user_id, item_id)  # before the event moves anything
        recent = history(profile, self.cooc_window) if first_engagement else []
        categories = self.catalog.categories(item_id) if item_id is not None else ()
        item_vector = self._item_vector(kind, item_id)
        self._migrate_interest(profile, event, origin, item_vector, encoding)
        updated = apply(
            profile,
            event,
            origin=origin,
            categories=categories,
            params=self.params,
            in_place=True,
            encoding=encoding,
            item_vector=item_vector,
        )
        delta: Delta | None = None
        if updated is None:
            self.store.touch(key)
            metrics.event_counter(topic, DUPLICATE).inc()
            outcome = DUPLICATE
        else:
            self.store.put(key, updated, partition)
            metrics.PROFILE_UPDATES.inc()
            metrics.event_counter(topic, APPLIED).inc()
            delta = self._delta(event, origin, updated, item_id, first_engagement, recent, encoding)
            if delta is not None:
                self.shared.apply(delta)
                if self._publish is not None:
                    self._publish(delta)
            outcome = APPLIED
        if deferred is not None:
            if delta is not None:
                deferred.append(delta)
            return Result(outcome)
        deltas = [delta] if delta is not None else []
        emitted = self.settle(event.user_id, updated or profile, self.trigger(event.ts, record_ts), deltas, record_ts)
        return Result(outcome, emitted=emitted)

    def trigger(self, event_ts: float, record_ts: float | None) -> Trigger:
        return Trigger(event_ts=event_ts, record_ts=record_ts if record_ts is not None else self._wall())

    def settle(self, user_id: str, profile: Profile, trigger: Trigger, deltas: list[Delta], record_ts: float | None) -> bool:
        """A user's change offered to the coalescer (``True``: their list was emitted now), then
        to the followers of what they engaged with (after the user's own message)."""
        catch_up = self._behind(trigger)
        if catch_up:
            metrics.CATCHUP_CHANGES.inc()
        emitted = self.coalescer.offer(user_id, self._monotonic(), trigger, catch_up=catch_up)
        if emitted:
            self.emit(user_id, profile, trigger)
        for delta in deltas:
            self._fan_out(delta, record_ts)
        return emitted

    def _delta(
        self,
        event: Event,
        origin: Origin,
        profile: Profile,
        item_id: str | None,
        first: bool,
        recent: list[str],
        encoding: Encoding | None,
    ) -> Delta | None:
        """What ``event`` teaches the global scoring state (None: nothing)."""
        if isinstance(event, Item):
            return None
        source, offset, user, ts = origin.source, origin.offset, event.user_id, event.ts
        if isinstance(event, Follow):
            kind = FOLLOW if event.action == "follow" else UNFOLLOW
            return Delta(
                source=source, offset=offset, index=origin.index, of=origin.of, user=user, ts=ts, kind=kind, target=event.followee_id
            )
        if item_id is None:
            return None
        vector = encoding.vector if isinstance(event, Review) and encoding is not None else b""
        return Delta(
            kind=ENGAGE,
            item=item_id,
            weight=self.params.weight(event),
            first=first,
            recent=recent if first else [],
            segments=list(segments_of(profile.attributes)) if profile.attributes else [],
            vector=vector,
            version=encoding.version if vector and encoding is not None else "",
            source=source,
            offset=offset,
            index=origin.index,
            of=origin.of,
            user=user,
            ts=ts,
        )

    def apply_delta(self, delta: Delta, record_ts: float | None = None) -> bool:
        """A delta another worker published (the shared-state replica): folded in once; the
        followers of its user that live here are refreshed."""
        followers = self.shared.social.all_followers(delta.user) if delta.kind == ERASE else []
        if not self.shared.apply(delta):
            return False
        if delta.kind == ERASE:
            self.erased_elsewhere(delta.user, followers, record_ts)
        self._fan_out(delta, record_ts)
        return True

    def _fan_out(self, delta: Delta, record_ts: float | None) -> None:
        """Someone engaged: the lists of their followers whose profiles live here are stale
        (their social candidates moved). Offered to the coalescer like an own event, capped."""
        # First engagements only: a review of an item the followee already bought adds little
        # to the followers' social candidates and would double the fan-out of Amazon-style data.
        if delta.kind != ENGAGE or not delta.first or not self.social_fanout or not self.weights.social or self.ranker != "blend":
            return
        followers = self.shared.social.followers_of(delta.user)
        if not followers:
            return
        trigger = Trigger(event_ts=delta.ts, record_ts=record_ts if record_ts is not None else self._wall())
        catch_up = self._behind(trigger)  # once for the delta, not per follower
        for follower in followers[: self.social_fanout]:
            profile = self.store.cached(follower.encode())
            if profile is None:
                continue
            if self.coalescer.offer(follower, self._monotonic(), trigger, catch_up=catch_up):
                self.emit(follower, profile, trigger)

    def _behind(self, trigger: Trigger) -> bool:
        """Whether the change's record is a backlog's (older than ``catchup_after_s``): then
        its list waits for the end of the interval."""
        return 0.0 < self.catchup_after_s < self._wall() - trigger.record_ts

    def _migrate_interest(
        self, profile: Profile, event: Event, origin: Origin, vector: ItemVector | None, encoding: Encoding | None
    ) -> None:
        """Before the user's first vector of a new encoder version is added, move the stored
        interest to that version (:mod:`scoring.migrate`) instead of restarting it from one
        vector. Not for a duplicate: it changes nothing then."""
        version = vector.version if vector is not None else (encoding.version if encoding is not None else None)
        old = profile.interest
        if version is None or old is None or old.version == version or version != self.shared.content.version:
            return
        if is_duplicate(profile, event, origin):
            return
        profile.interest = migrated_interest(profile, self.shared.content, self.params.half_life_s)

    def add_item_vector(self, vector: ItemVector) -> None:
        """An item's catalog-text vector arrived (the item-vectors replica): content candidates."""
        self.shared.item_vector(vector)

    def _item_vector(self, kind: EventKind, item_id: str | None) -> ItemVector | None:
        if item_id is None or kind not in ("click", "purchase") or self.vectors.wanted is None:
            return None
        vector = self.vectors.get(item_id)
        if vector is None:
            entry = self.catalog.get(item_id)
            if entry is not None and entry.digest:
                metrics.ITEM_VECTOR_MISSES.inc()
        return vector

    # --- emission --------------------------------------------------------------------
    def serving(self, user_id: str) -> Weights:
        """The ranker ``user_id`` is served: the candidate's when they are in its A/B share."""
        c = self.candidate
        if c is not None and c.mode == "share" and self.ranker != "baseline" and assigned(user_id, c.share):
            return replace(self.weights, model=c.model)
        return self.weights

    def recommend(self, profile: Profile, trigger_event_ts: float | None = None, weights: Weights | None = None) -> Recommendations:
        """The message for ``profile`` now: scores depend on event time only; ``generated_at``
        is wall time; ``trigger_event_ts`` defaults to the profile's latest event time.
        ``weights``: rank with these instead of what the user is served (:meth:`serving`)."""
        weights = self.serving(profile.user_id) if weights is None else weights
        if self.ranker == "baseline":
            items = recommend(profile, self.catalog, self.popularity, k=self._top_k, params=self.params)
        else:
            items = rank(
                profile,
                catalog=self.catalog,
                shared=self.shared,
                params=self.params,
                k=self._top_k,
                weights=weights,
            )
        return Recommendations(
            user_id=profile.user_id,
            items=items,
            profile_version=profile.version,
            generated_at=self._wall(),
            trigger_event_ts=profile.last_event_ts if trigger_event_ts is None else trigger_event_ts,
            model=self.ranker_version(weights),
        )

    def emit(self, user_id: str, profile: Profile, trigger: Trigger) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()  # metrics only: scores never see a clock
        message = self.recommend(profile, trigger.event_ts)
        metrics.RANKING.observe(time.perf_counter() - wall)
        metrics.RANKING_CPU.inc(time.thread_time() - cpu)
        self._emit_raw(user_id.encode(), encode_recs(message))
        self.live.ranked(user_id, SERVED, message.model, [s.item_id for s in message.items])
        c = self.candidate
        if c is not None and c.mode == "shadow" and self.ranker != "baseline":
            # Ranked, scored by the live hit rate, never emitted: a second ranking per message.
            shadow = rank(profile, catalog=self.catalog, shared=self.shared, params=self.params, k=self._top_k,
                          weights=replace(self.weights, model=c.model))
            self.live.ranked(user_id, SHADOW, c.model.version, [s.item_id for s in shadow])
        else:
            self.live.forget_shadow(user_id)
        metrics.RECOMMENDATIONS.inc()
        metrics.LAST_EMIT.set(message.generated_at)
        metrics.EVENT_TO_EMIT.observe(max(0.0, message.generated_at - trigger.event_ts))
        metrics.INGEST_TO_EMIT.observe(max(0.0, message.generated_at - trigger.record_ts))

    def flush_pending(self, *, all_users: bool) -> int:
        """Emit pending users whose interval ended (or all of them: before every commit)."""
        clock = self._monotonic()
        batch = self.coalescer.take_all(clock) if all_users else self.coalescer.take_due(clock)
        for user_id, trigger in batch:
            key = user_id.encode()
            # A pending user's profile may have left the (byte-bounded) cache since: it was
            # written back then, so it is read again rather than its final message lost.
            profile = self.store.cached(key)
            if profile is None:
                found = self.store.find(key)
                profile = found[0] if found is not None else None
            if profile is not None:
                self.emit(user_id, profile, trigger)
        return len(batch)
