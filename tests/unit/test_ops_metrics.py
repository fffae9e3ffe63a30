"""Operational gauges and the operators' helpers, without a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from prometheus_client import generate_latest

from stream_app import dlq, metrics
from stream_app.cli_ops import parse_since
from stream_app.dlq_ops import Letter, UnknownTopic, resolve
from stream_app.ops_metrics import (
    ROCKSDB_MEMORY_PROPERTIES,
    LagGauge,
    directory_bytes,
    partition_lags,
    rocksdb_properties,
    unknown_partitions,
)
from stream_app.settings import Settings


class TP(NamedTuple):
    topic: str
    partition: int


def test_partition_lags_skip_partitions_without_a_high_watermark_or_a_commit() -> None:
    ends = {TP("a", 0): 120, TP("a", 1): 50, TP("b", 0): None}
    committed: dict[Any, int | None] = {TP("a", 0): 100, TP("a", 1): None, TP("b", 0): 3}

    def highwater(tp: TP) -> int | None:
        if tp.topic == "c":
            raise KeyError(tp)  # aiokafka before the first fetch
        return ends[tp]

    assignment = [*ends, TP("c", 0)]
    assert partition_lags(assignment, highwater, committed) == {("a", 0): 20}
    assert unknown_partitions(assignment, highwater, committed) == [("a", 1), ("b", 0), ("c", 0)]


def test_partitions_the_consumer_has_no_view_of_take_the_brokers() -> None:
    ends = {TP("a", 0): 120, TP("a", 1): 50, TP("b", 0): None, TP("c", 0): None}
    committed: dict[Any, int | None] = {TP("a", 0): 100, TP("a", 1): None, TP("b", 0): 3, TP("c", 0): None}
    broker = {
        ("a", 1): (None, 10, 55),  # the group never committed: everything kept (from the log start) counts
        ("b", 0): (2, 0, 9),  # the consumer's own commit (3) wins over the broker's (2); the end is the broker's
        ("c", 0): (40, 0, 44),  # neither known to the consumer
        ("a", 0): (90, 0, 130),  # known to the consumer: its own view stands
    }
    lags = partition_lags(list(ends), ends.__getitem__, committed, broker)
    assert lags == {("a", 0): 120 - 100, ("a", 1): 50 - 10, ("b", 0): 9 - 3, ("c", 0): 44 - 40}


def test_lag_gauge_asks_the_broker_only_for_what_the_consumer_does_not_know() -> None:
    asked: list[list[tuple[str, int]]] = []

    def positions(parts: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int | None, int, int]]:
        asked.append(parts)
        if len(asked) > 1:
            raise RuntimeError("broker down")
        return {("lagask", 1): (None, 0, 7)}

    class Consumer:
        _committed_offset = {TP("lagask", 0): 4, TP("lagask", 1): None}

        def assignment(self) -> list[TP]:
            return [TP("lagask", 0), TP("lagask", 1), TP("lagask-changelog", 0)]

        def highwater(self, tp: TP) -> int | None:
            return {0: 9, 1: None}[tp.partition]

    gauge = LagGauge(positions)
    asyncio.run(gauge.sample(Consumer(), exclude={"lagask-changelog"}))  # written by the worker, not consumed
    assert asked == [[("lagask", 1)]]
    assert {k: v for k, v in _lag_series().items() if k[0] == "lagask"} == {("lagask", "0"): 5, ("lagask", "1"): 7}
    asyncio.run(gauge.sample(Consumer(), exclude={"lagask-changelog"}))  # the broker down: no crash, what the consumer knows still shows
    assert len(asked) == 2
    assert {k: v for k, v in _lag_series().items() if k[0] == "lagask"} == {("lagask", "0"): 5}
    gauge.update({})


def test_partition_lag_is_never_negative() -> None:
    # A commit can be read a moment before the high watermark it passed.
    assert partition_lags([TP("a", 0)], lambda tp: 10, {TP("a", 0): 12}) == {("a", 0): 0}


def _lag_series() -> dict[tuple[str, str], float]:
    out = {}
    for family in metrics.CONSUMER_LAG.collect():
        for s in family.samples:
            out[(s.labels["topic"], s.labels["partition"])] = s.value
    return out


def test_lag_gauge_removes_series_of_revoked_partitions() -> None:
    gauge = LagGauge()
    gauge.update({("lagtest", 0): 5, ("lagtest", 1): 7})
    assert {k: v for k, v in _lag_series().items() if k[0] == "lagtest"} == {("lagtest", "0"): 5, ("lagtest", "1"): 7}
    gauge.update({("lagtest", 1): 2})  # partition 0 moved to another worker
    assert {k: v for k, v in _lag_series().items() if k[0] == "lagtest"} == {("lagtest", "1"): 2}
    gauge.update({})
    assert not [k for k in _lag_series() if k[0] == "lagtest"]


def test_directory_bytes_sums_every_file_below(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.sst").write_bytes(b"1" * 1000)
    (tmp_path / "y.log").write_bytes(b"2" * 24)
    assert directory_bytes(tmp_path) == 1024
    assert directory_bytes(tmp_path / "missing") == 0


def test_new_metrics_follow_the_naming_rules() -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for name in ("persona_rebalances_total", "persona_state_restore_records_total", "persona_state_restore_seconds_count",
                 "persona_encode_batch_texts_count", "persona_last_emit_timestamp_seconds", "persona_profiles"):
        assert name in exposed, name
    for family in metrics.REGISTRY.collect():
        assert family.name.startswith("persona_")
        labels = {k for s in family.samples for k in s.labels}
        assert not labels & {"user", "user_id", "item", "item_id"}, family.name


def test_resolve_takes_a_kind_an_input_topic_or_its_dlq() -> None:
    s = Settings(topic_prefix="p.")
    want = ("p.reviews", "p.reviews.dlq")
    assert resolve(s, "review") == resolve(s, "p.reviews") == resolve(s, "p.reviews.dlq") == want
    with pytest.raises(UnknownTopic, match="not an event kind"):
        resolve(s, "p.recommendations")


def test_letter_identity_is_the_original_record_across_redrives() -> None:
    base = {dlq.H_TOPIC: "p.review", dlq.H_PARTITION: "1", dlq.H_OFFSET: "42", dlq.H_REASON: "oversized"}
    first = Letter("p.review.dlq", 0, 0, 0, b"k", b"v", base)
    assert first.origin == first.source == "p.review:1:42"
    # The copy failed again at offset 900: its dead letter still names offset 42.
    again = Letter("p.review.dlq", 0, 1, 0, b"k", b"v", {**base, dlq.H_OFFSET: "900", dlq.H_REDRIVE_OF: "p.review:1:42"})
    assert again.source == "p.review:1:900" and again.origin == "p.review:1:42"


def test_dead_letter_headers_carry_the_redrive_identity() -> None:
    from state.events import DeadLetter

    letter = DeadLetter(reason="bad_json", error="DecodeError", message="eof")
    plain = dict(dlq.headers(letter, topic="t", partition=0, offset=5, timestamp_ms=1))
    assert dlq.H_REDRIVE_OF not in plain
    carried = dict(dlq.headers(letter, topic="t", partition=0, offset=5, timestamp_ms=1,
                               redriven_from=dlq.redrive_of([("x", b"1"), (dlq.H_REDRIVE_OF, b"t:0:2")])))
    assert carried[dlq.H_REDRIVE_OF] == b"t:0:2"
    assert dlq.redrive_of({dlq.H_REDRIVE_OF: "t:0:3"}) == b"t:0:3"
    assert dlq.redrive_of(None) is None


def test_parse_since_reads_durations_iso_times_and_epochs() -> None:
    now = 1_800_000_000.0
    assert parse_since("2h", now) == now - 7200
    assert parse_since("30m", now) == now - 1800
    assert parse_since("1d", now) == now - 86400
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20", now) == 1_700_000_000.0  # UTC unless it says
    assert parse_since("2023-11-14T23:13:20+01:00", now) == 1_700_000_000.0
    import typer

    with pytest.raises(typer.BadParameter):
        parse_since("last tuesday", now)


def test_regression_status_on_a_fresh_broker_retries_not_coordinator() -> None:
    """`persona status` right after a broker started died with a traceback: the group
    coordinator answers NOT_COORDINATOR until it has loaded the offsets topic."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    from state.errors import BrokerError
    from stream_app.status import _committed

    class Fresh:
        def __init__(self, failures: int, code: int) -> None:
            self.failures, self.code, self.calls = failures, code, 0

        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            self.calls += 1
            if self.calls <= self.failures:
                raise KafkaException(KafkaError(self.code))
            return [TopicPartition(tp.topic, tp.partition, 7) for tp in tps]

    fresh = Fresh(2, KafkaError.NOT_COORDINATOR)
    got = _committed(fresh, [TopicPartition("t", 0)], timeout_s=10)  # type: ignore[arg-type]
    assert [tp.offset for tp in got] == [7] and fresh.calls == 3
    with pytest.raises(BrokerError, match="committed offsets"):
        _committed(Fresh(1, KafkaError.TOPIC_AUTHORIZATION_FAILED), [TopicPartition("t", 0)])  # type: ignore[arg-type]


def _rocksdb(path: Path, *, write_buffer: int, block_cache: int) -> Any:
    """A partition DB opened the way Faust opens the profile table's (its options, rocksdict)."""
    from faust.stores.rocksdb import RocksDBOptions

    options = RocksDBOptions(
        write_buffer_size=write_buffer, max_write_buffer_number=2, block_cache_size=block_cache, use_rocksdict=True
    )
    return options.open(path)


def test_rocksdb_memory_follows_memtables_table_readers_and_the_block_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    cache = 1 << 20
    db = _rocksdb(tmp_path / "p0", write_buffer=8 << 20, block_cache=cache)
    idle = _rocksdb(tmp_path / "p1", write_buffer=8 << 20, block_cache=cache)
    values = [rng.bytes(1000) for _ in range(3000)]  # incompressible: 3 MB in memtables
    for i, value in enumerate(values):
        db[f"user-{i:05d}".encode()] = value
    written = rocksdb_properties([db, idle], ROCKSDB_MEMORY_PROPERTIES)
    assert written["memtables"] >= 3_000_000
    assert written["table_readers"] == 0  # nothing flushed yet

    db.flush()
    flushed = rocksdb_properties([db, idle], ROCKSDB_MEMORY_PROPERTIES)
    assert flushed["memtables"] < 1_000_000  # the data left the memtable for an SST file ...
    assert flushed["table_readers"] > 0  # ... whose index and filter blocks are now held

    for i, value in enumerate(values):
        assert db[f"user-{i:05d}".encode()] == value
    read = rocksdb_properties([db, idle], ROCKSDB_MEMORY_PROPERTIES)
    # Reading 3 MB of blocks fills the 1 MiB cache of the one partition that was read, no more.
    assert cache // 2 < read["block_cache"] <= cache * 1.1
    db.close()
    idle.close()


def test_rocksdb_properties_count_a_closed_partition_as_zero(tmp_path: Path) -> None:
    db = _rocksdb(tmp_path / "p0", write_buffer=1 << 20, block_cache=1 << 20)
    db[b"k"] = b"v" * 100
    db.close()
    assert rocksdb_properties([db], {"keys": "rocksdb.estimate-num-keys"}) == {"keys": 0}
