"""The gap guard in front of each agent (faust#596): a record whose partition skipped offsets
since the last one the agent saw, or since the committed offset, means records were fetched
and dropped; the agent restarts the worker before it commits past them. The bookkeeping is
:class:`stream_app.supervise.GapGuard` (Faust-free); this adapter reads Faust's committed
offsets and asks the broker about the log start and the group's commits."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.types import TP

from stream_app.kafka_clients import group_committed
from stream_app.settings import Settings
from stream_app.supervise import GapGuard, Restart

log = logging.getLogger("persona.worker")


class OrderCheck:
    """The gap guard in front of one agent: returns a :class:`Restart` decision, takes none."""

    def __init__(self, app: faust.App, settings: Settings | None = None) -> None:
        self._app = app
        self._settings = settings
        self._guard = GapGuard()

    async def check(self, msg: Any) -> Restart | None:
        consumer: Any = self._app.consumer
        tp = TP(msg.topic, msg.partition)
        committed = faust_committed = consumer._committed_offset.get(tp)
        earliest: int | None = None  # the log's start, asked of the broker at most once a record
        if committed is None and msg.offset > 0 and self._guard.first_seen(msg.partition):
            # No committed offset (Faust keeps none for a partition the group never committed,
            # nor for offset 0): the fetch starts at the log's start (auto_offset_reset=earliest),
            # so that is where the first record must be. Compared with nothing, a hole here was
            # applied past and then committed past (tests/chaos/test_seek_hole.py). Offset 0
            # follows no hole: no broker call then (the call delays the partition's first record).
            committed = earliest = (await consumer.earliest_offsets(tp)).get(tp)
        missing = self._guard.check(msg.partition, msg.offset, committed)
        # What each source said, for the restart's reason: a false alarm after a takeover
        # (bench scale, 2026-12-08) could not be told from a drop without it.
        evidence = ""
        if missing is not None and self._guard.first_seen(msg.partition):
            # Right after (re)assignment a jump can be real: retention deleted the records.
            if earliest is None:
                earliest = (await consumer.earliest_offsets(tp)).get(tp, 0)
            if earliest >= msg.offset:
                log.warning("%s: records %d..%d were deleted by retention before being processed", tp, missing, msg.offset - 1)
                missing = None
            else:
                group = await self._group_committed(tp) if self._settings is not None else "not asked"
                if isinstance(group, int) and group >= msg.offset:
                    # Seen in bench scale: a worker joining under load was handed a partition whose
                    # committed offset Faust read before the previous owner's last commit; the fetch
                    # then started at the newer one. Those records were processed, not lost.
                    log.warning("%s: records %d..%d were committed by the partition's previous owner", tp, missing, msg.offset - 1)
                    missing = None
                else:
                    evidence = (f" (Faust's committed offset: {faust_committed}; the log's start: {earliest}; the group's "
                                f"committed offset from the broker: {group if group is not None else 'none'})")
        if missing is not None:
            return Restart(f"{tp}: offset {msg.offset} reached the agent but {missing} never did (faust#596){evidence}")
        self._guard.advance(msg.partition, msg.offset)
        return None

    async def _group_committed(self, tp: Any) -> int | str | None:
        """The group's committed offset on ``tp``, read from the broker now (None: none), or
        why the broker could not say (then the restart stands: the safe side)."""
        assert self._settings is not None
        settings = self._settings
        try:
            committed: int | None = await asyncio.get_running_loop().run_in_executor(
                None, group_committed, settings, settings.app_id, tp.topic, tp.partition
            )
        except Exception as exc:
            log.warning("%s: cannot read the group's committed offset: %s", tp, exc)
            return f"unreadable ({type(exc).__name__}: {exc})"
        return committed
