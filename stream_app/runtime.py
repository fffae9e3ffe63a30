"""Worker-side state and the per-event path: decode, dead-letter, apply, score, emit."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from scoring.baseline import recommend
from scoring.messages import Recommendations
from scoring.messages import encode as encode_recs
from scoring.popularity import Popularity
from state.events import EVENT_KINDS, DeadLetter, Event, EventKind, Item, decode
from state.profile import EVENT_WEIGHTS, Encoding, Origin, Params, Profile, apply, new_profile
from stream_app import dlq, metrics
from stream_app.catalog_replica import CatalogReplica
from stream_app.emitter import Coalescer, Trigger
from stream_app.item_vectors import VectorReplica
from stream_app.profile_store import ProfileStore
from stream_app.settings import Settings

log = logging.getLogger("persona.worker")

PROFILES_TABLE = "profiles"


def raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    """A topic of raw bytes: every payload is encoded and decoded by us (msgspec)."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=partitions
    )


class Runtime:
    """Worker-side state shared by the agents: catalog, popularity, coalescer, table."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.settings = settings
        self.params = Params(half_life_days=settings.half_life_days, dedupe_window=settings.dedupe_window)
        self.replica = CatalogReplica(
            settings,
            settings.topic("item"),
            settings.item_partitions,
            settings.max_payload_bytes,
        )
        self.vectors = VectorReplica(settings, settings.item_vectors_topic, settings.item_partitions)
        self.item_vectors_topic = raw_topic(app, settings.item_vectors_topic, settings.item_partitions)
        self.popularity = Popularity(settings.popularity_half_life_days)
        self.coalescer = Coalescer(settings.emit_interval_s)
        self.table = app.Table(
            PROFILES_TABLE,
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
        )
        self.profiles = ProfileStore(self.table)
        self.recs_topic = raw_topic(app, settings.recommendations_topic, settings.partitions)
        self.dlq_topics = {
            kind: raw_topic(app, dlq.dlq_topic(settings.topic(kind)), settings.partitions_for(kind))
            for kind in EVENT_KINDS
        }

    # --- per event -------------------------------------------------------------------
    async def handle(self, kind: EventKind, event: faust.types.EventT[bytes]) -> None:
        msg = event.message
        started = time.perf_counter()
        result = await self.decode_or_dead_letter(kind, msg)
        if result is None:
            return
        if isinstance(result, Item):
            # The catalog replica applies it; this agent only validates and counts.
            metrics.event_counter(msg.topic, "catalog").inc()
            return
        self.apply_event(result, Origin(msg.topic, msg.partition, msg.offset), msg.partition, msg.timestamp)
        metrics.PROCESSING.observe(time.perf_counter() - started)

    async def decode_or_dead_letter(self, kind: EventKind, msg: Any) -> Event | None:
        """The record's event, or ``None`` after routing it to ``<topic>.dlq``."""
        result = decode(kind, msg.key, msg.value, max_bytes=self.settings.max_payload_bytes)
        if not isinstance(result, DeadLetter):
            return result
        await self.dead_letter(kind, msg, result)
        return None

    async def dead_letter(self, kind: EventKind, msg: Any, letter: DeadLetter) -> None:
        headers = dlq.headers(
            letter,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
        )
        await self.dlq_topics[kind].send(key=msg.key, value=msg.value, headers=headers)
        metrics.DEAD_LETTERS.labels(letter.reason).inc()
        metrics.event_counter(msg.topic, "dead_letter").inc()
        log.warning("dead letter %s@%s:%s %s: %s", msg.topic, msg.partition, msg.offset, letter.reason, letter.message)

    def apply_event(
        self,
        result: Event,
        origin: Origin,
        partition: int,
        record_ts: float | None,
        encoding: Encoding | None = None,
    ) -> None:
        """Fold one decoded event into its user's profile; score and maybe emit."""
        assert not isinstance(result, Item)
        kind = type(result).__name__.lower()
        topic = self.settings.topic(kind)  # type: ignore[arg-type]
        key = result.user_id.encode()
        profile = self.profiles.get(key, partition) or new_profile(result.user_id)
        item_id = getattr(result, "item_id", None)
        categories = self.replica.catalog.categories(item_id) if item_id is not None else ()
        item_vector = None
        if item_id is not None and kind in ("click", "purchase") and self.vectors.wanted is not None:
            item_vector = self.vectors.get(item_id)
            entry = self.replica.catalog.get(item_id)
            if item_vector is None and entry is not None and entry.text:
                metrics.ITEM_VECTOR_MISSES.inc()
        updated = apply(
            profile,
            result,
            origin=origin,
            categories=categories,
            params=self.params,
            in_place=True,
            encoding=encoding,
            item_vector=item_vector,
        )
        if updated is None:
            self.profiles.touch(key)
            metrics.event_counter(topic, "duplicate").inc()
        else:
            self.profiles.put(key, updated, partition)
            metrics.PROFILE_UPDATES.inc()
            metrics.event_counter(topic, "applied").inc()
            if item_id is not None and kind in EVENT_WEIGHTS:
                self.popularity.add(item_id, EVENT_WEIGHTS[kind], result.ts)
        trigger = Trigger(event_ts=result.ts, record_ts=record_ts or time.time())
        if self.coalescer.offer(result.user_id, time.monotonic(), trigger):
            self._emit(result.user_id, updated or profile, trigger)

    # --- emission --------------------------------------------------------------------
    def _emit(self, user_id: str, profile: Profile, trigger: Trigger) -> None:
        items = recommend(
            profile, self.replica.catalog, self.popularity, k=self.settings.top_k, params=self.params
        )
        now = time.time()
        message = Recommendations(
            user_id=user_id,
            items=items,
            profile_version=profile.version,
            generated_at=now,
            trigger_event_ts=trigger.event_ts,
        )
        # send_soon: buffered, flushed by the producer and always before an offset commit.
        self.recs_topic.send_soon(key=user_id.encode(), value=encode_recs(message))
        metrics.RECOMMENDATIONS.inc()
        metrics.EVENT_TO_EMIT.observe(max(0.0, now - trigger.event_ts))
        metrics.INGEST_TO_EMIT.observe(max(0.0, now - trigger.record_ts))

    def flush_pending(self, *, all_users: bool) -> int:
        clock = time.monotonic()
        batch = self.coalescer.take_all(clock) if all_users else self.coalescer.take_due(clock)
        for user_id, trigger in batch:
            profile = self.profiles.cached(user_id.encode())
            if profile is not None:
                self._emit(user_id, profile, trigger)
        return len(batch)
