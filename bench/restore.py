"""``persona bench restore``: a worker's start-up catch-up of the shared scoring state, from the
whole deltas topic against from the latest snapshot, through a real broker.

MovieLens-100k (or the first ``--events``) is replayed in process by the worker's pipeline
(``bench.ranking._Replay``); its scoring deltas are published to a fresh deltas topic as a
worker publishes them (batches of ``PERSONA_DELTA_BATCH`` per input source). A snapshot is
taken at ``--at`` of the deltas (``persona shared snapshot``'s code), the rest is published
after it, and then, in the same run, two fresh replicas (the worker's ``SharedReplica`` over a
fresh pipeline) catch up:

- the baseline reads the whole topic (``PERSONA_SHARED_SNAPSHOT=false``, what every worker start
  did before snapshots);
- the other restores the snapshot and reads the deltas after it.

Reported: wall seconds of each catch-up and their ratio, the snapshot's size against the deltas
topic's, the job's time, and whether both replicas hold the same state (their summaries).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from bench.harness import bench_settings, broker, workdir
from bench.ranking import _Replay, load_events
from scoring.shared import Delta, encode_batch, encode_delta
from state.catalog import Catalog
from state.events import Event, Item
from stream_app import snapshot_job, snapshots
from stream_app.pipeline import Pipeline
from stream_app.settings import Settings
from stream_app.shared_replica import MAX_BATCH_BYTES, SharedReplica
from stream_app.stores import DictStore, NoVectors
from stream_app.topics import ensure_topics


def _publish(settings: Settings, deltas: Sequence[Delta]) -> int:
    """As a worker's DeltaBatcher: per source, up to ``delta_batch`` deltas (and MAX_BATCH_BYTES) a record."""
    producer = Producer(settings.kafka_config() | {"acks": "all", "linger.ms": 20})
    sent = 0
    pending: dict[str, list[bytes]] = {}
    size: dict[str, int] = {}

    def send(source: str) -> None:
        nonlocal sent
        batch = pending.pop(source, [])
        size.pop(source, None)
        if batch:
            producer.produce(settings.scoring_deltas_topic, key=source.encode(), value=encode_batch(batch))
            producer.poll(0)
            sent += 1

    for d in deltas:
        data = encode_delta(d)
        if size.get(d.source, 0) + len(data) > MAX_BATCH_BYTES:
            send(d.source)
        pending.setdefault(d.source, []).append(data)
        size[d.source] = size.get(d.source, 0) + len(data)
        if len(pending[d.source]) >= settings.delta_batch:
            send(d.source)
    for source in list(pending):
        send(source)
    if producer.flush(60):
        raise RuntimeError("deltas not delivered")
    return sent


def _catch_up(settings: Settings) -> tuple[float, float, dict[str, int]]:
    """Wall seconds until a fresh replica is ready, the event loop's longest stall meanwhile
    (what the worker's consumer heartbeats and other replicas waited at most), and the state's summary."""
    pipe = Pipeline.from_settings(settings, store=DictStore(), catalog=Catalog(), vectors=NoVectors(), emit=lambda k, v: None)
    replica = SharedReplica(settings, settings.scoring_deltas_topic, settings.partitions, pipe)
    stalls = [0.0]

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls[0] = max(stalls[0], time.perf_counter() - before - 0.005)

    async def go() -> float:
        started = time.perf_counter()
        tick = asyncio.create_task(ticker())
        task = asyncio.create_task(replica.run())
        ready = asyncio.create_task(replica.ready.wait())
        try:
            done, _ = await asyncio.wait({task, ready}, timeout=600, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
            if ready not in done:
                raise RuntimeError("the replica did not catch up in 600 s")
            return time.perf_counter() - started
        finally:
            task.cancel()
            tick.cancel()
            await asyncio.gather(task, tick, return_exceptions=True)

    seconds = asyncio.run(go())
    return seconds, stalls[0], dict(pipe.shared.summary())


def _restore_in_one_go(settings: Settings) -> float:
    """Seconds of ``SharedState.restore`` of the latest snapshot, in one call: what a worker's
    event loop was blocked for when the restore ran on it (before it was staged in a thread)."""
    latest = snapshots.read_latest(settings)
    if latest is None:
        raise RuntimeError("no snapshot to restore")
    state = snapshots.new_state(settings)
    started = time.perf_counter()
    state.restore(latest.data)
    return time.perf_counter() - started


def _topic_bytes(settings: Settings) -> int:
    """Bytes of the deltas topic's records (keys and values, uncompressed)."""
    from stream_app.inspect import scan

    return sum(len(k or b"") + len(v or b"") for k, v, _, _, _ in scan(settings, settings.scoring_deltas_topic, idle_s=5.0))


def measure(events: Sequence[Event], bootstrap: str, at: float, work: Path) -> dict[str, Any]:
    if not 0.0 < at <= 1.0:
        raise ValueError(f"--at is a fraction in (0, 1], got {at}")
    tag = f"restore{int(time.time())}"
    settings = bench_settings(bootstrap, tag, work / "state")
    ensure_topics(settings)
    deltas: list[Delta] = []
    replay = _Replay(settings, publish=deltas.append)
    for event in events:
        if isinstance(event, Item):
            replay.feed(event)
    for event in events:
        if not isinstance(event, Item):
            replay.feed(event)
    cut = int(len(deltas) * at)
    records = _publish(settings, deltas[:cut])
    started = time.perf_counter()
    report = snapshot_job.take(settings)
    take_s = time.perf_counter() - started
    if report.manifest is None:
        raise RuntimeError("no snapshot was taken")
    records += _publish(settings, deltas[cut:])
    full_s, full_stall, full_state = _catch_up(settings.model_copy(update={"shared_snapshot": False}))
    snap_s, snap_stall, snap_state = _catch_up(settings)
    one_go = _restore_in_one_go(settings)
    return {
        "cpus": os.cpu_count() or 0,
        "deltas": len(deltas),
        "delta_records": records,
        "deltas_topic_bytes": _topic_bytes(settings),
        "snapshot_at": cut,
        "snapshot_bytes": report.manifest.size,
        "snapshot_chunks": report.manifest.chunks,
        "snapshot_take_s": take_s,
        "full_replay_s": full_s,
        "snapshot_restore_s": snap_s,
        "restore_vs_full": snap_s / full_s,
        "full_replay_max_loop_stall_s": full_stall,
        "snapshot_max_loop_stall_s": snap_stall,
        "restore_in_one_go_s": one_go,
        "same_summary": full_state == snap_state,
        "summary": snap_state,
        "summary_full": full_state,
    }


def run(bootstrap: str | None, data_dir: Path, events: int | None, at: float) -> dict[str, Any]:
    loaded = load_events(data_dir, events)
    with broker(bootstrap) as bs, workdir("persona-bench-restore-") as work:
        report = measure(loaded, bs, at, work)
    report["data"] = "movielens-100k" if events is None else f"movielens-100k (first {events})"
    return report


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"shared-state catch-up at start ({report['data']}: {report['deltas']:,} deltas, {report['cpus']} cores)")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("deltas topic", f"{report['delta_records']:,} records, {report['deltas_topic_bytes']:,} bytes")
    table.add_row(
        "snapshot", f"at delta {report['snapshot_at']:,}: {report['snapshot_bytes']:,} bytes, {report['snapshot_chunks']} chunks"
    )
    table.add_row("snapshot job (persona shared snapshot)", f"{report['snapshot_take_s']:.2f} s")
    table.add_row("catch-up, whole deltas topic (baseline)", f"{report['full_replay_s']:.2f} s")
    table.add_row("catch-up, snapshot + deltas after it", f"{report['snapshot_restore_s']:.2f} s")
    table.add_row("ratio (snapshot / baseline)", f"{report['restore_vs_full']:.3f}")
    if "snapshot_max_loop_stall_s" in report:
        table.add_row(
            "longest event-loop stall: baseline / snapshot (staged in a thread)",
            f"{report['full_replay_max_loop_stall_s']:.3f} / {report['snapshot_max_loop_stall_s']:.3f} s",
        )
        table.add_row("the restore in one call (on the loop, before staging)", f"{report['restore_in_one_go_s']:.3f} s")
    table.add_row("same state (summaries)", "yes" if report["same_summary"] else "NO")
    console.print(table)
