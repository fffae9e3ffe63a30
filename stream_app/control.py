"""Model announcements on the control topic: new versions reach workers at once.

The registries are the source of truth (a worker serves what ``CURRENT`` and ``CANDIDATE``
name, and polls them every ``PERSONA_MODEL_POLL_S``). Whoever changes a registry, ``persona
train`` publishing, ``persona model promote``, ``rollback`` or ``shadow``, also announces it on
``<prefix>control`` (compacted, keyed by registry kind). Every worker tails that topic
(:class:`stream_app.control_replica.ControlTail`) and looks at the registries as soon as an announcement arrives, instead
of at its next poll. An announcement that cannot be sent is logged, never an error: the poll
still finds the change.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from stream_app.settings import Settings

log = logging.getLogger(__name__)


class Announcement(msgspec.Struct, frozen=True):
    kind: str  #: "ranker" or "encoder"
    action: str  #: "publish", "rollback", "shadow", "share", "stop"
    version: str = ""


def announce(settings: Settings, kind: str, action: str, version: str = "", timeout_s: float = 5.0) -> bool:
    """Send one announcement; False (logged) when the broker could not be reached."""
    try:
        from confluent_kafka import Producer

        from stream_app.topics import ensure_topics

        ensure_topics(settings, timeout_s=timeout_s)
        producer = Producer({**settings.kafka_config(), "message.timeout.ms": int(timeout_s * 1000)})
        errors: list[Any] = []
        producer.produce(
            settings.control_topic,
            key=kind.encode(),
            value=msgspec.json.encode(Announcement(kind=kind, action=action, version=version)),
            on_delivery=lambda err, _msg: errors.append(err) if err is not None else None,
        )
        left = producer.flush(timeout_s)
        if left or errors:
            raise RuntimeError(errors[0] if errors else "not delivered in time")
    except Exception as exc:  # any client or broker failure: the registry poll still works
        log.warning("could not announce %s %s %s on %s (workers will find it at their next poll): %s",
                    kind, action, version, settings.control_topic, exc)
        return False
    return True
