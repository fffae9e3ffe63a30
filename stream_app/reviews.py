"""Reviews: a batching encoder stage in front of the per-event profile stage.

Faust refuses table writes outside per-event iteration (the RocksDB store takes the
partition from the current event), while the encoder wants batches. So review records are
handled in two stages:

1. the reviews agent takes micro-batches (``PERSONA_REVIEW_BATCH`` records or
   ``PERSONA_REVIEW_WAIT_S`` seconds), decodes them (bad ones are dead-lettered), encodes
   all texts in one call on a worker thread (ONNX Runtime releases the GIL), and sends
   one :class:`EncodedReview` per review to ``<prefix>reviews.encoded``, keyed by user
   and on the *same partition* as the source record;
2. the encoded-reviews agent applies each one to the profile, per event, with the
   *source* record's coordinates as its idempotency origin. Stage 1 replays after a
   crash re-send the same coordinates, so stage 2 skips them exactly.

The encoder is swapped between batches, never inside one, so one batch is one version.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from state.errors import ModelError
from state.events import Review, encoder_text
from state.profile import Encoding, Origin
from stream_app import metrics

log = logging.getLogger("persona.reviews")


class EncodedReview(msgspec.Struct, frozen=True):
    """The internal record between the two stages (MessagePack)."""

    review: Review
    origin: Origin
    encoding: Encoding | None = None


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(EncodedReview)


def dumps(record: EncodedReview) -> bytes:
    return _enc.encode(record)


def loads(data: bytes) -> EncodedReview:
    return _dec.decode(data)


def review_text(review: Review) -> str:
    """The text the encoder sees (:func:`state.events.encoder_text`)."""
    return encoder_text(review.summary, review.text)


class EncoderHolder:
    """The current encoder, loaded from the registry, hot-swapped when CURRENT moves.

    A new version is loaded on a worker thread, checked on its golden inputs and warmed
    up before it replaces the old one; a broken artifact is refused and the old one kept.

    All encoding of a worker runs on *one* thread, reviews first. Review batches and the
    catalog's item texts used to run concurrently on the loop's default executor, each
    asking onnxruntime for every core: on a small machine they thrashed each other and the
    event loop, so one review batch could take longer than the stall timeout while the
    catalog was re-encoded. One encode at a time keeps the cores for the model and a core's
    slice for the loop, and a review batch (which holds its partition's commit) waits for at
    most one in-flight item batch, never for the catalog.
    """

    def __init__(
        self,
        registry: Path,
        *,
        device: str = "auto",
        threads: int | None = None,
        fp16: bool = True,
        batch_size: int = 64,
        max_batch_tokens: int | None = None,
        spin: bool = True,
    ) -> None:
        self.registry_path = registry
        #: onnxruntime's intra-op spin-wait (encoders.runtime.session_options)
        self.spin = spin
        self.device = device
        self.threads = threads
        self.fp16 = fp16
        #: rows, and padded tokens, per inference call (Encoder.prepare)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.encoder: Any | None = None
        self._failed: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="persona-encode")
        self._reviews_waiting = 0

    @property
    def version(self) -> str | None:
        return None if self.encoder is None else str(self.encoder.info.version)

    def _load(self, version_dir: Path) -> Any:
        from encoders import load_encoder

        encoder = load_encoder(
            version_dir, device=self.device, threads=self.threads, fp16=self.fp16,  # type: ignore[arg-type]
            batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens, spin=self.spin,
        )
        encoder.golden_check()
        encoder.encode(["warm-up", "a slightly longer warm-up sentence for the session"])
        return encoder

    async def refresh(self) -> bool:
        """Load the registry's CURRENT version if it is new; ``True`` when swapped."""
        from encoders import Registry

        current = Registry(self.registry_path).current()
        if current is None or current.name == self.version or current.name == self._failed:
            return False
        loop = asyncio.get_running_loop()
        try:
            encoder = await loop.run_in_executor(None, self._load, current)
        except (ModelError, OSError, ValueError, RuntimeError) as exc:
            self._failed = current.name
            metrics.MODEL_RELOAD_FAILURES.inc()
            log.error("refused encoder %s, keeping %s: %s", current.name, self.version, exc)
            return False
        old = self.version
        self.encoder = encoder
        self._failed = None
        if old is not None:
            metrics.MODEL_INFO.remove("encoder", old)
        metrics.MODEL_INFO.labels("encoder", current.name).set(1)
        log.warning("encoder %s -> %s (%s on %s)", old, current.name, encoder.info.graph, encoder.provider)
        return True

    async def encode_reviews(self, encoder: Any, texts: list[str]) -> list[Encoding]:
        """Encode a review batch on the encode thread, ahead of any item batch not yet started."""
        self._reviews_waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.encode, encoder, texts)
        finally:
            self._reviews_waiting -= 1

    async def encode_items(self, encoder: Any, texts: list[str], *, poll_s: float = 0.01) -> list[Encoding]:
        """Encode item texts on the encode thread once no review batch is waiting for it."""
        while self._reviews_waiting:
            await asyncio.sleep(poll_s)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.encode, encoder, texts)

    def encode(self, encoder: Any, texts: list[str]) -> list[Encoding]:
        vectors = encoder.encode(texts)
        sentiments = encoder.sentiment(vectors)
        version = str(encoder.info.version)
        return [
            Encoding(version=version, vector=np.asarray(v, dtype="<f4").tobytes(), text_sentiment=float(s))
            for v, s in zip(vectors, sentiments, strict=True)
        ]
