"""The worker's tail of the control topic (:mod:`stream_app.control`): worker environment only."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from stream_app.catalog_replica import TopicTail
from stream_app.control import Announcement
from stream_app.settings import Settings

log = logging.getLogger(__name__)


class ControlTail(TopicTail):
    """Sets :attr:`poke` whenever an announcement arrives (and once at catch-up)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.control_topic, 1)
        self.poke = asyncio.Event()
        self.received = 0

    def apply(self, partition: int, key: bytes | None, value: bytes | None, timestamp: float | None = None) -> None:
        if value is None:
            return
        try:
            note = msgspec.json.decode(value, type=Announcement)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("unreadable control record at key %r: %s", key, exc)
            return
        self.received += 1
        log.info("announced: %s %s %s", note.kind, note.action, note.version)
        self.poke.set()
