"""A worker that restarts itself (faust#596's gap or a stalled commit) leaves its group first.

The restart exits at once, skipping Faust's shutdown so that nothing is committed past the stuck
record, and with it aiokafka's LeaveGroup. A dynamic member's restarted process then joined a group
that still counted the dead process as a member: the join, and every other worker with it, waited
for that member's session to time out (27 s of a 30 s session in a ``persona bench scale`` run)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.workers import WorkerProcess, free_port, metric_sum, wait_drained, wait_group_stable
from state.events import Event, Purchase
from stream_app.erase import end_offsets
from stream_app.inspect import all_profiles
from stream_app.producer import publish
from stream_app.settings import Settings

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]


def _purchases(prefix: str, n: int) -> list[Event]:
    return [Purchase(event_id=f"{prefix}-{i}", ts=1_000.0 + i, user_id=f"u{i % 23}", item_id=f"i{i % 11}") for i in range(n)]


def test_regression_a_dynamic_workers_restart_stopped_the_group_for_a_session_timeout(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = 90.0
    settings = topic_factory(partitions=2, session_timeout_s=session, stall_timeout_s=2.0)
    topic = settings.topic("purchase")
    w1 = worker_factory(settings, allow_restarts=True)
    w1.wait_ready()
    marker = tmp_path / "hold-ack"  # written once the second worker's partition is known
    monkeypatch.setenv("PERSONA_FAILPOINT_HOLD_ACK", str(marker))
    w2 = worker_factory(settings, allow_restarts=True, state_dir=tmp_path / "state-second", web_port=free_port())
    w2.wait_ready()
    wait_group_stable(settings, 2)
    first = _purchases("a", 200)
    publish(settings, first)
    wait_drained(settings, [topic], [w1, w2])
    (mine,) = w2.wait_owned(topic)  # two partitions, two workers: one each

    # The next two records of w2's partition stay un-acked: the commit stalls, w2 restarts itself.
    head = end_offsets(settings, topic)[mine]
    marker.write_text(f"{topic}:{mine}:{head}:{head + 1}\n")
    second = _purchases("b", 200)
    t0 = time.monotonic()
    publish(settings, second)
    w2.wait_until(lambda m: metric_sum(m, "persona_supervisor_restarts_total") >= 1, timeout=session)
    assert not marker.exists()  # the failpoint fired
    wait_drained(settings, [topic], [w1, w2], timeout=2 * session)
    took = time.monotonic() - t0
    log = w2.log_tail(2000)
    assert "before exit: left the consumer group" in log, log
    # Stall (2 s) + a new process + two rebalances; a dead member in the group meant a session (90 s) more.
    print(f"drained {took:.1f} s after the publish, through the restart")
    assert took < session / 2, (took, log)

    assert w1.stop() == 0 and w2.stop() == 0
    want = Counter(e.user_id for e in first + second)
    profiles = all_profiles(settings)
    assert {u: p.counts.get("purchase", 0) for u, p in profiles.items()} == dict(want)
