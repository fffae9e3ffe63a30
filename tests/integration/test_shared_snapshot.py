"""Shared-state snapshots through the real broker: the job, the truncation and a replica's restore.

The expectation is a state built in process from every delta, in the order the (single-partition)
deltas topic holds them: the snapshot job's state and a worker replica's restored state must
snapshot to the same bytes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from scoring.shared import ERASE, Delta, SharedState, SnapshotError, decode_record, encode_batch, encode_delta
from state.catalog import Catalog
from state.errors import BrokerError
from state.events import Purchase
from stream_app import shared_replica, snapshot_job, snapshot_lag, snapshots
from stream_app.inspect import all_profiles
from stream_app.pipeline import Pipeline
from stream_app.producer import publish
from stream_app.settings import Settings
from tests.support import WorkerProcess, metric_sum, wait_drained
from tests.unit.test_delta_batcher import count_decodes
from tests.unit.test_pipeline import DictStore, FakeVectors
from tests.unit.test_shared_snapshot import _deltas

pytestmark = pytest.mark.integration


def _publish(settings: Settings, deltas: Iterable[Delta], batch: int = 7) -> None:
    """As workers do (``DeltaBatcher``): records of up to ``batch`` deltas, keyed by source."""
    producer = Producer(settings.kafka_config() | {"acks": "all"})
    pending: list[Delta] = []

    def send() -> None:
        if pending:
            producer.produce(settings.scoring_deltas_topic, key=pending[0].source.encode(),
                             value=encode_batch([encode_delta(d) for d in pending]))
            pending.clear()

    for d in deltas:
        if pending and (d.source != pending[0].source or len(pending) >= batch):
            send()
        pending.append(d)
    send()
    assert producer.flush(30) == 0


def _state(settings: Settings, deltas: Iterable[Delta]) -> SharedState:
    state = snapshots.new_state(settings)
    for d in deltas:
        state.apply(d)
    return state


class Restart(Exception):
    pass


class PurgingStore(DictStore):
    """Records the keys an erasure asked to purge from partitions held before."""

    def __init__(self) -> None:
        super().__init__()
        self.purged: list[bytes] = []

    def purge(self, key: bytes) -> int:
        self.purged.append(key)
        return 0


def _replica(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> shared_replica.SharedReplica:
    def restart_now(reason: str) -> None:
        raise Restart(reason)

    monkeypatch.setattr(shared_replica, "restart_now", restart_now)
    pipe = Pipeline.from_settings(settings, store=PurgingStore(), catalog=Catalog(), vectors=FakeVectors(), emit=lambda k, v: None)
    return shared_replica.SharedReplica(settings, settings.scoring_deltas_topic, settings.partitions, pipe)


async def _until_ready(replica: shared_replica.SharedReplica, timeout_s: float = 30.0) -> None:
    task = asyncio.create_task(replica.run())
    try:
        ready = asyncio.create_task(replica.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what stopped the replica
        assert ready in done, "the replica did not catch up"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_snapshots_bound_what_a_replica_reads_and_truncation_deletes_only_covered_deltas(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One partition: the topic's order is the produce order, so the expected state is exact.
    settings = topic_factory(partitions=1, cooc_neighbours=3, social_quiet_bytes=4_000)
    monkeypatch.setattr(snapshot_job, "CHUNK_BYTES", 4096)  # several chunks per snapshot
    deltas = _deltas(900, seed=21)
    first, second, third = deltas[:400], deltas[400:700], deltas[700:]

    assert snapshot_job.take(settings).manifest is None  # nothing to snapshot yet
    _publish(settings, first)
    one = snapshot_job.take(settings, truncate=True)
    assert one.written and one.base is None and one.read == 400 and one.truncated == {}
    assert one.manifest is not None and one.manifest.chunks > 3 and one.manifest.deltas == 400
    latest = snapshots.read_latest(settings)
    assert latest is not None and latest.data == _state(settings, first).snapshot()

    again = snapshot_job.take(settings)  # no new deltas: no new snapshot
    assert not again.written and again.manifest == one.manifest

    _publish(settings, second)
    two = snapshot_job.take(settings, truncate=True)
    assert two.written and two.base == one.manifest and two.read == 300  # only the deltas after the first
    assert two.manifest is not None and two.manifest.deltas == 700
    # A reader seeks past the first snapshot's chunks: they (and the first transaction's commit
    # marker, which takes an offset on every partition it wrote) precede the second's.
    assert two.manifest.chunk_offset == one.manifest.chunks + 1
    # What the first snapshot covered is deleted; nothing the second one needs.
    assert two.truncated == {p: off for p, off in one.manifest.positions.items() if off > 0}
    assert {p: low for p, (low, _) in snapshots.deltas_bounds(settings).items()} == one.manifest.positions
    latest = snapshots.read_latest(settings)
    assert latest is not None and latest.manifest == two.manifest
    assert latest.data == _state(settings, first + second).snapshot()

    # A starting worker restores the second snapshot and reads the third part only.
    _publish(settings, third)
    replica = _replica(settings, monkeypatch)
    asyncio.run(_until_ready(replica))
    assert replica.pipeline.shared.snapshot() == _state(settings, deltas).snapshot()
    assert replica.pipeline.shared.applied == 900
    # Every erasure reached this worker's stale copies, as a replay of its delta would have.
    erased = {d.user.encode() for d in deltas if d.kind == ERASE}
    assert erased and erased <= set(replica.pipeline.store.purged)  # type: ignore[attr-defined]

    # Without the snapshot the deleted history cannot be rebuilt: the worker refuses to start.
    cold = _replica(settings.model_copy(update={"shared_snapshot": False}), monkeypatch)
    with pytest.raises(Restart, match="cannot be built.*deleted"):
        asyncio.run(_until_ready(cold))
    with pytest.raises(SnapshotError, match="deleted"):
        snapshots.fold(settings, snapshots.new_state(settings), {})


def test_a_replica_passes_the_records_of_deltas_it_made_by_undecoded(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the broker: records written as a worker writes them (``DeltaBatcher``, with
    their mark header) are decoded only where some delta in them was not applied here."""
    settings = topic_factory(partitions=1)
    deltas = _deltas(300, seed=8)
    made_here = deltas[:180]  # what this worker applied as it made them; the rest is another's
    producer = Producer(settings.kafka_config() | {"acks": "all"})
    sent: list[list[Delta]] = []

    def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        producer.produce(settings.scoring_deltas_topic, key=key, value=value, headers=headers)
        sent.append(decode_record(value))

    batcher = shared_replica.DeltaBatcher(send, max_deltas=8)
    for d in deltas:
        batcher.add(d)
    batcher.flush()
    assert producer.flush(30) == 0
    replica = _replica(settings, monkeypatch)
    for d in made_here:
        assert replica.pipeline.shared.apply(d)
    decoded = count_decodes(monkeypatch)
    asyncio.run(_until_ready(replica))
    mine = {(d.source, d.offset, d.index) for d in made_here}
    expected = [len(r) for r in sent if not all((d.source, d.offset, d.index) in mine for d in r)]
    # sources interleave, so some records straddle the two workers' deltas and are decoded
    assert 0 < len(expected) < len(sent) and decoded == expected
    # The state of a reader that applied the deltas made here, then decoded every record in
    # the topic's order (each delta made here came back once, counted as skipped either way).
    state = replica.pipeline.shared
    assert (state.applied, state.skipped) == (len(deltas), len(made_here))
    assert state.snapshot() == _state(settings, [*made_here, *(d for r in sent for d in r)]).snapshot()


def test_regression_a_snapshot_was_not_readable_right_after_its_run(
    topic_factory: Callable[..., Settings],
) -> None:
    # The broker answers a commit before it writes the commit markers: a read right after a run
    # once found no manifest (the last stable offset was still before the transaction).
    settings = topic_factory(partitions=1)
    deltas = _deltas(300, seed=13)
    for part in (deltas[:100], deltas[100:200], deltas[200:]):
        _publish(settings, part)
        report = snapshot_job.take(settings)
        latest = snapshots.read_latest(settings)
        assert report.written and latest is not None and latest.manifest == report.manifest

    # The wait reads the last stable offset, not the high watermark: another producer's open
    # transaction on the manifests partition holds it back until that transaction ends.
    other = Producer(settings.kafka_config() | {"transactional.id": f"{settings.snapshot_transactional_id}-other"})
    other.init_transactions(30)
    other.begin_transaction()
    at: list[int] = []
    other.produce(settings.scoring_snapshots_topic, key=b"other", value=b"x", partition=snapshots.MANIFESTS,
                  on_delivery=lambda err, msg: at.append(msg.offset()))
    assert other.flush(30) == 0 and at
    with pytest.raises(BrokerError, match="did not see it within 1 s"):
        snapshot_job.await_visible(settings, {snapshots.MANIFESTS: at[0]}, what="the other record", timeout_s=1.0)
    other.commit_transaction(30)
    snapshot_job.await_visible(settings, {snapshots.MANIFESTS: at[0]}, what="the other record", timeout_s=30.0)
    assert snapshots.read_latest(settings) == latest  # the foreign record is not a manifest


def test_a_replica_reading_deltas_that_were_deleted_under_it_restarts(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = topic_factory(partitions=1)
    deltas = _deltas(200, seed=5)
    _publish(settings, deltas[:100])
    snapshot_job.take(settings)
    _publish(settings, deltas[100:])
    snapshot_job.take(settings, truncate=True)
    low = snapshots.deltas_bounds(settings)[0][0]
    assert low > 0
    replica = _replica(settings, monkeypatch)

    async def behind() -> dict[int, int]:  # as if it had restored an older snapshot
        return {0: low - 1}

    monkeypatch.setattr(replica, "start_offsets", behind)
    with pytest.raises(Restart, match="had not read yet were deleted"):
        asyncio.run(_until_ready(replica))


def test_a_snapshot_of_other_scoring_settings_is_rebuilt_by_the_job_and_ignored_by_a_worker(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = topic_factory(partitions=1, cooc_neighbours=3)
    deltas = _deltas(150, seed=8)
    _publish(settings, deltas)
    snapshot_job.take(settings)
    other = settings.model_copy(update={"cooc_neighbours": 7})
    # A worker with the other settings sees it in its periodic check, before any restart.
    assert snapshot_lag.coverage(settings).differs == []
    assert snapshot_lag.coverage(other).differs == ["cooc_neighbours 3 (here 7)"]
    from stream_app import metrics
    from stream_app.ops_metrics import sample_snapshot_coverage

    sample_snapshot_coverage(other)
    assert metrics.SNAPSHOT_FITS._value.get() == 0.0
    sample_snapshot_coverage(settings)
    assert metrics.SNAPSHOT_FITS._value.get() == 1.0
    replica = _replica(other, monkeypatch)
    asyncio.run(_until_ready(replica))  # the whole topic, under its own settings
    assert replica.pipeline.shared.snapshot() == _state(other, deltas).snapshot()
    rebuilt = snapshot_job.take(other)
    assert rebuilt.written and rebuilt.base is None and rebuilt.read == 150
    latest = snapshots.read_latest(other)
    assert latest is not None and latest.data == _state(other, deltas).snapshot()


@pytest.mark.slow
def test_a_restarted_worker_restores_the_snapshot_and_reads_only_the_deltas_after_it(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess]
) -> None:
    settings = topic_factory()  # four partitions
    topic = settings.topic("purchase")

    def purchases(start: int, n: int) -> list[Purchase]:
        return [
            Purchase(event_id=f"snap-{i}", ts=1_700_000_000.0 + 60 * i, user_id=f"u{i % 30}", item_id=f"i{(i * 7) % 41}")
            for i in range(start, start + n)
        ]

    publish(settings, purchases(0, 400))
    first = worker_factory(settings)
    wait_drained(settings, [topic], [first], timeout=180)
    assert first.stop() == 0
    one = snapshot_job.take(settings, truncate=True)
    assert one.written and one.manifest is not None and one.manifest.deltas == 400

    publish(settings, purchases(400, 100))
    second = worker_factory(settings, shared_snapshot_check_s=0.5)
    wait_drained(settings, [topic], [second], timeout=180)
    samples = second.metrics()
    # Its check of the snapshot's lag sees its own new delta records, and only those.
    deadline, behind = time.monotonic() + 30, -1.0
    while time.monotonic() < deadline:
        bounds = snapshots.deltas_bounds(settings)
        expected = sum(high - one.manifest.positions.get(p, 0) for p, (_, high) in bounds.items())
        behind = metric_sum(second.metrics(), "persona_shared_snapshot_behind_records")
        if behind == expected:
            break
        time.sleep(0.5)
    assert 0 < behind == expected
    lag_samples = second.metrics()
    assert 0 < metric_sum(lag_samples, "persona_shared_snapshot_behind_since_timestamp_seconds") <= time.time()
    assert metric_sum(lag_samples, "persona_shared_snapshot_timestamp_seconds") > 0
    assert second.stop() == 0
    log = second.log_path.read_text(errors="replace")
    assert f"restored from snapshot {one.manifest.id} (400 deltas" in log
    assert metric_sum(samples, "persona_shared_snapshot_deltas") == 400
    # Its own 100 new deltas came back from the topic; none of the 400 the snapshot covers was read.
    assert metric_sum(samples, "persona_shared_deltas_total") == 100
    assert metric_sum(samples, "persona_shared_items") == len({p.item_id for p in purchases(0, 500)})
    counts = {u: p.counts.get("purchase", 0) for u, p in all_profiles(settings).items()}
    assert counts == {f"u{k}": 500 // 30 + (1 if k < 500 % 30 else 0) for k in range(30)}

    two = snapshot_job.take(settings, truncate=True)
    assert two.base == one.manifest and two.read == 100 and two.manifest is not None and two.manifest.deltas == 500
    assert two.truncated == {p: off for p, off in one.manifest.positions.items() if off > 0}


def test_bench_restore_catches_up_to_the_same_state_both_ways(kafka_broker: str, data_dir: Path, tmp_path: Path) -> None:
    from bench.ranking import load_events
    from bench.restore import measure

    report = measure(load_events(data_dir, 6000), kafka_broker, 0.5, tmp_path)
    assert report["snapshot_at"] == report["deltas"] // 2 > 1000
    assert report["same_summary"] and report["summary"]["deltas_applied"] == report["deltas"]
    assert report["full_replay_s"] > 0 and report["snapshot_restore_s"] > 0 and report["snapshot_bytes"] > 0


def test_the_cli_snapshots_periodically_and_shows_what_a_starting_worker_reads(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from deploy.workers import settings_env
    from stream_app.cli import app

    settings = topic_factory(partitions=1)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    deltas = _deltas(120, seed=3)
    _publish(settings, deltas[:100])
    runner = CliRunner()
    result = runner.invoke(app, ["shared", "snapshot", "--json", "--every", "1s", "--runs", "2"])
    assert result.exit_code == 0, result.output
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["written"] for r in runs] == [True, False] and runs[0]["deltas"] == 100 and runs[0]["id"] == runs[1]["id"]
    _publish(settings, deltas[100:])
    reads: list[str] = []

    def counted(consumer: Any, topic: str, deadline: float) -> Any:
        reads.append(topic)
        return real(consumer, topic, deadline)

    real = snapshots.manifests
    with monkeypatch.context() as m:
        m.setattr(snapshots, "manifests", counted)
        m.setattr(snapshot_lag, "manifests", counted)
        shown = runner.invoke(app, ["shared", "show"])
    assert shown.exit_code == 0, shown.output
    assert reads == [settings.scoring_snapshots_topic]  # the manifests once (it read them twice before)
    text = " ".join(shown.output.split())
    # _deltas alternates three sources, so _publish wrote one record per delta.
    assert f"snapshot {runs[0]['id']}: 100 deltas" in text and "120 delta records kept, 20 after the snapshot" in text
    # Just written, and the 20 records just published: seconds ago, not minutes.
    assert re.search(r"bytes, written \d+ s ago;", text) and re.search(r"the oldest of them was written \d+ s ago$", text), text
    status = runner.invoke(app, ["status"])
    text = " ".join(status.output.split())
    assert status.exit_code == 0 and re.search(
        rf"shared-state snapshot: {runs[0]['id']} \(100 deltas\), written \d+ s ago; 20 delta records after it, "
        r"the oldest written \d+ s ago", text), status.output
    monkeypatch.setenv("PERSONA_COOC_NEIGHBOURS", str(settings.cooc_neighbours + 1))
    shown = runner.invoke(app, ["shared", "show"])
    text = " ".join(shown.output.split())
    want = f"taken with other scoring settings than these: cooc_neighbours {settings.cooc_neighbours} (here {settings.cooc_neighbours + 1})"
    assert shown.exit_code == 0 and want in text, shown.output


def test_a_corrupt_snapshot_is_refused_and_a_worker_rebuilds_from_the_deltas(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from msgspec.structs import replace

    settings = topic_factory(partitions=1)
    deltas = _deltas(150, seed=12)
    _publish(settings, deltas)
    taken = snapshot_job.take(settings)
    assert taken.manifest is not None
    bad = replace(taken.manifest, sha256="0" * 64)
    producer = Producer(settings.kafka_config())
    producer.produce(settings.scoring_snapshots_topic, key=snapshots.MANIFEST_KEY, value=msgspec.msgpack.encode(bad),
                     partition=snapshots.MANIFESTS)
    assert producer.flush(30) == 0
    with pytest.raises(SnapshotError, match="does not match its SHA-256"):
        snapshots.read_latest(settings)
    replica = _replica(settings, monkeypatch)
    asyncio.run(_until_ready(replica))  # the deltas are all still there: it reads them instead
    assert replica.pipeline.shared.snapshot() == _state(settings, deltas).snapshot()


def _last_values(settings: Settings, partition: int, isolation: str = "read_committed") -> dict[bytes, bytes | None]:
    """Every key of one snapshots partition with its last value (None: a tombstone), as a
    reader of that isolation level sees them."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = settings.scoring_snapshots_topic
    consumer = Consumer(settings.kafka_config() | {
        "group.id": "persona-test-chunks", "enable.auto.commit": False, "isolation.level": isolation,
    })
    last: dict[bytes, bytes | None] = {}
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        deadline = time.monotonic() + 30
        while (consumer.position([TopicPartition(topic, partition)])[0].offset or 0) < high:
            assert time.monotonic() < deadline, f"{topic}:{partition} not read to {high}"
            for msg in consumer.consume(num_messages=100, timeout=0.5):
                if msg.error() is None:
                    last[msg.key() or b""] = msg.value()
    finally:
        consumer.close()
    return last


def test_a_run_that_fails_half_way_leaves_nothing_a_reader_sees(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = topic_factory(partitions=1)
    monkeypatch.setattr(snapshot_job, "CHUNK_BYTES", 2048)
    deltas = _deltas(300, seed=14)
    _publish(settings, deltas[:200])

    class Broken:
        def encode(self, obj: object) -> bytes:
            raise RuntimeError("the broker went away before the manifest")

    with monkeypatch.context() as m:
        m.setattr(snapshot_job, "_manifest_encoder", Broken())
        with pytest.raises(RuntimeError, match="before the manifest"):
            snapshot_job.take(settings)
    # Its pending record and chunks were written, in a transaction that was then aborted:
    # only a read_uncommitted reader sees them.
    written = _last_values(settings, snapshots.CHUNKS, "read_uncommitted")
    assert len(written) > 2 and all(k.startswith(b"chunk:") for k in written)
    assert _last_values(settings, snapshots.CHUNKS) == {} and _last_values(settings, snapshots.MANIFESTS) == {}
    assert snapshots.orphan(settings) is None and snapshots.read_latest(settings) is None

    _publish(settings, deltas[200:])
    done = snapshot_job.take(settings)
    assert done.written and done.manifest is not None and done.base is None
    latest = snapshots.read_latest(settings)
    assert latest is not None and latest.data == _state(settings, deltas).snapshot()


def test_the_chunks_a_failed_run_of_an_earlier_version_left_are_deleted_by_the_next_run(
    topic_factory: Callable[..., Settings],
) -> None:
    """Before transactions a run that failed after its pending record left its chunks visible;
    the next run deletes them (their last record becomes a tombstone)."""
    settings = topic_factory(partitions=1)
    deltas = _deltas(200, seed=15)
    _publish(settings, deltas)
    old = snapshots.Pending(id="0123456789abcdef", chunks=3)
    producer = Producer(settings.kafka_config() | {"acks": "all"})
    topic = settings.scoring_snapshots_topic
    producer.produce(topic, key=snapshots.PENDING_KEY, value=msgspec.msgpack.encode(old), partition=snapshots.MANIFESTS)
    for i in range(old.chunks):
        producer.produce(topic, key=f"chunk:{old.id}:{i:06d}".encode(), value=b"x" * 100, partition=snapshots.CHUNKS)
    assert producer.flush(30) == 0
    assert snapshots.orphan(settings) == old

    done = snapshot_job.take(settings)
    assert done.written and done.manifest is not None
    assert snapshots.orphan(settings) is None
    last = _last_values(settings, snapshots.CHUNKS)
    failed_keys = [k for k in last if k.startswith(f"chunk:{old.id}:".encode())]
    assert len(failed_keys) == old.chunks and all(last[k] is None for k in failed_keys)
    kept = [k for k in last if k.startswith(f"chunk:{done.manifest.id}:".encode())]
    assert len(kept) == done.manifest.chunks and all(last[k] for k in kept)
    latest = snapshots.read_latest(settings)
    assert latest is not None and latest.data == _state(settings, deltas).snapshot()


def test_regression_two_overlapping_snapshot_runs_never_leave_a_manifest_without_its_chunks(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run by hand while the cron job ran: each deleted the chunks the other's pending record
    named, and the run that wrote its manifest last could name chunks already tombstoned. A
    reader still found them until compaction removed them; from then on no worker could restore
    the latest snapshot, and after a truncation none could start."""
    from state.errors import BrokerError

    settings = topic_factory(partitions=1)
    monkeypatch.setattr(snapshot_job, "CHUNK_BYTES", 2048)
    deltas = _deltas(350, seed=16)
    _publish(settings, deltas[:200])
    base = snapshot_job.take(settings)
    assert base.written and base.manifest is not None
    _publish(settings, deltas[200:300])

    real = snapshot_job._manifest_encoder
    other: list[snapshot_job.Report] = []

    class Interleaved:
        """Run A's manifest encoder: before A writes its manifest, run B starts and finishes."""

        def encode(self, obj: object) -> bytes:
            if not other:
                _publish(settings, deltas[300:])  # B covers more than A: another state, another id
                monkeypatch.setattr(snapshot_job, "_manifest_encoder", real)
                other.append(snapshot_job.take(settings))
            return real.encode(obj)

    monkeypatch.setattr(snapshot_job, "_manifest_encoder", Interleaved())
    with pytest.raises(BrokerError, match="fenced this one"):
        snapshot_job.take(settings)  # A
    b = other[0]
    assert b.written and b.base == base.manifest and b.manifest is not None and b.manifest.deltas == 350
    latest = snapshots.read_latest(settings)
    assert latest is not None and latest.manifest == b.manifest
    # Before the fence the latest was A's manifest, each of its chunks followed by a tombstone.
    last = _last_values(settings, snapshots.CHUNKS)
    assert all(last[f"chunk:{b.manifest.id}:{i:06d}".encode()] for i in range(b.manifest.chunks))
    assert latest.data == _state(settings, deltas).snapshot()
    assert snapshots.orphan(settings) is None
    # The next run builds on B's snapshot and finds nothing new.
    again = snapshot_job.take(settings)
    assert not again.written and again.manifest == b.manifest


def test_coverage_reports_the_records_after_the_latest_snapshot_and_when_the_oldest_was_written(
    topic_factory: Callable[..., Settings],
) -> None:
    from stream_app import metrics
    from stream_app.ops_metrics import sample_snapshot_coverage

    settings = topic_factory(partitions=2)
    deltas = _deltas(55, seed=11)
    now_ms = int(time.time() * 1000)
    producer = Producer(settings.kafka_config() | {"acks": "all"})

    def produce(batch: list[Delta], partition: int, first_ms: int) -> list[int]:
        stamps = [first_ms + 1000 * i for i in range(len(batch))]
        for d, ms in zip(batch, stamps, strict=True):
            producer.produce(settings.scoring_deltas_topic, key=d.source.encode(), value=encode_delta(d),
                             partition=partition, timestamp=ms)
        assert producer.flush(30) == 0
        return stamps

    # Partition 1's records are written first but carry later times: the oldest is partition 0's first.
    produce(deltas[30:50], 1, now_ms - 3_600_000)
    oldest = produce(deltas[:30], 0, now_ms - 7_200_000)[0]
    found = snapshot_lag.coverage(settings)
    assert (found.manifest, found.written_at, found.behind) == (None, None, 50)
    assert found.oldest_behind_at == oldest / 1000.0

    before = time.time()
    report = snapshot_job.take(settings)
    after = time.time()
    found = snapshot_lag.coverage(settings)
    assert report.written and found.manifest == report.manifest
    assert found.written_at is not None and before - 1 <= found.written_at <= after + 1
    assert (found.behind, found.oldest_behind_at) == (0, None)

    late = produce(deltas[50:], 1, now_ms - 60_000)
    found = snapshot_lag.coverage(settings)
    assert (found.behind, found.oldest_behind_at) == (5, late[0] / 1000.0)
    sample_snapshot_coverage(settings)
    assert metrics.SNAPSHOT_BEHIND._value.get() == 5
    assert metrics.SNAPSHOT_BEHIND_SINCE._value.get() == late[0] / 1000.0
    assert metrics.SNAPSHOT_WRITTEN._value.get() == found.written_at


def test_regression_a_replica_catching_up_on_a_large_batch_lets_the_event_loop_run(
    topic_factory: Callable[..., Settings],
) -> None:
    """A replica applied each fetched batch (up to 5,000 records) without yielding: the
    deltas topic's catch-up held the loop for 0.3 s at a time (``persona bench restore``),
    and everything else on it (agents, other replicas, heartbeats) waited."""
    from stream_app.catalog_replica import TopicTail

    settings = topic_factory(partitions=1)
    producer = Producer(settings.kafka_config() | {"acks": "all", "linger.ms": 50})
    for i in range(200):
        producer.produce(settings.scoring_deltas_topic, key=b"k", value=b"%d" % i)
    assert producer.flush(30) == 0
    ticks = [0]
    seen: list[int] = []

    class SlowTail(TopicTail):
        def apply(self, partition: int, key: bytes | None, value: bytes | None, timestamp: float | None = None) -> None:
            time.sleep(0.002)  # a costly record: 200 of them are 0.4 s
            seen.append(ticks[0])

    async def main() -> None:
        tail = SlowTail(settings, settings.scoring_deltas_topic, 1)

        async def ticker() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        task = asyncio.create_task(tail.run())
        try:
            await asyncio.wait_for(tail.ready.wait(), 60)
        finally:
            task.cancel()
            tick.cancel()
            await asyncio.gather(task, tick, return_exceptions=True)

    asyncio.run(main())
    assert len(seen) == 200
    # The ticker ran between records many times (every ~10 ms of applying), not only between batches.
    assert len(set(seen)) >= 10, f"the loop ran only {len(set(seen))} times while 200 records were applied"


def test_regression_coverage_reads_a_few_record_batches_not_the_whole_deltas_partition(
    topic_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker checks the snapshot's lag every few minutes; reading the first record after
    the snapshot pulled the whole partition (30 MB of 30 MB here): librdkafka fetched ahead."""
    import json

    settings = topic_factory(partitions=1)
    producer = Producer(settings.kafka_config() | {"linger.ms": 5})
    for _ in range(120):
        producer.produce(settings.scoring_deltas_topic, key=b"k", value=bytes(250_000), partition=0)
    assert producer.flush(30) == 0
    received: list[int] = []

    from confluent_kafka import Consumer

    class Counted(Consumer):
        def __init__(self, conf: dict[str, object]) -> None:
            def stats(raw: str) -> None:
                received.append(sum(b.get("rxbytes", 0) for b in json.loads(raw)["brokers"].values()))

            super().__init__(conf | {"statistics.interval.ms": 50, "stats_cb": stats})

        def close(self) -> None:
            time.sleep(0.3)  # let the fetcher finish what it had asked for, and a last report come
            self.poll(0.1)
            super().close()

    monkeypatch.setattr(snapshots, "Consumer", Counted)
    found = snapshot_lag.coverage(settings)
    assert found.behind == 120 and found.oldest_behind_at is not None
    assert received and max(received) < 3_000_000, f"{max(received):,} bytes read for one record's time"
