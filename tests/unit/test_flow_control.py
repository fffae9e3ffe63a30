"""A seek to the committed offsets stops the flow first (stream_app.flow_control)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from stream_app.flow_control import UNFIXED_ENV, stop_flow_on_seek


def _consumer() -> Any:
    app = faust.App("flow-control-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    return app.consumer  # made, not started: nothing connects


def _seek_seen(consumer: Any) -> dict[str, Any]:
    """Run the consumer's perform_seek with the broker's answer faked; what the seek saw."""
    tp = faust.types.TP("t", 3)
    seen: dict[str, Any] = {}

    async def seek_to_committed() -> dict[Any, int]:
        seen["flow_active"] = consumer.flow_active
        return {tp: 4116}

    consumer.seek_to_committed = seek_to_committed
    consumer._read_offset[tp] = 4960  # the fetch loop had read a batch past the committed offset
    asyncio.run(consumer.perform_seek())
    seen["read_offset"] = consumer._read_offset[tp]
    seen["flow_active_after"] = consumer.flow_active
    return seen


def test_a_seek_stops_the_flow_before_it_asks_for_the_committed_offsets() -> None:
    consumer = _consumer()
    assert consumer.flow_active
    stop_flow_on_seek(consumer)
    seen = _seek_seen(consumer)
    # Stopped: the fetch loop's getmany ends its batch at the next record. Faust's own seek still
    # ran (the read offset is back at the committed one), and the flow stays stopped until the
    # caller resumes it after clearing the buffers.
    assert seen == {"flow_active": False, "read_offset": 4116, "flow_active_after": False}
    consumer.resume_flow()
    assert consumer.flow_active


def test_faust_seeks_with_the_flow_active_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the fix closes, in Faust as it is (and the chaos test's control failpoint)."""
    assert _seek_seen(_consumer())["flow_active"] is True
    monkeypatch.setenv(UNFIXED_ENV, "1")
    consumer = _consumer()
    stop_flow_on_seek(consumer)
    assert _seek_seen(consumer)["flow_active"] is True
