"""The framework's own ceiling: a Faust agent that only counts events.

Run as ``python -m bench.trivial_agent`` with BENCH_TOPIC, BENCH_EVENTS, BENCH_RESULT and the
usual PERSONA_* settings; writes ``{"events": n, "first": t0, "last": t1}`` (monotonic
seconds, first and last event) to BENCH_RESULT once BENCH_EVENTS events were seen, with
``cpu``: the process's CPU seconds between them (its own per-event cost, apart from the broker's).
With BENCH_TAKE=n > 0 the agent takes the stream in batches of up to n (``take_events``, 0.5 s
window) and counts each batch at once, in a consumer group of its own. The agent takes at most
``PERSONA_MAX_POLL_RECORDS`` records from its Kafka client at once, as the worker does (0: Faust's
default, no bound); BENCH_VARIANT names a further run's own consumer group. With
BENCH_COUNT_EVENTS=1 it counts the events inside batch records (``state.batch``: it splits each
array, as the least any reader of them must do), so its rate over a topic of batch records is
in events, comparable with the worker's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, cast

import faust
import msgspec

from state.batch import is_batch
from stream_app.settings import Settings

_parts = msgspec.json.Decoder(list[msgspec.Raw])


def main() -> None:
    settings = Settings()
    topic_name = os.environ["BENCH_TOPIC"]
    target = int(os.environ["BENCH_EVENTS"])
    result = Path(os.environ["BENCH_RESULT"])
    take = int(os.environ.get("BENCH_TAKE", "0"))
    variant = os.environ.get("BENCH_VARIANT", "")
    count_events = os.environ.get("BENCH_COUNT_EVENTS", "0") == "1"
    app = faust.App(
        f"{settings.app_id}-trivial" + (f"-take{take}" if take else "") + (f"-{variant}" if variant else ""),
        broker=[f"kafka://{h}" for h in settings.bootstrap_servers.split(",")],
        datadir=str(settings.state_dir),
        processing_guarantee="at_least_once",
        broker_commit_every=settings.commit_every,
        broker_commit_interval=settings.commit_interval_s,
        # The worker's bound (stream_app.worker), so the two are compared on one Faust set-up.
        broker_max_poll_records=settings.max_poll_records or None,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
    )
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    seen = {"n": 0, "first": 0.0, "cpu": 0.0, "before_clock": 0}

    def counted(k: int) -> None:
        if seen["n"] == 0:
            # The clock starts at the first batch, so its events (read before it) are not timed.
            seen["first"], seen["cpu"], seen["before_clock"] = time.monotonic(), time.process_time(), k - 1
        before = seen["n"]
        seen["n"] += k
        if before < target <= seen["n"]:
            cpu = time.process_time() - seen["cpu"]
            timed = target - int(seen["before_clock"])
            result.write_text(json.dumps({"events": timed, "first": seen["first"], "last": time.monotonic(), "cpu": cpu}))

    @app.agent(topic, concurrency=1)
    async def count(stream: faust.StreamT[bytes]) -> None:
        if take:
            # take_events is in faust-streaming's Stream, not in its StreamT protocol.
            async for batch in cast(Any, stream).take_events(take, within=0.5):
                counted(len(batch))
        elif count_events:
            async for event in stream.events():
                value = event.message.value
                counted(len(_parts.decode(value)) if is_batch(value) else 1)
        else:
            async for _ in stream.events():
                counted(1)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
