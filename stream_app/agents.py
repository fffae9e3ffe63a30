"""The worker's agents: one per event topic, and the review topic's two stages.

Each record of an agent goes through the same guards, in this order: the gap guard's order
check (faust#596: a restart when a record was skipped), the poison ledger (a record that
crashed the worker before is passed by, already dead-lettered), the bug guard around the
handling, and only then ``progress.done`` for the stall detector. Every agent runs at
concurrency 1 (faust#606).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import faust
import msgspec

from state.errors import ContractError
from state.events import DeadLetter, EventKind, Review
from state.profile import Encoding, Origin
from stream_app import metrics
from stream_app.order_check import OrderCheck
from stream_app.poison import Guard, PoisonLedger, passed_by, refresh
from stream_app.reviews import EncodedReview, EncoderHolder, review_text
from stream_app.reviews import dumps as dump_review
from stream_app.reviews import loads as load_review
from stream_app.runtime import Runtime, raw_topic, record_of
from stream_app.supervise import Progress, RestartRequests, hold_ack_failpoint


def _hold(event: Any) -> None:
    """The failpoint's effect: one more reference, so Faust never acks this message."""
    event.message.incref()


def add_agent(
    app: faust.App, runtime: Runtime, kind: EventKind, models_tried: asyncio.Event, progress: Progress, restarts: RestartRequests,
    ledger: PoisonLedger,
) -> None:
    topic = raw_topic(app, runtime.settings.topic(kind), runtime.settings.partitions_for(kind))

    async def agent(stream: faust.StreamT[bytes]) -> None:
        # Events need the catalog (item categories), engagements the item vectors of the
        # current encoder: wait for the replicas' catch-up.
        await runtime.replica.ready.wait()
        # Global scoring state (popularity, co-occurrence, social, ...) rebuilt before ranking.
        await runtime.shared.ready.wait()
        if kind in ("click", "purchase"):
            await models_tried.wait()
            await runtime.vectors.ready.wait()
        order = OrderCheck(app, runtime.settings)
        async for event in stream.events():
            msg = event.message
            if kind != "item":  # the catalog topic is compacted: gaps are normal there
                decision = await order.check(msg)
                if decision is not None:
                    await restarts.halt(decision)
            if ledger.stale:
                await refresh(ledger, runtime.settings)
            if not passed_by(ledger, msg):
                with Guard(runtime.settings, ledger, runtime.settings.topic(kind), msg):  # a bug: stream_app.poison
                    await runtime.handle(kind, msg)
            if hold_ack_failpoint(msg.topic, msg.partition, msg.offset):
                _hold(event)
            progress.done(msg.topic, msg.partition, msg.offset)

    app.agent(topic, name=f"persona.agents.{kind}", concurrency=1)(agent)


def add_review_stages(
    app: faust.App, runtime: Runtime, holder: EncoderHolder, models_tried: asyncio.Event, progress: Progress, restarts: RestartRequests,
    ledger: PoisonLedger,
) -> None:
    """Stage 1 batches and encodes reviews; stage 2 applies them per event (see reviews.py)."""
    settings = runtime.settings
    source = raw_topic(app, settings.topic("review"), settings.partitions)
    encoded = raw_topic(app, settings.encoded_reviews_topic, settings.partitions)

    async def encode_stage(stream: faust.StreamT[bytes]) -> None:
        await runtime.replica.ready.wait()
        await models_tried.wait()
        order = OrderCheck(app, runtime.settings)
        batches = cast(Any, stream).take_events(settings.review_batch, within=settings.review_wait_s)
        async for events in batches:
            reviews: list[tuple[Review, Any]] = []
            for event in events:
                decision = await order.check(event.message)
                if decision is not None:
                    await restarts.halt(decision)
                decoded = runtime.pipeline.decode("review", record_of(event.message))
                if isinstance(decoded, DeadLetter):
                    await runtime.dead_letter("review", event.message, decoded)
                elif isinstance(decoded, Review):
                    reviews.append((decoded, event.message))
            encoder = holder.encoder  # one version per batch: swaps happen between batches
            encodings: list[Encoding | None] = [None] * len(reviews)
            if encoder is not None and reviews:
                started = time.perf_counter()
                encodings = list(await holder.encode_reviews(encoder, [review_text(r) for r, _ in reviews]))
                metrics.ENCODE_SECONDS.observe(time.perf_counter() - started)
                metrics.ENCODE_TEXTS.observe(len(reviews))
            for (review, msg), encoding in zip(reviews, encodings, strict=True):
                record = EncodedReview(review=review, origin=Origin(msg.topic, msg.partition, msg.offset), encoding=encoding)
                await encoded.send(key=msg.key, value=dump_review(record), partition=msg.partition)
            # Finished only now: a batch waiting on the encoder is busy, not stuck.
            for event in events:
                progress.done(event.message.topic, event.message.partition, event.message.offset)

    async def apply_stage(stream: faust.StreamT[bytes]) -> None:
        await runtime.replica.ready.wait()
        await runtime.shared.ready.wait()
        order = OrderCheck(app, runtime.settings)
        async for event in stream.events():
            msg = event.message
            decision = await order.check(msg)
            if decision is not None:
                await restarts.halt(decision)
            if ledger.stale:
                await refresh(ledger, settings)
            started = time.perf_counter()
            try:
                record = load_review(msg.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await runtime.dead_letter("review", msg, DeadLetter.from_error(ContractError("schema", str(exc))))
            else:
                if not passed_by(ledger, msg):
                    # A bug dead-letters the encoded record to review.dlq, as a schema failure above does.
                    with Guard(settings, ledger, settings.topic("review"), msg):
                        runtime.pipeline.apply_event(record.review, record.origin, msg.partition, msg.timestamp, encoding=record.encoding)
                    metrics.PROCESSING.observe(time.perf_counter() - started)
            progress.done(msg.topic, msg.partition, msg.offset)

    app.agent(source, name="persona.agents.review", concurrency=1)(encode_stage)
    app.agent(encoded, name="persona.agents.review_apply", concurrency=1)(apply_stage)
