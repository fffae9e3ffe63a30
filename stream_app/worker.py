"""The Faust worker: topics in, profiles in RocksDB, recommendations out.

A thin adapter. Each input record goes: decode/validate (``state.events``) -> dead-letter
or apply (``state.profile``) -> store -> coalesced score (``scoring``) -> emit. Agents
run at concurrency 1 (faust#606: higher concurrency can commit past an in-flight
message) under at-least-once; exactly-once is avoided (faust#323, #517, #177) and
replays are made harmless by the profile's idempotency watermark.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from faust.sensors import Sensor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.baseline import recommend
from scoring.messages import Recommendations
from scoring.messages import encode as encode_recs
from scoring.popularity import Popularity
from state.codec import dumps, loads
from state.events import EVENT_KINDS, DeadLetter, EventKind, Item, decode
from state.profile import EVENT_WEIGHTS, Origin, Params, Profile, apply, new_profile
from stream_app import dlq, metrics
from stream_app.catalog_replica import CatalogReplica
from stream_app.emitter import Coalescer, Trigger
from stream_app.settings import Settings

log = logging.getLogger("persona.worker")

PROFILES_TABLE = "profiles"
_PROM_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


class _FlushBeforeCommit(Sensor):  # type: ignore[misc]
    """Emits every pending recommendation right before offsets are committed."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self._runtime = runtime

    def on_commit_initiated(self, consumer: Any) -> Any:
        self._runtime.flush_pending(all_users=True)
        return super().on_commit_initiated(consumer)


class Runtime:
    """Worker-side state shared by the agents: catalog, popularity, coalescer, table."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.settings = settings
        self.params = Params(half_life_days=settings.half_life_days, dedupe_window=settings.dedupe_window)
        self.replica = CatalogReplica(
            settings.bootstrap_servers,
            settings.topic("item"),
            settings.item_partitions,
            settings.max_payload_bytes,
        )
        self.popularity = Popularity(settings.popularity_half_life_days)
        self.coalescer = Coalescer(settings.emit_interval_s)
        self.table = app.Table(
            PROFILES_TABLE,
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
        )
        self.recs_topic = app.topic(
            settings.recommendations_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )
        self.dlq_topics = {
            kind: app.topic(
                dlq.dlq_topic(settings.topic(kind)),
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.partitions_for(kind),
            )
            for kind in EVENT_KINDS
        }

    # --- per event -------------------------------------------------------------------
    async def handle(self, kind: EventKind, event: faust.types.EventT) -> None:
        msg = event.message
        started = time.perf_counter()
        result = decode(kind, msg.key, msg.value, max_bytes=self.settings.max_payload_bytes)
        if isinstance(result, DeadLetter):
            headers = dlq.headers(
                result,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
            )
            await self.dlq_topics[kind].send(key=msg.key, value=msg.value, headers=headers)
            metrics.DEAD_LETTERS.labels(result.reason).inc()
            metrics.EVENTS.labels(msg.topic, "dead_letter").inc()
            log.warning(
                "dead letter %s@%s:%s %s: %s", msg.topic, msg.partition, msg.offset, result.reason, result.message
            )
            return
        if isinstance(result, Item):
            # The catalog replica applies it; this agent only validates and counts.
            metrics.EVENTS.labels(msg.topic, "catalog").inc()
            return
        key = result.user_id.encode()
        raw: bytes | None = self.table.get(key)
        profile = loads(raw) if raw is not None else new_profile(result.user_id)
        item_id = getattr(result, "item_id", None)
        categories = self.replica.catalog.categories(item_id) if item_id is not None else ()
        updated = apply(
            profile,
            result,
            origin=Origin(msg.topic, msg.partition, msg.offset),
            categories=categories,
            params=self.params,
        )
        if updated is None:
            # A replay. Re-store the profile anyway: after kill -9 the local RocksDB can be
            # ahead of the changelog, and this write puts the changelog level again.
            if raw is not None:
                self.table[key] = raw
            metrics.EVENTS.labels(msg.topic, "duplicate").inc()
        else:
            data = dumps(updated)
            self.table[key] = data
            metrics.PROFILE_BYTES.observe(len(data))
            metrics.PROFILE_UPDATES.inc()
            metrics.EVENTS.labels(msg.topic, "applied").inc()
            if item_id is not None and kind in EVENT_WEIGHTS:
                self.popularity.add(item_id, EVENT_WEIGHTS[kind], result.ts)
        trigger = Trigger(event_ts=result.ts, record_ts=msg.timestamp or time.time())
        if self.coalescer.offer(result.user_id, time.monotonic(), trigger):
            self._emit(result.user_id, updated or profile, trigger)
        metrics.PROCESSING.observe(time.perf_counter() - started)

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
            raw = self.table.get(user_id.encode())
            if raw is not None:
                self._emit(user_id, loads(raw), trigger)
        return len(batch)


def build_app(settings: Settings) -> tuple[faust.App, Runtime]:
    """The Faust app with its agents, table, timers and web views."""
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.state_dir),
        processing_guarantee="at_least_once",
        broker_commit_every=settings.commit_every,
        broker_commit_interval=settings.commit_interval_s,
        topic_replication_factor=settings.replication_factor,
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_acks=-1,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        autodiscover=False,
        # We encode and decode every payload ourselves (msgspec), so Faust moves raw bytes.
        key_serializer="raw",
        value_serializer="raw",
        logging_config=None,
    )
    runtime = Runtime(app, settings)
    app.sensors.add(_FlushBeforeCommit(runtime))

    for kind in EVENT_KINDS:
        _add_agent(app, runtime, kind)

    @app.task  # type: ignore[misc]
    async def catalog_replica() -> None:
        await runtime.replica.run()

    @app.timer(max(0.05, settings.emit_interval_s / 2))  # type: ignore[misc]
    async def flush_due() -> None:
        runtime.flush_pending(all_users=False)

    @app.page("/metrics")  # type: ignore[misc]
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8.
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=_PROM_CONTENT_TYPE)

    @app.page("/ready")  # type: ignore[misc]
    async def ready_view(web: Any, request: Any) -> Any:
        ready = runtime.replica.ready.is_set()
        return web.json({"ready": ready, "catalog_items": len(runtime.replica.catalog)}, status=200 if ready else 503)

    return app, runtime


def _add_agent(app: faust.App, runtime: Runtime, kind: EventKind) -> None:
    topic = app.topic(
        runtime.settings.topic(kind),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=runtime.settings.partitions_for(kind),
    )

    async def agent(stream: faust.StreamT[bytes]) -> None:
        # Events need the catalog (item categories); wait for the replica's catch-up.
        await runtime.replica.ready.wait()
        async for event in stream.events():
            await runtime.handle(kind, event)

    app.agent(topic, name=f"persona.agents.{kind}", concurrency=1)(agent)


def _credentials(settings: Settings) -> Any:
    if not settings.security_protocol.startswith("SASL"):
        return None
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=password,
        mechanism=settings.sasl_mechanism,
        ssl_context=None,
    )
