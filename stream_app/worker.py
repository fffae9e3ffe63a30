"""The Faust worker: topics in, profiles in RocksDB, recommendations out.

A thin adapter. Each input record goes: decode/validate (``state.events``) -> dead-letter
or apply (``state.profile``) -> store -> coalesced score (``scoring``) -> emit. Agents
run at concurrency 1 (faust#606: higher concurrency can commit past an in-flight
message) under at-least-once; exactly-once is avoided (faust#323, #517, #177) and
replays are made harmless by the profile's idempotency watermark.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any, cast

import faust
from faust.sensors import Monitor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.baseline import recommend
from scoring.messages import Recommendations
from scoring.messages import encode as encode_recs
from scoring.popularity import Popularity
from state.events import EVENT_KINDS, DeadLetter, EventKind, Item, decode
from state.profile import EVENT_WEIGHTS, Origin, Params, Profile, apply, new_profile
from stream_app import dlq, metrics
from stream_app.catalog_replica import CatalogReplica
from stream_app.profile_store import ProfileStore
from stream_app.emitter import Coalescer, Trigger
from stream_app.settings import Settings
from stream_app.supervise import RESTART_EXIT_CODE, GapGuard, StallDetector

log = logging.getLogger("persona.worker")

PROFILES_TABLE = "profiles"
_PROM_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


class PersonaMonitor(Monitor):
    """Faust's monitor, minus its per-event bookkeeping, plus our pre-commit flush.

    Faust calls ``on_commit_initiated`` synchronously at the start of every commit, and
    nothing awaits between it and Faust reading the acked offsets: everything acked so
    far gets its profile and recommendation handed to the producer first (which the
    commit then flushes). The per-event hooks keep in-memory stats (in ms) that nothing
    reads here; Prometheus metrics replace them, and skipping them is measurable per event.
    """

    runtime: Runtime | None = None

    def on_commit_initiated(self, consumer: Any) -> Any:
        if self.runtime is not None:
            self.runtime.profiles.flush()
            self.runtime.flush_pending(all_users=True)
        return super().on_commit_initiated(consumer)

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: dict[str, Any] | None = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None


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
        self.profiles = ProfileStore(self.table)
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
    async def handle(self, kind: EventKind, event: faust.types.EventT[bytes]) -> None:
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
        profile = self.profiles.get(key, msg.partition) or new_profile(result.user_id)
        item_id = getattr(result, "item_id", None)
        categories = self.replica.catalog.categories(item_id) if item_id is not None else ()
        updated = apply(
            profile,
            result,
            origin=Origin(msg.topic, msg.partition, msg.offset),
            categories=categories,
            params=self.params,
            in_place=True,
        )
        if updated is None:
            self.profiles.touch(key)
            metrics.event_counter(msg.topic, "duplicate").inc()
        else:
            self.profiles.put(key, updated, msg.partition)
            metrics.PROFILE_UPDATES.inc()
            metrics.event_counter(msg.topic, "applied").inc()
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
            profile = self.profiles.cached(user_id.encode())
            if profile is not None:
                self._emit(user_id, profile, trigger)
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
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 10,
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
        Monitor=PersonaMonitor,
    )
    # Faust stops feeding every stream while more than 100 produced messages wait in its
    # buffer. Our commit-time flush queues a burst (profiles + recommendations), so the
    # limit stalled consumption on every commit; the burst is bounded by one commit's work.
    app.producer.buffer.max_messages = 20_000
    runtime = Runtime(app, settings)
    cast(PersonaMonitor, app.monitor).runtime = runtime

    for kind in EVENT_KINDS:
        _add_agent(app, runtime, kind)

    @app.task  # type: ignore[untyped-decorator]
    async def catalog_replica() -> None:
        await runtime.replica.run()

    @app.timer(max(0.05, settings.emit_interval_s / 2))  # type: ignore[untyped-decorator]
    async def flush_due() -> None:
        runtime.flush_pending(all_users=False)

    @app.task  # type: ignore[untyped-decorator]
    async def install_task_dump() -> None:
        # Operators' lever for a stuck worker: `kill -USR2 <pid>` logs every asyncio
        # task's stack (py-spy only sees an idle event loop).
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, _dump_tasks, app)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        runtime.profiles.reset()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may have changed these users while we did not own them.
        runtime.profiles.reset()

    detector = StallDetector(settings.stall_timeout_s)
    inputs = {settings.topic(k) for k in EVENT_KINDS}

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def watch_commits() -> None:
        stalled = detector.stalled(app.consumer, inputs, time.monotonic())
        if stalled:
            log.error("commit stalled on %s for %.0fs (faust#596): restarting from committed offsets", stalled, settings.stall_timeout_s)
            metrics.STALL_RESTARTS.inc()
            _dump_tasks(app)
            # Skip Faust's shutdown: it would wait on the same in-flight message.
            logging.shutdown()
            os._exit(RESTART_EXIT_CODE)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8.
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=_PROM_CONTENT_TYPE)

    @app.page("/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ready = runtime.replica.ready.is_set()
        return web.json({"ready": ready, "catalog_items": len(runtime.replica.catalog)}, status=200 if ready else 503)

    return app, runtime


def _dump_tasks(app: faust.App) -> None:
    lines: list[str] = []
    try:
        consumer: Any = app.consumer
        lines.append(f"assignment: {sorted(consumer.assignment())}")
        lines.append(f"paused: {sorted(consumer._paused_partitions)}")
        lines.append(f"read offsets: {dict(consumer._read_offset)}")
        lines.append(f"committed: {dict(consumer._committed_offset)}")
        lines.append(f"unacked: {len(consumer._unacked_messages)}")
        inner = consumer._thread._ensure_consumer() if hasattr(consumer, "_thread") else None
        if inner is not None:
            lines.append(f"aiokafka paused: {sorted(inner.paused())}")
    except Exception as exc:  # diagnostics must never take the worker down
        lines.append(f"consumer state unavailable: {exc!r}")
    for task in asyncio.all_tasks():
        lines.append(f"task {task.get_name()}:")
        # Follow the await chain: Task.get_stack() shows only the outermost frame.
        obj: Any = task.get_coro()
        while obj is not None:
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None) or getattr(obj, "gi_frame", None)
            if frame is not None:
                lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            obj = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None) or getattr(obj, "gi_yieldfrom", None)
    log.warning("asyncio tasks:\n%s", "\n".join(lines))


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
        guard = GapGuard()
        async for event in stream.events():
            if kind != "item":  # the catalog topic is compacted: gaps are normal there
                await _check_order(app, guard, event.message)
            await runtime.handle(kind, event)

    app.agent(topic, name=f"persona.agents.{kind}", concurrency=1)(agent)


async def _check_order(app: faust.App, guard: GapGuard, msg: Any) -> None:
    consumer: Any = app.consumer
    tp = faust.types.TP(msg.topic, msg.partition)
    missing = guard.check(msg.partition, msg.offset, consumer._committed_offset.get(tp))
    if missing is not None and guard.first_seen(msg.partition):
        # Right after (re)assignment a jump can be real: retention deleted the records.
        earliest = (await consumer.earliest_offsets(tp)).get(tp, 0)
        if earliest >= msg.offset:
            log.warning("%s: records %d..%d were deleted by retention before being processed", tp, missing, msg.offset - 1)
            missing = None
    if missing is not None:
        log.error("%s: offset %d reached the agent but %d never did (faust#596): restarting", tp, msg.offset, missing)
        metrics.STALL_RESTARTS.inc()
        logging.shutdown()
        os._exit(RESTART_EXIT_CODE)
    guard.advance(msg.partition, msg.offset)


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
