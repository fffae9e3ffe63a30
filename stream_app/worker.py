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
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from encoders.ranker_model import RankerHolder
from scoring.ranker import FEATURES
from state.events import EVENT_KINDS
from stream_app import flush, metrics, starvation
from stream_app.agents import add_agent, add_review_stages
from stream_app.control_replica import ControlTail
from stream_app.emitter import TICK_S as EMIT_TICK_S
from stream_app.experiment import Candidate
from stream_app.flow_control import stop_flow_on_seek
from stream_app.flush import exit_now
from stream_app.flush import harden as harden_flush
from stream_app.item_vectors import ItemEncoder, owned_partitions
from stream_app.kafka_clients import GroupPositions, group_committed
from stream_app.membership import no_leave_failpoint
from stream_app.monitor import PersonaMonitor, RetriableAsWarning, SharedInstanceId
from stream_app.ops_metrics import LagGauge, instrument_restore, sample_snapshot_coverage, sample_state
from stream_app.poison import LEDGER_NAME, PoisonLedger, forget_shared, read_shared
from stream_app.reviews import EncoderHolder
from stream_app.runtime import Runtime
from stream_app.settings import Settings
from stream_app.starvation import StarvationDetector
from stream_app.supervise import (
    RESTART_EXIT_CODE,
    RESTARTS_ENV,
    Progress,
    Restart,
    RestartRequests,
    StallDetector,
    dump_tasks,
    leave_group_now,
)

log = logging.getLogger("persona.worker")

_PROM_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


def group_timeouts(settings: Settings) -> dict[str, Any]:
    """Faust's consumer group timeouts from ``session_timeout_s``.

    Faust refuses a session timeout longer than its request timeout (90 s by default) by
    crashing at start; a long session is what static members may want (a pod that takes two
    minutes to come back keeps its partitions), so the request timeout follows the session.
    """
    session = settings.session_timeout_s
    return {
        "broker_session_timeout": session,
        "broker_heartbeat_interval": session / 10,
        "broker_request_timeout": max(90.0, session),
    }


def build_app(settings: Settings) -> tuple[faust.App, Runtime]:
    """The Faust app with its agents, table, timers and web views."""
    logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(RetriableAsWarning())
    no_leave_failpoint()
    if settings.group_instance_id:
        logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(SharedInstanceId(settings.group_instance_id))
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.state_dir),
        processing_guarantee="at_least_once",
        broker_commit_every=settings.commit_every,
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_records=settings.max_poll_records or None,
        topic_replication_factor=settings.replication_factor,
        topic_partitions=settings.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        **group_timeouts(settings),
        consumer_group_instance_id=settings.group_instance_id,
        producer_acks=-1,
        producer_linger=settings.producer_linger_s,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        # Faust puts this URL in its assignment metadata and asserts, when an assignment
        # arrives, that it is its own. A static member that restarts gets the assignment its
        # previous run was given, without a rebalance, so the URL must not change with the
        # port or the pod's address: with an instance id, the id is the URL's host. (We serve
        # no table views between workers, so nothing connects to it.)
        canonical_url=(
            f"http://{settings.group_instance_id}" if settings.group_instance_id
            else f"http://{settings.web_host}:{settings.web_port}"
        ),
        autodiscover=False,
        # We encode and decode every payload ourselves (msgspec), so Faust moves raw bytes.
        key_serializer="raw",
        value_serializer="raw",
        logging_config=None,
        Monitor=PersonaMonitor,
    )
    # Faust stops feeding every stream while more than 100 produced messages wait in its
    # buffer. Our commit-time flush queues a burst (profiles + recommendations), so the
    # limit stalled consumption on every commit (settings: producer_buffer_messages).
    app.producer.buffer.max_messages = settings.producer_buffer_messages
    # A seek to the committed offsets must not let the fetch loop finish a batch fetched
    # before it: at a worker's start that left holes the gap guard restarted for (faust#596).
    stop_flow_on_seek(app.consumer)
    # Faust's buffer flush, awaited before each commit, can return with records not yet handed
    # to the Kafka client, and a record the client failed to deliver is only logged
    # (stream_app.flush): a commit must wait for every one and follow no failure.
    monitor = cast(PersonaMonitor, app.monitor)
    monitor.delivery = harden_flush(app)
    runtime = Runtime(app, settings)
    monitor.runtime = runtime
    progress = Progress()
    restarts = RestartRequests()
    metrics.SUPERVISOR_RESTARTS.inc(int(os.environ.get(RESTARTS_ENV, "0") or 0))

    holder = EncoderHolder(
        settings.model_registry, device=settings.model_device, threads=settings.model_threads, fp16=settings.model_fp16,
        batch_size=settings.review_batch, max_batch_tokens=settings.model_batch_tokens, spin=settings.model_spin,
    )
    models_tried = asyncio.Event()
    # Records whose processing raised a bug, dead-lettered before a restart (stream_app.poison).
    ledger = PoisonLedger(settings.state_dir / LEDGER_NAME)
    _prune_ledger(settings, ledger)
    for kind in EVENT_KINDS:
        if kind != "review":
            add_agent(app, runtime, kind, models_tried, progress, restarts, ledger)
    add_review_stages(app, runtime, holder, models_tried, progress, restarts, ledger)

    @app.task  # type: ignore[untyped-decorator]
    async def load_models() -> None:
        try:
            await holder.refresh()
            runtime.vectors.want(holder.version)
            if holder.encoder is None:
                log.warning("no encoder in %s: reviews and items are applied without text vectors", settings.model_registry)
        finally:
            models_tried.set()

    rankers = RankerHolder(settings.ranker_registry, FEATURES)

    async def refresh_ranker() -> None:
        old = rankers.version
        failures = rankers.failures
        # Loading is a few milliseconds (a graph of two small layers), on the loop: a ranking
        # never sees half a swap.
        if rankers.refresh():
            runtime.pipeline.use_ranker(rankers.ranker)
            if old is not None:
                metrics.MODEL_INFO.remove("ranker", old)
            metrics.MODEL_INFO.labels("ranker", rankers.version).set(1)
            log.warning("ranker %s -> %s", old or "hand-set weights", rankers.version)
        trial = rankers.candidate
        if rankers.refresh_candidate():
            # One series per trial: name "ranker-shadow" or "ranker-share" (the share is logged).
            if trial is not None:
                metrics.MODEL_INFO.remove(f"ranker-{trial[1]}", trial[0].version)
            trial = rankers.candidate
            if trial is None:
                runtime.pipeline.use_candidate(None)
                log.warning("ranker trial stopped")
            else:
                model, mode, share = trial
                runtime.pipeline.use_candidate(Candidate(model, "shadow" if mode == "shadow" else "share", share))
                metrics.MODEL_INFO.labels(f"ranker-{mode}", model.version).set(1)
                log.warning("ranker %s on trial: %s", model.version, mode if mode == "shadow" else f"a {share:.0%} share")
        if rankers.failures > failures:
            metrics.MODEL_RELOAD_FAILURES.inc(rankers.failures - failures)

    @app.task  # type: ignore[untyped-decorator]
    async def load_ranker() -> None:
        await refresh_ranker()

    @app.timer(settings.model_poll_s)  # type: ignore[untyped-decorator]
    async def watch_models() -> None:
        if models_tried.is_set() and await holder.refresh():
            runtime.vectors.want(holder.version)
        await refresh_ranker()

    control = ControlTail(settings)

    @app.task  # type: ignore[untyped-decorator]
    async def control_replica() -> None:
        await control.run()

    @app.task  # type: ignore[untyped-decorator]
    async def on_announcements() -> None:
        # An announcement makes the worker look at the registries now, not at its next poll.
        while True:
            await control.poke.wait()
            control.poke.clear()
            if models_tried.is_set() and await holder.refresh():
                runtime.vectors.want(holder.version)
            await refresh_ranker()

    @app.task  # type: ignore[untyped-decorator]
    async def catalog_replica() -> None:
        await runtime.replica.run()

    @app.task  # type: ignore[untyped-decorator]
    async def item_vector_replica() -> None:
        await runtime.vectors.run()

    @app.task  # type: ignore[untyped-decorator]
    async def shared_replica() -> None:
        await runtime.shared.run()

    items_topic = settings.topic("item")

    async def send_vector(key: bytes, value: bytes, partition: int) -> None:
        await runtime.item_vectors_topic.send(key=key, value=value, partition=partition)

    item_encoder = ItemEncoder(
        runtime.replica,
        runtime.vectors,
        holder,
        lambda: owned_partitions(app.consumer.assignment(), items_topic),
        send_vector,
        batch=settings.review_batch,
    )

    @app.task  # type: ignore[untyped-decorator]
    async def encode_items() -> None:
        await models_tried.wait()
        await item_encoder.run()

    @app.task  # type: ignore[untyped-decorator]
    async def flush_due() -> None:
        # Due users go every TICK_S: a change waits at most its interval and a tick (a tick of
        # half the interval made it up to 1.5 intervals). Not app.timer: mode's timer warns
        # whenever one run outlasts its period, as a tick that ranks a burst of users does.
        while True:
            await asyncio.sleep(EMIT_TICK_S)
            runtime.pipeline.flush_pending(all_users=False)

    @app.timer(max(0.05, settings.emit_interval_s / 2))  # type: ignore[untyped-decorator]
    async def flush_deltas() -> None:
        runtime.deltas.flush()  # what the other workers learn waits at most this long

    @app.task  # type: ignore[untyped-decorator]
    async def install_task_dump() -> None:
        # Operators' lever for a stuck worker: `kill -USR2 <pid>` logs every asyncio
        # task's stack (py-spy only sees an idle event loop).
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, dump_tasks, app)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        runtime.profiles.reset()
        progress.forget()
        # A partition that comes next may hold a record another worker dead-lettered before it
        # left: the agents read the group's ledger before their next record (stream_app.poison).
        ledger.stale = True

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may have changed these users while we did not own them.
        runtime.profiles.reset()
        metrics.REBALANCES.inc()

    instrument_restore(app, runtime.table)
    lag = LagGauge(GroupPositions(settings, settings.app_id))

    @app.timer(settings.ops_sample_s)  # type: ignore[untyped-decorator]
    async def sample_operations() -> None:
        # Lag from the consumer's view (the broker's where it has none yet); state size from disk.
        await lag.sample(app.consumer, exclude=app.tables.changelog_topics)
        sample_state(settings.state_dir, runtime.table)
        metrics.PROFILE_CACHE_BYTES.set(runtime.profiles.cached_bytes)
        metrics.LIVE_QUALITY_BYTES.set(runtime.pipeline.live.nbytes)
        metrics.SOCIAL_QUIET_BYTES.set(runtime.pipeline.shared.social.quiet_nbytes)

    if settings.shared_snapshot:

        @app.timer(settings.shared_snapshot_check_s)  # type: ignore[untyped-decorator]
        async def sample_snapshots() -> None:
            try:
                await asyncio.to_thread(sample_snapshot_coverage, settings)
            except Exception as exc:  # a gauge left as it was must never stop the worker
                log.warning("reading how far the latest shared-state snapshot lags failed: %s", exc)

    def leave_group() -> None:
        log.info("before exit: %s", leave_group_now(app))

    # One worker app per process: its exit hook replaces any earlier one.
    flush.BEFORE_EXIT[:] = [leave_group]
    detector = StallDetector(settings.stall_timeout_s)
    starving = StarvationDetector(settings.stall_timeout_s)
    inputs = {settings.topic(kind) for kind in EVENT_KINDS} | {settings.encoded_reviews_topic}

    @app.timer(min(5.0, max(0.5, settings.stall_timeout_s / 4)))  # type: ignore[untyped-decorator]
    async def watch_commits() -> None:
        consumer: Any = app.consumer
        now, broker_up = time.monotonic(), _coordinator_known(consumer)
        stalled = detector.stalled(consumer.assignment(), consumer._committed_offset, progress, now, broker_up=broker_up)
        if stalled:
            restarts.request(Restart(f"commit stuck behind finished records on {stalled} for {settings.stall_timeout_s:.0f}s (faust#596)"))
            return
        try:
            decision = await starvation.check(app, starving, inputs, progress, time.monotonic, broker_up)
        except Exception as exc:  # an end-offset request that failed: judge again at the next tick
            log.warning("checking for starved partitions failed (%s: %s)", type(exc).__name__, exc)
            return
        if decision is not None:
            restarts.request(decision)

    @app.task  # type: ignore[untyped-decorator]
    async def watch_loop_lag() -> None:
        # Evidence for "busy vs stuck": encoder threads must not starve the loop that commits.
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.25)
            metrics.LOOP_LAG.observe(max(0.0, time.monotonic() - started - 0.25))

    @app.task  # type: ignore[untyped-decorator]
    async def restart_when_asked() -> None:
        # The one place a worker restarts itself: agents and the watchdog only ask.
        decision = await restarts.wait()
        dump_tasks(app)
        # Skip Faust's shutdown: it would wait on the same in-flight message.
        exit_now(f"{decision.reason}: restarting from committed offsets", RESTART_EXIT_CODE)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8.
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=_PROM_CONTENT_TYPE)

    @app.page("/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ready = runtime.replica.was_ready  # a re-read for a new encoder version keeps it ready
        return web.json({"ready": ready, "catalog_items": len(runtime.replica.catalog)}, status=200 if ready else 503)

    return app, runtime


def _coordinator_known(consumer: Any) -> bool:
    """Whether the consumer knows its group coordinator: False while the broker is away
    (aiokafka marks the coordinator dead on a lost connection and looks it up again)."""
    try:
        return consumer._thread._ensure_consumer()._coordinator.coordinator_id is not None
    except Exception:  # no consumer yet, or not aiokafka's: assume up (the old behaviour)
        return True


def _credentials(settings: Settings) -> Any:
    """Faust's broker credentials (SASL and/or TLS), built with every other client's."""
    from stream_app import kafka_clients

    return kafka_clients.faust_credentials(settings)


def _prune_ledger(settings: Settings, ledger: PoisonLedger) -> None:
    """Read the group's poison records and forget those the group has committed past (before
    the agents start: a blocking Admin call per record, and a ledger holds a few)."""
    try:
        ledger.merge(read_shared(settings))
        ledger.stale = False  # until a rebalance
    except Exception as exc:  # read again before the first record (stream_app.poison.refresh)
        log.warning("the group's poison ledger was not read (%s: %s)", type(exc).__name__, exc)
    if not ledger:
        return
    try:
        dropped = ledger.prune(lambda topic, partition: group_committed(settings, settings.app_id, topic, partition))
        forget_shared(settings, ledger.forgotten)
    except Exception as exc:  # the broker's answer is only an optimisation here: keep every record
        log.warning("poison ledger not pruned (%s: %s); it keeps its %d records", type(exc).__name__, exc, len(ledger))
        return
    if dropped:
        log.info("poison ledger: %d records the group has committed past forgotten, %d kept", dropped, len(ledger))
