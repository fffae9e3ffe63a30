"""The models an offline run uses: the text encoder and the ranker, chosen by name.

Shared by ``persona evaluate``, ``persona train`` and the evaluation report; always on CPU,
so that their figures do not depend on the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encoders.ranker_model import OnnxRanker, load_ranker
from encoders.registry import Registry
from scoring.ranker import FEATURES
from stream_app.settings import Settings


def open_text_encoder(choice: str, settings: Settings) -> Any:
    """The evaluator's text encoder: ``none``; ``auto`` (the settings' registry when it has a
    CURRENT version, else the test models of ``make test-models``, else none); or a registry or
    version folder. Loaded on CPU: the figures must not depend on the machine."""
    from encoders.runtime import load_encoder
    from state.paths import DEFAULT_TEST_MODEL_REGISTRY

    if choice == "none":
        return None
    if choice == "auto":
        for root in (settings.model_registry, DEFAULT_TEST_MODEL_REGISTRY):
            current = Registry(root).current()
            if current is not None:
                return load_encoder(current, device="cpu")
        return None
    folder = Path(choice)
    current = Registry(folder).current()
    return load_encoder(current if current is not None else folder, device="cpu")


def open_ranker(choice: str, settings: Settings) -> OnnxRanker | None:
    """``hand`` (None: the settings' weights), ``current`` (the ranker registry's CURRENT, None
    when nothing is published), or a ranker registry or version folder."""
    if choice == "hand":
        return None
    if choice == "current":
        current = Registry(settings.ranker_registry).current()
        return None if current is None else load_ranker(current, FEATURES)
    folder = Path(choice)
    current = Registry(folder).current()
    return load_ranker(current if current is not None else folder, FEATURES)
