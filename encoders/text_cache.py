"""Encodings of a fixed list of texts, cached on disk by content.

The in-process evaluator encodes every review of a dataset with the worker's encoder (about
10k texts for Amazon Musical Instruments: a minute on two cores); re-running it to tune a
weight must not pay that again. The cache key is the graph's sha256 and a digest of the texts
in order, so a different model or a different text list never reads a stale file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from encoders.pooling import F32
from state import paths

#: Overrides the cache folder; "off" disables it.
CACHE_ENV = "PERSONA_EMBEDDING_CACHE"
_FORMAT = b"persona-text-encodings-v1"


class _Info(Protocol):
    @property
    def sha256(self) -> str: ...

    @property
    def version(self) -> str: ...


class TextEncoder(Protocol):
    """What :func:`encode_cached` needs of :class:`encoders.runtime.Encoder`."""

    @property
    def info(self) -> _Info: ...

    def encode(self, texts: Sequence[str]) -> F32: ...

    def sentiment(self, vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]: ...


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value is not None and value.strip().lower() in ("off", "0", "none", "false"):
        return None
    return Path(value) if value else paths.DEFAULT_EMBEDDING_CACHE


def cache_key(model_sha256: str, texts: Sequence[str]) -> str:
    h = hashlib.blake2b(_FORMAT, digest_size=16)
    h.update(model_sha256.encode())
    for t in texts:
        b = t.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def encode_cached(
    encoder: TextEncoder, texts: Sequence[str], *, folder: Path | None = None, chunk: int = 512
) -> tuple[F32, npt.NDArray[np.float32]]:
    """``(vectors, sentiments)`` of ``texts`` (rows in input order), from the cache when it
    holds this model's encodings of exactly these texts; written there otherwise."""
    where = folder if folder is not None else cache_dir()
    path = where / f"texts-{cache_key(encoder.info.sha256, texts)}.npz" if where is not None else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as data:
            return data["vectors"].astype(np.float32), data["sentiments"].astype(np.float32)
    parts = [encoder.encode(texts[i : i + chunk]) for i in range(0, len(texts), chunk)]
    vectors = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
    sentiments = encoder.sentiment(vectors).astype(np.float32) if len(texts) else np.zeros(0, np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, vectors=vectors, sentiments=sentiments)
        os.replace(tmp, path)
    return vectors, sentiments
