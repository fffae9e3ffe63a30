"""Every worker's own copies of the compacted topics: the catalog and the item vectors.

Why not a Faust GlobalTable: faust's global tables have a record of workers that stop
reading standby partitions (faust#212, robinhood/faust#716, #541), and these topics are
already compacted sources of truth. So each worker tails all partitions from the
beginning with a group-less aiokafka consumer, and its agents wait until a replica has
reached the end offsets seen at start before they apply events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from state.catalog import Catalog
from state.events import DeadLetter, Item, decode
from stream_app import kafka_clients, metrics
from stream_app.settings import Settings

log = logging.getLogger(__name__)

#: Longest stretch a replica applies records without yielding to the event loop (s).
SLICE_S = 0.01


class TopicTail:
    """Reads every partition of one topic from the beginning, forever.

    ``ready`` is set once the end offsets seen at (re)start are reached; :meth:`rewind`
    asks the loop to read the topic again from the beginning (and clears ``ready``).
    """

    #: where to go when the next offset is no longer on the topic (its oldest records deleted):
    #: "earliest" (the oldest kept) or "none" (:meth:`out_of_range` decides)
    offset_reset = "earliest"

    def __init__(self, settings: Settings, topic: str, partitions: int) -> None:
        self.ready = asyncio.Event()
        self._settings = settings
        self._topic = topic
        # From settings (checked against the broker by ensure_topics at start): a group-less
        # aiokafka consumer does not learn partitions of topics it is not subscribed to.
        self._partitions = partitions
        self._rewind = True

    def apply(self, partition: int, key: bytes | None, value: bytes | None, timestamp: float | None = None) -> None:
        """One record; ``timestamp`` is its Kafka timestamp in seconds (None when it has none)."""
        raise NotImplementedError

    def skip(self, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> bool:
        """Whether a record can be passed by from its key and headers alone, not applied."""
        return False

    def on_ready(self) -> None:
        """Called once per catch-up."""

    def after_batch(self) -> None:
        """Called after each fetched batch has been applied (gauges: not per record)."""

    def on_rewind(self) -> None:
        """Called before the topic is read again from the beginning."""

    async def start_offsets(self) -> dict[int, int]:
        """Where each partition is read from at a (re)start; absent: its beginning."""
        return {}

    def out_of_range(self, exc: OffsetOutOfRangeError) -> None:
        """The next offset of a partition was deleted (``offset_reset = "none"`` only)."""
        raise exc

    def rewind(self) -> None:
        self._rewind = True
        self.ready.clear()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **kafka_clients.aiokafka(self._settings), group_id=None, enable_auto_commit=False, auto_offset_reset=self.offset_reset
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
            consumer.assign(tps)
            pending: set[Any] = set()
            end: dict[Any, int] = {}
            while True:
                if self._rewind:
                    self._rewind = False
                    self.on_rewind()
                    start = await self.start_offsets()
                    for tp in tps:
                        if tp.partition in start:
                            consumer.seek(tp, start[tp.partition])
                        else:
                            await consumer.seek_to_beginning(tp)
                    end = await consumer.end_offsets(tps)
                    pending = {tp for tp, off in end.items() if off > start.get(tp.partition, 0)}
                    if not pending:
                        self._mark_ready()
                try:
                    batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                except OffsetOutOfRangeError as exc:
                    self.out_of_range(exc)
                    continue
                if self._rewind:  # asked while we waited: this batch may predate the request
                    continue
                budget = time.perf_counter() + SLICE_S
                catching_up = not self.ready.is_set()
                for tp, records in batch.items():
                    for rec in records:
                        ts = rec.timestamp / 1000.0 if rec.timestamp and rec.timestamp > 0 else None
                        if not (rec.headers and self.skip(rec.key, rec.headers)):
                            self.apply(tp.partition, rec.key, rec.value, ts)
                        if catching_up and time.perf_counter() > budget:
                            # A catch-up batch (up to 5,000 records, each scoring-delta record up
                            # to 256 deltas) held the loop for 0.3 s at a time: the other replicas
                            # and the consumer's heartbeats wait for it. Let them run. Only while
                            # catching up (the agents wait for it anyway): once ready, a batch is
                            # a few records and is applied whole, so no ranking sees half of it
                            # (yielding there made two workers' in-flight lists lag each other more).
                            await asyncio.sleep(0)
                            budget = time.perf_counter() + SLICE_S
                            if self._rewind:  # the rest of this batch is read again anyway
                                break
                    if self._rewind:
                        break
                if batch:
                    self.after_batch()
                if pending:
                    for tp in list(pending):
                        if await consumer.position(tp) >= end[tp]:
                            pending.discard(tp)
                    if not pending:
                        self._mark_ready()
        finally:
            await consumer.stop()

    def _mark_ready(self) -> None:
        if not self.ready.is_set():
            self.on_ready()
            self.ready.set()


class CatalogReplica(TopicTail):
    """The item catalog. Invalid catalog records are skipped here; the items agent (a
    group member) is the one that dead-letters them, once.

    Item text is held until the item has a vector of the current encoder version for that
    text (``state.catalog``): :meth:`vector_arrived` drops it, and so does reading an entry
    whose vector is already there (``current_digest``). A new encoder version needs every
    text again: :meth:`texts_needed` reads the topic again (only if some text was dropped).
    """

    def __init__(self, settings: Settings, topic: str, partitions: int, max_bytes: int) -> None:
        super().__init__(settings, topic, partitions)
        self._max_ahead_s = settings.max_event_ahead_s
        self.catalog = Catalog()
        #: item -> partition of the items topic (who encodes its text: that partition's owner)
        self.partition_of: dict[str, int] = {}
        #: items whose catalog entry changed since the item encoder last looked
        self.changed: set[str] = set()
        self._max_bytes = max_bytes
        #: the digest of the current-version vector held for an item, if any (the vector replica's)
        self.current_digest: Callable[[str], str | None] = lambda item_id: None
        #: set at the first catch-up and never cleared: a re-read for a new encoder version
        #: (:meth:`texts_needed`) does not make the worker unready
        self.was_ready = False

    def apply(self, partition: int, key: bytes | None, value: bytes | None, timestamp: float | None = None) -> None:
        # The same checks as the items agent's, event time included: a catalog entry it
        # dead-letters must not win last-writer-wins here.
        result = decode("item", key, value, max_bytes=self._max_bytes, record_ts=timestamp, max_ahead_s=self._max_ahead_s)
        if isinstance(result, Item):
            if self.catalog.upsert(result):
                self.partition_of[result.item_id] = partition
                self.changed.add(result.item_id)
                digest = self.current_digest(result.item_id)
                if digest:
                    self.catalog.drop_text(result.item_id, digest)
        elif not isinstance(result, DeadLetter):  # pragma: no cover
            log.warning("unexpected catalog record type %s", type(result))

    def after_batch(self) -> None:
        metrics.CATALOG_ITEMS.set(len(self.catalog))

    def on_ready(self) -> None:
        log.info("catalog replica ready: %d items (%d without their encoded text)", len(self.catalog), self.catalog.dropped)
        metrics.CATALOG_READY.set(1)
        self.was_ready = True

    def vector_arrived(self, item_id: str, digest: str) -> None:
        """A vector of the current encoder version for ``item_id``'s text with ``digest``."""
        self.catalog.drop_text(item_id, digest)

    def texts_needed(self) -> bool:
        """Some text was dropped and is needed again (a new encoder version, a lost vector):
        read the topic again, keeping what has no current vector. Returns whether it rewinds."""
        if not self.catalog.dropped:
            return False
        log.info("catalog replica: reading the items topic again for %d dropped texts", self.catalog.dropped)
        self.rewind()
        return True
