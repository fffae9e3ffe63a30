"""A record whose processing raised a bug is dead-lettered, and the worker restarts without it.

Bad input never raises: ``state.events.decode`` turns it into a dead letter. An exception
out of the apply path is a bug met by one record (in the profile update, the scoring state,
a ranking). Left to Faust, the agent's stream acknowledges the record as the agent crashes
(the ack sits in a ``finally`` around the stream's ``yield``) and Faust restarts the agent.
Seen with this guard disabled (``tests/chaos/test_poison_bug.py``'s failpoint): the restarted
agent met the next offset first and the gap guard restarted the worker; on the replay the
record raised again, was acknowledged again, and the gap guard accepted the committed offset
past it as the previous owner's work. The record was committed unprocessed, with no dead
letter. It may also have been half applied to the profile cache, which a commit writes back.

Here instead, in this order, without yielding to the event loop (so no commit can run in
between and write the cache back):

1. the record goes to ``<topic>.dlq`` with reason ``internal`` and the exception's class and
   message, and the worker waits until the broker has it (``acks=all``);
2. its coordinates are appended to a ledger in the state directory (fsynced);
3. the worker exits with the restart code; the ``persona worker`` supervisor starts it again
   at once, and the replay from the committed offsets drops every change the process held in
   memory, the half-applied record's included.

The replay passes the ledger's records by (counted as ``dead_letter``), so one bad record
costs one restart, not a crash loop, and the partition moves on. At each start the worker
forgets the records its group has committed past (:meth:`PoisonLedger.prune`), so the ledger
holds only what a replay can still meet.

The ledger is the group's, not only the worker's: with the dead letter, step 1 also writes the
record's coordinates to the compacted ``poison`` topic (``Settings.poison_topic``), and every
worker reads that topic after each rebalance, before it processes its next record
(:func:`refresh`). Before, a ledger on the worker's disk alone meant that the worker which took
the partition over while the failing one restarted (or a pod that came back with an empty
disk) met the record again: another dead letter and another restart, one per worker of the
group (``test_regression_poison_ledger_was_per_worker``). What still can meet it twice: a
rebalance that moves the partition in the very moment the record raises, before the topic has
its coordinates. Pruning writes tombstones for what the group committed past. Once the bug is fixed,
``persona dlq redrive <kind> --reason internal`` publishes the record again. The scoring deltas
the record produced die with the process too: a raise inside the pipeline comes before the
handler first yields, and Faust's producer buffer (``send_soon``) is drained only by the event
loop. A raise after the handler yielded (while it sent a batch element's dead letter) can
follow deltas that already went out to the other workers; the restart cannot take those back.

If the broker does not confirm the dead letter in time, nothing goes in the ledger and the
worker restarts anyway: the replay meets the record again and retries (at least once, never
skipped unkept).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from state.errors import PersonaError
from state.events import DeadLetter
from stream_app import dlq, metrics
from stream_app.flush import exit_now
from stream_app.kafka_clients import watermarks
from stream_app.settings import Settings
from stream_app.supervise import RESTART_EXIT_CODE

log = logging.getLogger("persona.poison")

#: The ledger's file name, in the worker's state directory.
LEDGER_NAME = "poisoned.jsonl"
#: Test failpoint: ``topic:partition:offset`` of a record whose processing raises after it was
#: applied (a bug at the end of the apply path, e.g. in the ranking). Unset in production.
FAILPOINT_ENV = "PERSONA_FAILPOINT_RAISE"
#: Seconds to wait for the broker to confirm the dead letter before restarting without it.
CONFIRM_TIMEOUT_S = 30.0

Coordinates = tuple[str, int, int]


class PoisonLedger:
    """Records already dead-lettered as ``internal``: ``(topic, partition, offset)``, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: set[Coordinates] = set()
        #: read from the group's topic (:func:`read_shared`)
        self._shared: set[Coordinates] = set()
        #: the shared ones the last :meth:`prune` forgot: tombstones to write (:func:`forget_shared`)
        self.forgotten: set[Coordinates] = set()
        #: True until the group's topic was read since the last rebalance (:func:`refresh`)
        self.stale = True
        #: the read in flight, which every agent that finds the ledger stale awaits
        self.reading: asyncio.Future[None] | None = None
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():  # add() starts each entry on a new line: blank ones are not torn
                    continue
                try:
                    topic, partition, offset = json.loads(line)
                    self._seen.add((str(topic), int(partition), int(offset)))
                except (ValueError, TypeError):  # a line torn by a crash mid-write: not recorded
                    log.warning("%s: ignoring a torn line %r", path, line[:80])

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, coordinates: object) -> bool:
        return coordinates in self._seen

    def prune(self, committed: Callable[[str, int], int | None]) -> int:
        """Forget the records the group has committed past (``committed(topic, partition)``: the
        group's next offset there, None when unknown): a replay starts at the committed offset,
        so it never meets them again. The file is rewritten atomically. Returns how many went."""
        keep: set[Coordinates] = set()
        for topic, partition, offset in self._seen:
            done = committed(topic, partition)
            if done is None or offset >= done:
                keep.add((topic, partition, offset))
        dropped = len(self._seen) - len(keep)
        self.forgotten = self._shared - keep
        self._shared &= keep
        if dropped:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                for entry in sorted(keep):
                    fh.write(json.dumps(list(entry)) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            self._seen = keep
        return dropped

    def merge(self, found: set[Coordinates]) -> None:
        """Records the group's topic holds (dead-lettered by any worker of the group)."""
        self._seen |= found
        self._shared |= found

    def add(self, topic: str, partition: int, offset: int) -> None:
        """Record it durably: appended and fsynced before the worker exits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            # A leading newline ends a line a crash may have torn, so the new one parses.
            fh.write("\n" + json.dumps([topic, partition, offset]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._seen.add((topic, partition, offset))


class Guard:
    """Around one record's processing: an exception other than a :class:`PersonaError` (a
    crash decision, state/errors.py) dead-letters the record and restarts the worker
    (:func:`dead_letter_and_restart`). Also where the test failpoint fires."""

    def __init__(self, settings: Settings, ledger: PoisonLedger, kind_topic: str, message: Any) -> None:
        self._settings, self._ledger, self._kind_topic, self._message = settings, ledger, kind_topic, message

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        msg = self._message
        if exc is None:
            try:
                raise_failpoint(msg.topic, msg.partition, msg.offset)
            except RuntimeError as failed:
                exc = failed
        if exc is None or isinstance(exc, PersonaError) or not isinstance(exc, Exception):
            return  # done, a crash decision, or cancellation: not this module's business
        dead_letter_and_restart(self._settings, self._ledger, self._kind_topic, msg, exc)


def passed_by(ledger: PoisonLedger, message: Any) -> bool:
    """Whether ``message`` was dead-lettered before the last restart. Then it is not processed
    again, and it is counted here, by the process that passes it by, as a ``dead_letter``
    outcome with reason ``internal``: the process that sent it exited before any scrape."""
    if not ledger or (message.topic, message.partition, message.offset) not in ledger:
        return False
    metrics.DEAD_LETTERS.labels("internal").inc()
    metrics.event_counter(message.topic, "dead_letter").inc()
    return True


def internal_letter(exc: BaseException) -> DeadLetter:
    """The dead letter of a record whose processing raised ``exc``."""
    return DeadLetter(reason="internal", error=type(exc).__name__, message=str(exc) or repr(exc))


def raise_failpoint(topic: str, partition: int, offset: int) -> None:
    """Raise if :data:`FAILPOINT_ENV` names this record (tests only; one lookup per record)."""
    want = os.environ.get(FAILPOINT_ENV)
    if want and want == f"{topic}:{partition}:{offset}":
        raise RuntimeError(f"failpoint {FAILPOINT_ENV} at {want}")


def confirm_dead_letter(settings: Settings, kind_topic: str, message: Any, letter: DeadLetter) -> bool:
    """Send ``message`` (a Faust message of ``kind_topic``) to its dead-letter topic and block
    until the broker confirms it; False when it did not within :data:`CONFIRM_TIMEOUT_S`.

    A blocking librdkafka producer, not Faust's: awaiting Faust's would let other tasks run,
    among them a commit that writes back the profile cache this record may have half changed."""
    from confluent_kafka import KafkaError, Producer

    failures: list[KafkaError] = []
    # Not idempotent: one record, and a retried duplicate in the dead-letter topic is harmless
    # (a redrive publishes each original once), while idempotence can need more ACLs.
    producer = Producer(settings.kafka_config() | {"acks": "all", "enable.idempotence": False})
    key, value, cut = dlq.bounded(message.key, message.value)
    headers: list[tuple[str, str | bytes | None]] = []
    headers += dlq.message_headers(letter, message) + cut

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    producer.produce(dlq.dlq_topic(kind_topic), key=key, value=value, headers=headers, on_delivery=delivered)
    shared: list[KafkaError] = []
    where = (message.topic, message.partition, message.offset)
    # The group's ledger (module docstring). Its loss costs at most a second dead letter and
    # restart on another worker, as before it existed: it never fails the confirmation.
    producer.produce(settings.poison_topic, key=_key(*where), value=json.dumps(list(where)).encode(),
                     on_delivery=lambda err, _msg: shared.append(err) if err is not None else None)
    left = producer.flush(CONFIRM_TIMEOUT_S)
    if shared:
        log.warning("the group's poison ledger (%s) did not take %s: %s", settings.poison_topic, where, shared[0])
    if left or failures:
        log.error("dead letter of %s@%s:%s not confirmed: %s", message.topic, message.partition, message.offset, failures or "timeout")
        return False
    return True


def _key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}:{partition}:{offset}".encode()


def read_shared(settings: Settings, timeout_s: float = 10.0) -> set[Coordinates]:
    """Every record the group's poison topic holds now (its one partition, to the end)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    topic = settings.poison_topic
    consumer = Consumer(settings.kafka_config() | {
        "group.id": f"persona-poison-{time.time_ns()}", "enable.auto.commit": False, "fetch.wait.max.ms": 10,
    })
    try:
        low, high = watermarks(consumer, TopicPartition(topic, 0), timeout_s)
        latest: dict[bytes, bool] = {}
        if high > low:
            consumer.assign([TopicPartition(topic, 0, low)])
            position, deadline = low, time.monotonic() + timeout_s
            while position < high:
                if time.monotonic() > deadline:
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{topic} not read to offset {high}"))
                for msg in consumer.consume(num_messages=max(1, min(500, high - position)), timeout=0.5):
                    if msg.error() is not None:
                        continue  # a partition EOF; anything worse ends as the deadline
                    position = max(position, (msg.offset() or 0) + 1)
                    latest[msg.key() or b""] = msg.value() is not None
                got = consumer.position([TopicPartition(topic, 0)])[0].offset
                position = max(position, got if got is not None else -1)  # compaction leaves holes
    finally:
        consumer.close()
    out: set[Coordinates] = set()
    for key, present in latest.items():
        t, partition, offset = key.decode("utf-8", "replace").rsplit(":", 2)
        if present:
            out.add((t, int(partition), int(offset)))
    return out


async def refresh(ledger: PoisonLedger, settings: Settings) -> None:
    """Merge the group's topic into ``ledger`` when a rebalance made it stale (the agents call
    this before their next record; one read serves every agent waiting). Unreadable, the worker
    goes on with what it knows: at worst a record raises here once more, as before the topic
    existed."""
    if ledger.reading is None or ledger.reading.done():
        ledger.reading = asyncio.ensure_future(_refresh(ledger, settings))
    await asyncio.shield(ledger.reading)


async def _refresh(ledger: PoisonLedger, settings: Settings) -> None:
    try:
        found = await asyncio.to_thread(read_shared, settings)
    except Exception as exc:
        log.warning("the group's poison ledger (%s) was not read (%s: %s): going on with this worker's", settings.poison_topic,
                    type(exc).__name__, exc)
        found = set()
    ledger.merge(found)
    ledger.stale = False


def forget_shared(settings: Settings, coordinates: set[Coordinates]) -> None:
    """Tombstones in the group's topic for records the group has committed past."""
    from confluent_kafka import Producer

    if not coordinates:
        return
    producer = Producer(settings.kafka_config() | {"acks": "all"})
    for where in sorted(coordinates):
        producer.produce(settings.poison_topic, key=_key(*where), value=None)
    producer.flush(CONFIRM_TIMEOUT_S)


def dead_letter_and_restart(settings: Settings, ledger: PoisonLedger, kind_topic: str, message: Any, exc: BaseException) -> None:
    """Steps 1-3 of the module docstring. Never returns."""
    letter = internal_letter(exc)
    log.error(
        "%s@%s:%s raised %s: %s; dead-lettering it and restarting without it",
        message.topic, message.partition, message.offset, letter.error, letter.message, exc_info=exc,
    )
    try:
        if confirm_dead_letter(settings, kind_topic, message, letter):
            ledger.add(message.topic, message.partition, message.offset)
    finally:
        exit_now(f"{message.topic}@{message.partition}:{message.offset}: restarting without it", RESTART_EXIT_CODE)
