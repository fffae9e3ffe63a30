"""Fixtures of the chaos tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.kafka import launcher
from deploy.ports import free_port


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, data = free_port(), tmp_path / "kafka-bounced"
    handle = launcher.start(port=port, data_dir=data)
    try:
        yield port, data
    finally:
        launcher.stop(launcher.status(data) or handle)
