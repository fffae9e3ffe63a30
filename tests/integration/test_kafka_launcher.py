"""The local Kafka launcher, and our client stack against the Kafka version it runs.

Kafka 4 dropped old protocol versions (KIP-896); these round trips are the check
that confluent-kafka (librdkafka) and aiokafka (under faust) still get along with it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.protocol.metadata import MetadataRequest
from confluent_kafka import Consumer, KafkaError, Message, Producer

# The documented import path; confluent-kafka 2.16's stubs do not re-export it (no __all__).
from confluent_kafka.admin import (
    AdminClient,
    NewTopic,  # type: ignore[attr-defined]
)

from deploy import ports
from deploy.kafka import launcher
from deploy.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

N = 100


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.BrokerHandle]:
    handle = launcher.start(free_port(), tmp_path_factory.mktemp("kafka"), timeout_s=60)
    yield handle
    launcher.stop(handle)  # no-op once test_stop has run; a safety net otherwise


def _create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)]).values():
        future.result(timeout=15)


def test_confluent_kafka_round_trip(broker: launcher.BrokerHandle) -> None:
    topic = f"cf-{uuid.uuid4().hex[:8]}"
    _create_topic(broker.bootstrap, topic)

    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    for i in range(N):
        producer.produce(topic, key=f"k{i % 10}", value=f"v{i}", on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert errors == []

    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": f"g-{topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    values: list[str] = []
    try:
        while len(values) < N:
            msg = consumer.poll(10)
            assert msg is not None, f"timed out after {len(values)} records"
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            values.append(value.decode())
        committed = consumer.commit(asynchronous=False)
        assert committed is not None and committed[0].offset == N
    finally:
        consumer.close()
    assert values == [f"v{i}" for i in range(N)]


async def _faust_style_create_topic(bootstrap: str, topic: str) -> None:
    """The raw Metadata + CreateTopics requests faust's aiokafka driver sends."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        node_id = next(iter(client.cluster.brokers())).nodeId
        metadata = await client.send(node_id, MetadataRequest([]))
        request = CreateTopicsRequest(
            [(topic, 1, 1, [], [("cleanup.policy", "compact")])], 30000, False
        )
        response = await client.send(metadata.controller_id, request)
        assert [(name, code) for name, code, *_ in response.topic_errors] == [(topic, 0)]
    finally:
        await client.close()


async def _aiokafka_round_trip(bootstrap: str) -> None:
    topic = f"aio-{uuid.uuid4().hex[:8]}"
    await _faust_style_create_topic(bootstrap, topic)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(N):
            await producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    # Group member, as faust's agents are: JoinGroup/SyncGroup/OffsetCommit.
    group = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await group.start()
    try:
        values: list[str] = []
        while len(values) < N:
            batch = await asyncio.wait_for(group.getmany(timeout_ms=1000), 15)
            values += [rec.value.decode() for recs in batch.values() for rec in recs if rec.value]
        await group.commit()
        assert await group.committed(TopicPartition(topic, 0)) == N
    finally:
        await group.stop()
    assert values == [f"v{i}" for i in range(N)]

    # Group-less assign/seek/end_offsets, as stream_app.catalog_replica reads the catalog.
    replica = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await replica.start()
    try:
        tp = TopicPartition(topic, 0)
        replica.assign([tp])
        await replica.seek_to_beginning(tp)
        assert (await replica.end_offsets([tp]))[tp] == N
        first = await asyncio.wait_for(replica.getone(), 15)
        assert (first.offset, first.key) == (0, b"k0")
    finally:
        await replica.stop()


def test_aiokafka_round_trip(broker: launcher.BrokerHandle) -> None:
    asyncio.run(_aiokafka_round_trip(broker.bootstrap))


def test_status_and_idempotent_start(broker: launcher.BrokerHandle) -> None:
    assert launcher.status(broker.data_dir) == broker
    # The recorded broker wins over a new launch, whatever port is asked for.
    assert launcher.start(free_port(), broker.data_dir) == broker


def test_no_listener_of_the_broker_lies_in_the_ephemeral_range(broker: launcher.BrokerHandle) -> None:
    """Regression: CI lost a broker whose controller port (port + 1, free when probed) was taken
    by an outgoing connection while the JVM started. Neither listener may come from the range the
    kernel draws outgoing connections' ports from."""
    props = dict(
        line.split("=", 1) for line in (broker.data_dir / "server.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    listeners = [entry.rpartition(":")[2] for entry in props["listeners"].split(",")]
    low, high = (int(part) for part in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert len(listeners) == 2
    for port in map(int, listeners):
        assert not low <= port <= high, (port, low, high)
    assert ports.ephemeral_range() == (low, high)


def test_stop(broker: launcher.BrokerHandle) -> None:
    assert launcher.stop(broker) is True
    with pytest.raises(ProcessLookupError):
        os.kill(broker.pid, 0)
    host, _, port = broker.bootstrap.rpartition(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()
    assert not (broker.data_dir / "broker.pid").exists()
    assert launcher.status(broker.data_dir) is None
    assert launcher.stop(broker.data_dir) is False
