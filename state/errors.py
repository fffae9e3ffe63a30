"""One error root for Persona, and what each error means for the running worker.

Every error a worker can meet is either *data* (the input was bad: it goes to the
dead-letter topic and the partition keeps moving) or a *crash decision* (the worker
cannot do its job correctly and must stop so a supervisor restarts it). The mapping
lives here, next to the classes, so that the decision is made once.
"""

from __future__ import annotations

from typing import Literal

#: Why a record went to ``<topic>.dlq``; also the ``reason`` label of
#: ``persona_dead_letter_total``. A closed set so dashboards stay small.
DeadLetterReason = Literal[
    "null_value",
    "oversized",
    "bad_utf8",
    "bad_json",
    "unknown_type",
    "schema",
    "key_mismatch",
    "incompatible_version",
    # An event time too far after its record's Kafka timestamp (state.events.decode).
    "future_time",
    # Not an input error: processing the record raised a bug (stream_app.poison). The record is
    # kept for a redrive once the bug is fixed.
    "internal",
]

DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = (
    "null_value",
    "oversized",
    "bad_utf8",
    "bad_json",
    "unknown_type",
    "schema",
    "key_mismatch",
    "incompatible_version",
    "future_time",
    "internal",
)


#: The exit code of a setting or credential to fix: retrying, or a supervisor restart, cannot help.
CONFIG_EXIT_CODE = 3


class PersonaError(Exception):
    """Root of every error Persona raises on purpose."""


class InputError(PersonaError):
    """A record cannot be used. Never crashes a worker: it becomes a dead letter.

    :func:`state.events.decode` builds one of the subclasses below and returns it as a
    :class:`state.events.DeadLetter` (``DeadLetter.from_error``): the dead letter's
    ``error`` is the class name, its ``reason`` and ``message`` the error's own.
    """

    reason: DeadLetterReason = "schema"

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DecodeError(InputError):
    """The bytes are not a JSON object at all (null, too large, bad UTF-8, bad JSON)."""


class ContractError(InputError):
    """Valid JSON that breaks the event contract (fields, types, event type, key)."""


class ConfigError(PersonaError):
    """Settings are inconsistent. Crash at start: running misconfigured is worse."""


class ModelError(PersonaError):
    """An encoder artifact is missing, corrupt or fails its golden check.

    At start this crashes the worker; during a hot-swap the old model is kept.
    """


class BrokerError(PersonaError):
    """Kafka cannot be reached or refuses us. Crash and let the supervisor retry."""


class StateError(PersonaError):
    """Stored state (a profile record in RocksDB or its changelog) cannot be read by this
    build: empty, or written by a newer schema. Crash: serving a user without their
    history would be silently wrong, and an older build must not overwrite newer state."""


class DatasetError(PersonaError):
    """A dataset cannot be read as asked (``stream_app.sources``): a missing file or
    folder, a malformed record (the message names the file and line), or a format that
    needs a path and got none. Raised by the replay tools, never inside a worker."""
