"""Topic layout: names, partition counts and configs, created idempotently."""

from __future__ import annotations

import logging

from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from state.errors import BrokerError, ConfigError
from state.events import EVENT_KINDS
from stream_app.dlq import dlq_topic
from stream_app.kafka_clients import preflight
from stream_app.settings import Settings

log = logging.getLogger(__name__)


def topic_specs(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic Persona names: ``name -> (partitions, configs)``."""
    specs: dict[str, tuple[int, dict[str, str]]] = {}
    for kind in EVENT_KINDS:
        name = settings.topic(kind)
        parts = settings.partitions_for(kind)
        # The catalog topic *is* the catalog: compacted, latest entry per item.
        conf = {"cleanup.policy": "compact"} if kind == "item" else {}
        specs[name] = (parts, conf)
        specs[dlq_topic(name)] = (parts, {})
    specs[settings.recommendations_topic] = (settings.partitions, {})
    specs[settings.encoded_reviews_topic] = (settings.partitions, {})
    # Like the catalog: the latest vector per item is all anyone needs.
    specs[settings.item_vectors_topic] = (settings.item_partitions, {"cleanup.policy": "compact"})
    # The history of the global scoring state: a worker replays it from the latest snapshot's
    # offsets (or in full). Kept until `persona shared snapshot --truncate` deletes what a snapshot covers.
    specs[settings.scoring_deltas_topic] = (settings.partitions, {"retention.ms": "-1"})
    # The latest snapshot of that state: manifests on partition 0, chunks on 1; latest per key.
    # Hourly segments: compaction only cleans rolled segments, and the old chunks' tombstones
    # should free their space within hours, not after the default 7 days.
    specs[settings.scoring_snapshots_topic] = (2, {"cleanup.policy": "compact", "segment.ms": "3600000"})
    # One partition, latest announcement per registry kind: a worker starting reads the few records.
    specs[settings.control_topic] = (1, {"cleanup.policy": "compact"})
    # The group's poison ledger: a few records, one per record that raised; read whole after each rebalance.
    specs[settings.poison_topic] = (1, {"cleanup.policy": "compact"})
    return specs


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; fail loudly if an existing one breaks co-partitioning."""
    admin = preflight(settings, timeout_s)  # a refused login or certificate fails here, clearly
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except Exception as exc:  # librdkafka raises KafkaException with no finer type
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    created: list[str] = []
    new: list[NewTopic] = []
    for name, (parts, conf) in topic_specs(settings).items():
        if name in existing:
            have = len(existing[name].partitions)
            if have != parts and not name.endswith(".dlq"):
                raise ConfigError(
                    f"topic {name} has {have} partitions, settings say {parts}: user-keyed "
                    "topics must be co-partitioned"
                )
            continue
        new.append(
            NewTopic(name, num_partitions=parts, replication_factor=settings.replication_factor, config=conf)
        )
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
            try:
                fut.result()
                created.append(name)
            except Exception as exc:
                if "TOPIC_AUTHORIZATION_FAILED" in str(exc):
                    who = settings.sasl_username or "this client"
                    raise BrokerError(
                        f"not authorized to create topic {name} as {who!r}: the principal needs the ACLs "
                        f"`persona acls` prints (topics prefixed {settings.topic_prefix!r} and {settings.app_id + '-'!r})"
                    ) from exc
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    if created:
        log.info("created topics: %s", ", ".join(sorted(created)))
    return created
