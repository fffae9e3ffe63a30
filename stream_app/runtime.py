"""Worker-side wiring of the per-event pipeline: Faust topics, the RocksDB table, the replicas.

The per-event logic itself is :class:`stream_app.pipeline.Pipeline` (no Faust); this module
only adapts Faust messages to it and sends what it returns (dead letters, messages)."""

from __future__ import annotations

import logging
from typing import Any

import faust

from scoring.shared import Delta
from state.events import EVENT_KINDS, DeadLetter, EventKind
from stream_app import dlq
from stream_app.catalog_replica import CatalogReplica
from stream_app.item_vectors import VectorReplica, link_replicas
from stream_app.pipeline import Pipeline, Record, Result
from stream_app.profile_store import ProfileStore
from stream_app.settings import Settings
from stream_app.shared_replica import DeltaBatcher, SharedReplica

log = logging.getLogger("persona.worker")

PROFILES_TABLE = "profiles"


def raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    """A topic of raw bytes: every payload is encoded and decoded by us (msgspec)."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=partitions
    )


class Runtime:
    """Worker-side state shared by the agents: the table, the replicas and the pipeline."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.settings = settings
        self.replica = CatalogReplica(
            settings,
            settings.topic("item"),
            settings.item_partitions,
            settings.max_payload_bytes,
        )
        self.vectors = VectorReplica(settings, settings.item_vectors_topic, settings.item_partitions)
        self.item_vectors_topic = raw_topic(app, settings.item_vectors_topic, settings.item_partitions)
        self.table = app.Table(
            PROFILES_TABLE,
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            # Erasure: a profile's tombstone must compact its older records away in bounded
            # time. Kafka rolls a compacted log's segment by this lag too, so that once a
            # partition takes later writes the cleaner may remove them (README, "Erasure").
            extra_topic_configs={"max.compaction.lag.ms": str(int(settings.erasure_compaction_s * 1000))},
            # Faust's RocksDB defaults (64 MiB memtables, 3 of them, a 2 GiB block cache, per
            # partition) let memory grow with the data written: bounded here instead.
            options={
                "write_buffer_size": settings.rocksdb_write_buffer_bytes,
                "max_write_buffer_number": 2,
                "block_cache_size": settings.rocksdb_block_cache_bytes,
            },
        )
        self.profiles = ProfileStore(self.table, max_bytes=settings.profile_cache_bytes)
        self.recs_topic = raw_topic(app, settings.recommendations_topic, settings.partitions)
        self.dlq_topics = {
            kind: raw_topic(app, dlq.dlq_topic(settings.topic(kind)), settings.partitions_for(kind))
            for kind in EVENT_KINDS
        }
        self.deltas_topic = raw_topic(app, settings.scoring_deltas_topic, settings.partitions)
        # Keyed by the input source: one source's deltas stay in offset order on one partition.
        self.deltas = DeltaBatcher(
            lambda key, value, headers: self.deltas_topic.send_soon(key=key, value=value, headers=headers), settings.delta_batch
        )
        self.pipeline = Pipeline.from_settings(
            settings,
            store=self.profiles,
            catalog=self.replica.catalog,
            vectors=self.vectors,
            # send_soon: buffered, flushed by the producer and always before an offset commit.
            emit=lambda key, value: self.recs_topic.send_soon(key=key, value=value),
            publish=self._publish,
        )
        link_replicas(self.replica, self.vectors, self.pipeline.add_item_vector)
        self.shared = SharedReplica(settings, settings.scoring_deltas_topic, settings.partitions, self.pipeline)

    def _publish(self, delta: Delta) -> None:
        self.deltas.add(delta)

    async def handle(self, kind: EventKind, message: Any) -> Result:
        """One Faust message through the pipeline; its dead letter, if any, is sent here."""
        result = self.pipeline.process(kind, record_of(message))
        if result.letter is not None:
            await self.send_dead_letter(kind, message, result.letter)
        for index, value, letter in result.element_letters:
            await self.send_dead_letter(kind, message, letter, value=value, index=index)
        return result

    async def dead_letter(self, kind: EventKind, message: Any, letter: DeadLetter) -> None:
        """Count and send a dead letter found outside :meth:`Pipeline.process`."""
        self.pipeline.count_dead_letter(message.topic, letter)
        await self.send_dead_letter(kind, message, letter)

    async def send_dead_letter(
        self, kind: EventKind, msg: Any, letter: DeadLetter, *, value: bytes | None = None, index: int | None = None
    ) -> None:
        """The dead letter of ``msg``, or (``index``) of one event of a batch record, ``value``."""
        key, body, cut = dlq.bounded(msg.key, msg.value if index is None else value)
        extra = [] if index is None else [(dlq.H_BATCH_INDEX, str(index).encode())]
        await self.dlq_topics[kind].send(key=key, value=body, headers=dlq.message_headers(letter, msg) + extra + cut)
        log.warning("dead letter %s@%s:%s %s: %s", msg.topic, msg.partition, msg.offset, letter.reason, letter.message)


def record_of(message: Any) -> Record:
    """A Faust ``Message`` as the pipeline's :class:`Record`."""
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp=message.timestamp or None,
    )
