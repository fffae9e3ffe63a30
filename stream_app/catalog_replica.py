"""Every worker's own copy of the item catalog.

Why not a Faust GlobalTable: faust's global tables have a record of workers that stop
reading standby partitions (faust#212, robinhood/faust#716, #541), and the catalog topic
is already the compacted source of truth. So each worker tails all partitions of the
items topic from the beginning with a group-less aiokafka consumer, and its agents wait
until the replica has reached the end offsets seen at start before they apply events.
Invalid catalog records are skipped here; the items agent (a group member) is the one
that dead-letters them, once.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from state.catalog import Catalog
from state.events import DeadLetter, Item, decode
from stream_app import metrics

log = logging.getLogger(__name__)


class CatalogReplica:
    def __init__(self, bootstrap: str, topic: str, partitions: int, max_bytes: int) -> None:
        self.catalog = Catalog()
        self.ready = asyncio.Event()
        self._bootstrap = bootstrap
        self._topic = topic
        # From settings (checked against the broker by ensure_topics at start): a group-less
        # aiokafka consumer does not learn partitions of topics it is not subscribed to.
        self._partitions = partitions
        self._max_bytes = max_bytes

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp, off in end.items() if off > 0}
            if not pending:
                self._mark_ready()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, records in batch.items():
                    for rec in records:
                        result = decode("item", rec.key, rec.value, max_bytes=self._max_bytes)
                        if isinstance(result, Item):
                            self.catalog.upsert(result)
                        elif not isinstance(result, DeadLetter):  # pragma: no cover
                            log.warning("unexpected catalog record type %s", type(result))
                if pending:
                    for tp in list(pending):
                        if await consumer.position(tp) >= end[tp]:
                            pending.discard(tp)
                    if not pending:
                        self._mark_ready()
                metrics.CATALOG_ITEMS.set(len(self.catalog))
        finally:
            await consumer.stop()

    def _mark_ready(self) -> None:
        if not self.ready.is_set():
            log.info("catalog replica ready: %d items", len(self.catalog))
            metrics.CATALOG_READY.set(1)
            self.ready.set()
