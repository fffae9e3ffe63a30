"""The framework's own ceiling: a Faust agent that only counts events.

Run as ``python -m bench.trivial_agent`` with BENCH_TOPIC, BENCH_EVENTS, BENCH_RESULT and the
usual PERSONA_* settings; writes ``{"events": n, "first": t0, "last": t1}`` (monotonic
seconds, first and last event) to BENCH_RESULT once BENCH_EVENTS events were seen, with
``cpu``: the process's CPU seconds between them (its own per-event cost, apart from the broker's).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import faust

from stream_app.settings import Settings


def main() -> None:
    settings = Settings()
    topic_name = os.environ["BENCH_TOPIC"]
    target = int(os.environ["BENCH_EVENTS"])
    result = Path(os.environ["BENCH_RESULT"])
    app = faust.App(
        f"{settings.app_id}-trivial",
        broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
        datadir=str(settings.state_dir),
        processing_guarantee="at_least_once",
        broker_commit_every=settings.commit_every,
        broker_commit_interval=settings.commit_interval_s,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
    )
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    seen = {"n": 0, "first": 0.0, "cpu": 0.0}

    @app.agent(topic, concurrency=1)
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for _ in stream.events():
            if seen["n"] == 0:
                seen["first"], seen["cpu"] = time.monotonic(), time.process_time()
            seen["n"] += 1
            if seen["n"] == target:
                cpu = time.process_time() - seen["cpu"]
                result.write_text(json.dumps({"events": target, "first": seen["first"], "last": time.monotonic(), "cpu": cpu}))

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
