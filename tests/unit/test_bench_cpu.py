"""The CPU accounting behind `persona bench stream`'s per-event figures (bench.harness)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.harness import cpu_seconds, machine_cpu_seconds


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_seconds_of_this_process_agree_with_process_time() -> None:
    before, ours = cpu_seconds(os.getpid()), time.process_time()
    _burn(0.3)
    spent = time.process_time() - ours
    # /proc counts in clock ticks (10 ms): the two clocks agree to a few ticks.
    assert abs((cpu_seconds(os.getpid()) - before) - spent) < 0.05


def test_cpu_seconds_count_a_busy_child_and_the_machine_counts_it_too() -> None:
    busy = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        machine = machine_cpu_seconds()
        deadline = time.monotonic() + 20
        while cpu_seconds(child.pid) < 0.55 and time.monotonic() < deadline:
            time.sleep(0.1)
        # The parent's tree includes the child: its busy 0.6 s shows in the tree's total.
        assert cpu_seconds(os.getpid()) - time.process_time() >= 0.5
        assert machine_cpu_seconds() - machine > 0.0
    finally:
        child.kill()
        child.wait()


def test_drain_polls_the_worker_coarsely_mid_run_and_finely_near_the_end() -> None:
    """Each scrape costs the worker's loop: 0.5 s apart mid-run, 0.05 s in the last tenth (the
    finish is observed at most that late), 0.1 s until the first applied event."""
    from bench.harness import POLL_FAR_S, POLL_NEAR_S, POLL_START_S, poll_pause

    assert poll_pause(0, 1000, started=False) == POLL_START_S
    assert poll_pause(1, 1000, started=True) == POLL_FAR_S
    assert poll_pause(899, 1000, started=True) == POLL_FAR_S
    assert poll_pause(900, 1000, started=True) == POLL_NEAR_S
    assert poll_pause(1000, 1000, started=True) == POLL_NEAR_S
