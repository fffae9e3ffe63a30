"""The trainer/exporter (trainer environment: torch, transformers, onnx).

``export_encoder`` is imported lazily so that ``export.reviews`` (the dataset splits)
stays importable in the worker environment, which has no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.pipeline import export_encoder

__all__ = ["export_encoder"]


def __getattr__(name: str) -> Any:
    if name == "export_encoder":
        from export.pipeline import export_encoder

        return export_encoder
    raise AttributeError(f"module 'export' has no attribute {name!r}")
