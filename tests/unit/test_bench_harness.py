"""bench.harness.workdir: a failed benchmark run keeps its processes' logs, not its data."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness import workdir


def _populate(root: Path) -> None:
    (root / "persona-bench1.log").write_text("worker log: supervisor restarting after a gap\n")
    (root / "trivial-0.log").write_text("agent log\n")
    # A worker's RocksDB partition: its write-ahead log is also named *.log.
    db = root / "state" / "persona-bench1" / "tables" / "profiles-0.db"
    db.mkdir(parents=True)
    (db / "CURRENT").write_text("MANIFEST-000001\n")
    (db / "000003.log").write_bytes(b"\x00" * 64)
    # A Kafka segment beside its index.
    part = root / "kafka" / "topic-0"
    part.mkdir(parents=True)
    (part / "00000000000000000000.log").write_bytes(b"\x00" * 64)
    (part / "00000000000000000000.index").write_bytes(b"")


def test_regression_a_restarted_benchmark_worker_took_its_log_with_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A compared worker restarted by its supervisor made `bench stream` refuse its figures,
    and its log went with the temporary directory (2026-12-07): now the run's logs stay."""
    keep = tmp_path / "failed"
    made: list[Path] = []
    with pytest.raises(AssertionError, match="restarted"), workdir("persona-bench-", keep=keep) as work:
        made.append(work)
        _populate(work)
        raise AssertionError("worker was restarted 1x by its supervisor")
    assert not made[0].exists()
    (run,) = keep.iterdir()
    kept = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert kept == ["persona-bench1.log", "trivial-0.log"]
    assert (run / "persona-bench1.log").read_text() == "worker log: supervisor restarting after a gap\n"
    assert str(run) in capsys.readouterr().err


def test_a_run_that_succeeds_keeps_nothing(tmp_path: Path) -> None:
    keep = tmp_path / "failed"
    with workdir("persona-bench-", keep=keep) as work:
        _populate(work)
    assert not work.exists() and not keep.exists()
