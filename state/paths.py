"""Where things live by default: the one place for each default path.

At the bottom of the rooms so that every package (the worker's settings, the trainer, the
benchmarks, the tests) can read the same defaults; ``stream_app.settings`` builds its
fields from these, and code without a ``Settings`` (the exporter) uses :func:`data_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The public datasets (never copied into the project).
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
#: The encoder registry (versions + CURRENT).
DEFAULT_MODEL_REGISTRY = REPO_ROOT / "models" / "encoder"
#: The trained-ranker registry (versions + CURRENT), written by `persona train`.
DEFAULT_RANKER_REGISTRY = REPO_ROOT / "models" / "ranker"
#: The worker's RocksDB state.
DEFAULT_STATE_DIR = REPO_ROOT / "var" / "persona"
#: The fp32 + int8 test encoders `make test-models` exports.
DEFAULT_TEST_MODEL_REGISTRY = REPO_ROOT / "var" / "test-models" / "encoder"


def user_cache_dir() -> Path:
    """The user's cache ($XDG_CACHE_HOME or ~/.cache)/persona, beside the Kafka jars: what is
    kept there is keyed by everything it depends on, so every clone (CI's fresh one too) can
    reuse it."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "persona"


#: Text embeddings kept between processes and clones (export's head vectors, the evaluator's
#: text encodings), content-keyed; ``PERSONA_EXPORT_CACHE`` / ``PERSONA_EMBEDDING_CACHE`` override.
DEFAULT_EMBEDDING_CACHE = user_cache_dir() / "embeddings"


def data_dir() -> Path:
    """``PERSONA_DATA_DIR`` or the default: for code that runs without a ``Settings``."""
    return Path(os.environ.get("PERSONA_DATA_DIR") or DEFAULT_DATA_DIR)
