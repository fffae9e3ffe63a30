"""Local single-node Apache Kafka (KRaft) for development and integration tests."""

from deploy.kafka.launcher import (
    KAFKA_VERSION,
    BrokerHandle,
    cache_dir,
    ensure_jars,
    start,
    status,
    stop,
)

__all__ = [
    "KAFKA_VERSION",
    "BrokerHandle",
    "cache_dir",
    "ensure_jars",
    "start",
    "status",
    "stop",
]
