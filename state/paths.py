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


def data_dir() -> Path:
    """``PERSONA_DATA_DIR`` or the default: for code that runs without a ``Settings``."""
    return Path(os.environ.get("PERSONA_DATA_DIR") or DEFAULT_DATA_DIR)
