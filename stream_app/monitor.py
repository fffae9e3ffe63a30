"""The worker's Faust monitor and log filter: small hooks Faust calls, kept out of the app's wiring."""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from faust.sensors import Monitor

from state.errors import CONFIG_EXIT_CODE
from stream_app.flush import DeliveryGuard, exit_now
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


#: aiokafka's warning when the coordinator no longer knows this consumer's member id.
_MEMBER_UNKNOWN = "Heartbeat failed: local member_id was not recognized"
#: A setting to fix: the supervisor must not restart the worker (it would only take the id back).
_exit_config = functools.partial(exit_now, code=CONFIG_EXIT_CODE)

class SharedInstanceId(logging.Filter):
    """Stops a static member whose ``group_instance_id`` another live worker also uses.

    Two workers with one instance id do not fail: each JoinGroup gives the id to the newer
    member, the older one's next heartbeat finds its member id unknown, it joins again, and so
    on every few seconds (seen with two workers and one id: both kept taking the same partitions
    back, each processing them in turn). One unknown member id alone is also what a worker that
    stalled past its session sees, so only ``times`` of them within ``window_s`` stop the
    worker, with an error naming the setting and the exit code of a setting to fix (never a
    restart, which would only take the id back). The first of the two to count them exits; the
    other then keeps the id."""

    def __init__(
        self,
        instance_id: str,
        *,
        times: int = 3,
        window_s: float = 120.0,
        on_shared: Callable[[str], None] = _exit_config,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.window_s = window_s
        self._seen: deque[float] = deque(maxlen=times)
        self._on_shared = on_shared
        self._clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_MEMBER_UNKNOWN):
            now = self._clock()
            self._seen.append(now)
            span = now - self._seen[0]
            if len(self._seen) == self._seen.maxlen and span <= self.window_s:
                times = len(self._seen)
                self._seen.clear()
                self._on_shared(
                    f"PERSONA_GROUP_INSTANCE_ID={self.instance_id!r} is in use by another live worker of "
                    f"this group: the group gave the id to another member {times} times in {span:.0f} s. "
                    "Give every worker its own id (in Kubernetes, the StatefulSet pod's name); stopping "
                    "this worker, without a restart"
                )
        return True
