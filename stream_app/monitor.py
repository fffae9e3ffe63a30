"""The worker's Faust monitor and log filter: small hooks Faust calls, kept out of the app's wiring."""

from __future__ import annotations

import logging
from typing import Any

from faust.sensors import Monitor

from stream_app.flush import DeliveryGuard
from stream_app.runtime import Runtime


class PersonaMonitor(Monitor):
    """Faust's monitor, minus its per-event bookkeeping, plus our pre-commit flush.

    Faust calls ``on_commit_initiated`` synchronously at the start of every commit, and
    nothing awaits between it and Faust reading the acked offsets: everything acked so
    far gets its profile and recommendation handed to the producer first (which the
    commit then flushes). The per-event hooks keep in-memory stats (in ms) that nothing
    reads here; Prometheus metrics replace them, and skipping them is measurable per event.
    A record the producer failed to deliver goes to the delivery guard (stream_app.flush).
    """

    runtime: Runtime | None = None
    delivery: DeliveryGuard | None = None

    def on_commit_initiated(self, consumer: Any) -> Any:
        if self.runtime is not None:
            self.runtime.profiles.flush()
            self.runtime.pipeline.flush_pending(all_users=True)
            self.runtime.deltas.flush()
        return super().on_commit_initiated(consumer)

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: dict[str, Any] | None = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return topic  # this sensor's state for the record: on_send_error names the topic

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        if self.delivery is not None:
            self.delivery.failed(str(state), exc)


class RetriableAsWarning(logging.Filter):
    """aiokafka logs a *retried* coordinator lookup at ERROR ("Group Coordinator Request
    failed: GroupCoordinatorNotAvailableError" while a fresh broker loads its offsets topic)
    and then simply retries. An operator's ERROR line should mean something is wrong, so a
    retriable error is shown as a WARNING; a non-retriable one stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if record.levelno == logging.ERROR and getattr(err, "retriable", False):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
