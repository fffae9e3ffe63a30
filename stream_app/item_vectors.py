"""Item text vectors: encoded once per item, text and encoder version; read by every worker.

Who encodes: the worker that owns the item's partition of the (group-consumed) items
topic. Its :class:`ItemEncoder` looks at every catalog item whose entry changed, and at
every item again when the encoder version or the partition assignment changes; an item
whose text has no vector of the current version yet is encoded (micro-batched, on a
worker thread) and published to ``<prefix>items.vectors``: compacted, keyed by item id,
one :class:`~state.interest.ItemVector` per item. An item without text gets no vector.

Who reads: every worker tails that topic (:class:`VectorReplica`) and keeps the vectors
of its *current* encoder version only, so a click or purchase adds its item's vector to
the interest under the same version the worker's reviews are encoded with; a new
encoder version re-reads the topic while the owners re-encode the catalog. Keying by item
(not by item and version) bounds the topic to one vector per item: workers briefly
disagreeing on the version during a hot swap may re-encode an item twice, never mix
versions in a profile (``state.interest`` restarts a profile's interest on a new version).

Lost sends need no recovery: after a restart the replica shows what exists, and the
owner encodes what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import numpy as np

from state.interest import ItemVector, item_vector_bytes, text_digest
from stream_app import metrics
from stream_app.catalog_replica import CatalogReplica, TopicTail
from stream_app.reviews import EncoderHolder
from stream_app.settings import Settings

log = logging.getLogger("persona.items")

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(ItemVector)


def dumps(vector: ItemVector) -> bytes:
    return _enc.encode(vector)


def loads(data: bytes) -> ItemVector:
    return _dec.decode(data)


class VectorReplica(TopicTail):
    """The latest vector of every item, for one wanted encoder version.

    Held in float16 (half of float32, which was the largest part of a worker's catalog
    memory; ``bench/catalog.py``): published vectors are float16-rounded already
    (``state.interest.item_vector_bytes``), so the copy is exact; a record from before that
    rounding is rounded here. The version is the wanted one, not stored per item."""

    def __init__(self, settings: Settings, topic: str, partitions: int) -> None:
        super().__init__(settings, topic, partitions)
        self.wanted: str | None = None
        #: item -> (text digest, float16 little-endian bytes)
        self._vectors: dict[str, tuple[str, bytes]] = {}
        #: told of every vector of the wanted version (the pipeline's content index)
        self.on_vector: Callable[[ItemVector], None] | None = None
        #: told when the wanted version changes (the catalog needs every text again)
        self.on_version: Callable[[str | None], None] | None = None

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, item_id: str) -> ItemVector | None:
        held = self._vectors.get(item_id)
        if held is None or self.wanted is None:
            return None
        digest, half = held
        vector = np.frombuffer(half, dtype="<f2").astype("<f4").tobytes()
        return ItemVector(item_id=item_id, version=self.wanted, digest=digest, vector=vector)

    def digest(self, item_id: str) -> str | None:
        """The text digest of the wanted-version vector held for ``item_id`` (no vector built)."""
        held = self._vectors.get(item_id)
        return None if held is None or self.wanted is None else held[0]

    def want(self, version: str | None) -> None:
        """Hold the vectors of ``version`` from now on (re-reads the topic if it changed)."""
        if version != self.wanted:
            self.wanted = version
            self.on_rewind()  # now, not when the read loop wakes: no old vector is served after this
            self.rewind()
            if self.on_version is not None:
                self.on_version(version)

    def on_rewind(self) -> None:
        self._vectors.clear()
        metrics.ITEM_VECTORS.set(0)
        metrics.ITEM_VECTORS_READY.set(0)

    def on_ready(self) -> None:
        log.info("item-vector replica ready: %d vectors of %s", len(self._vectors), self.wanted)
        metrics.ITEM_VECTORS_READY.set(1)

    def apply(self, partition: int, key: bytes | None, value: bytes | None, timestamp: float | None = None) -> None:
        if value is None or self.wanted is None:
            return
        try:
            vector = loads(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Only workers write this topic; a bad record is a bug, not input to dead-letter.
            log.error("unreadable item vector at key %r: %s", key, exc)
            return
        if vector.version == self.wanted:
            half = np.frombuffer(vector.vector, dtype="<f4").astype("<f2")
            self._vectors[vector.item_id] = (vector.digest, half.tobytes())
            if self.on_vector is not None:
                # The held values, so the content index and the interest see the same vector.
                self.on_vector(msgspec.structs.replace(vector, vector=half.astype("<f4").tobytes()))

    def after_batch(self) -> None:
        metrics.ITEM_VECTORS.set(len(self._vectors))


class ItemEncoder:
    """Encodes the texts of the items this worker owns that lack a current vector."""

    def __init__(
        self,
        catalog: CatalogReplica,
        vectors: VectorReplica,
        holder: EncoderHolder,
        owned: Callable[[], set[int]],
        send: Callable[[bytes, bytes, int], Any],
        *,
        batch: int,
        idle_s: float = 0.5,
    ) -> None:
        self._catalog = catalog
        self._vectors = vectors
        self._holder = holder
        self._owned = owned
        self._send = send
        self._batch = batch
        self._idle_s = idle_s
        self._todo: set[str] = set()
        self._version: str | None = None
        self._partitions: set[int] = set()
        #: item -> (version, digest) sent but maybe not read back yet
        self._sent: dict[str, tuple[str, str]] = {}

    def due(self, version: str, owned: set[int]) -> list[tuple[str, str]]:
        """Up to one batch of ``(item_id, text)`` to encode now."""
        if version != self._version or owned != self._partitions:
            self._version, self._partitions = version, owned
            self._todo = set(self._catalog.catalog.ids())
            self._catalog.changed.clear()
        elif self._catalog.changed:
            self._todo |= self._catalog.changed
            self._catalog.changed.clear()
        out: list[tuple[str, str]] = []
        dropped = False
        while self._todo and len(out) < self._batch:
            item_id = self._todo.pop()
            if self._catalog.partition_of.get(item_id) not in owned:
                continue
            entry = self._catalog.catalog.get(item_id)
            if entry is None or not entry.digest:
                continue
            digest = entry.digest
            if self._vectors.wanted == version and self._vectors.digest(item_id) == digest:
                continue
            if self._sent.get(item_id) == (version, digest):
                continue
            if not entry.text:
                # Dropped once its vector existed, and that vector is gone (another version, a
                # lost record): the re-read brings the text back and marks the item changed.
                dropped = True
                continue
            out.append((item_id, entry.text))
        if dropped:
            self._catalog.texts_needed()
        return out

    async def step(self) -> int:
        """Encode and publish one batch; the number of vectors sent."""
        encoder = self._holder.encoder
        # Only with a caught-up view of what exists, or a restart would re-encode everything.
        if encoder is None or not self._catalog.ready.is_set() or not self._vectors.ready.is_set():
            return 0
        version = str(encoder.info.version)
        if self._vectors.wanted != version:
            return 0  # the replica is switching to this version: wait until it has
        work = self.due(version, self._owned())
        if not work:
            return 0
        started = time.perf_counter()
        encodings = await self._holder.encode_items(encoder, [t for _, t in work])
        metrics.ENCODE_SECONDS.observe(time.perf_counter() - started)
        metrics.ENCODE_TEXTS.observe(len(work))
        for (item_id, text), encoding in zip(work, encodings, strict=True):
            digest = text_digest(text)
            rounded = item_vector_bytes(np.frombuffer(encoding.vector, dtype="<f4"))
            vector = ItemVector(item_id=item_id, version=version, digest=digest, vector=rounded)
            # Same partition as the item's catalog record: one owner for both.
            await self._send(item_id.encode(), dumps(vector), self._catalog.partition_of[item_id])
            self._sent[item_id] = (version, digest)
        metrics.ITEMS_ENCODED.inc(len(work))
        return len(work)

    async def run(self) -> None:
        while True:
            if not await self.step():
                await asyncio.sleep(self._idle_s)


def link_replicas(catalog: CatalogReplica, vectors: VectorReplica, on_vector: Callable[[ItemVector], None] | None = None) -> None:
    """Wires a worker's two replicas: every vector of the wanted version goes to ``on_vector``
    (the pipeline's content index) and lets the catalog drop the text it was made from; a new
    wanted version makes the catalog read its texts again (``CatalogReplica``)."""

    def arrived(vector: ItemVector) -> None:
        if on_vector is not None:
            on_vector(vector)
        catalog.vector_arrived(vector.item_id, vector.digest)

    def version_changed(version: str | None) -> None:
        catalog.texts_needed()

    vectors.on_vector = arrived
    vectors.on_version = version_changed
    catalog.current_digest = vectors.digest


def owned_partitions(assignment: Iterable[Any], topic: str) -> set[int]:
    """Partitions of ``topic`` among a consumer's assigned topic-partitions."""
    return {tp.partition for tp in assignment if tp.topic == topic}
