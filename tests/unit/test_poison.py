"""A record whose processing raised a bug: dead-lettered, remembered, passed by after the restart (stream_app.poison)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from state.errors import StateError
from stream_app import poison
from stream_app.poison import FAILPOINT_ENV, Guard, PoisonLedger, internal_letter, passed_by
from stream_app.settings import Settings
from stream_app.supervise import RESTART_EXIT_CODE


@dataclass
class Msg:
    topic: str = "p.purchase"
    partition: int = 1
    offset: int = 7
    key: bytes = b"u1"
    value: bytes = b"{}"
    timestamp: float = 0.0


class Exited(Exception):
    """Stands in for os._exit in these tests."""


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """dead_letter_and_restart's effects, recorded: the confirm step succeeds, exit raises Exited."""
    seen: list[tuple[str, Any]] = []

    def confirm(settings: Settings, kind_topic: str, message: Any, letter: Any) -> bool:
        seen.append(("confirm", (kind_topic, message.offset, letter.reason, letter.error)))
        return True

    def exit_(code: int) -> None:
        seen.append(("exit", code))
        raise Exited

    monkeypatch.setattr(poison, "confirm_dead_letter", confirm)
    monkeypatch.setattr("stream_app.poison.os._exit", exit_)
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)
    return seen


def test_the_ledger_survives_a_reopen_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "state" / poison.LEDGER_NAME
    ledger = PoisonLedger(path)
    assert not ledger and ("t", 0, 1) not in ledger
    ledger.add("t", 0, 1)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('["t", 0, ')  # a crash mid-write
    PoisonLedger(path).add("t", 2, 5)
    again = PoisonLedger(path)
    assert len(again) == 2 and ("t", 0, 1) in again and ("t", 2, 5) in again
    assert ("t", 0, 2) not in again and ("u", 0, 1) not in again


def test_regression_every_restart_after_a_dead_letter_warned_of_a_torn_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """add() writes a newline before each entry (to end a line a crash tore), so a whole ledger
    holds blank lines; reading one warned "ignoring a torn line ''" at every start after a dead
    letter (seen in every run of the poison chaos test), an alarm with nothing behind it."""
    path = tmp_path / poison.LEDGER_NAME
    PoisonLedger(path).add("t", 0, 1)
    PoisonLedger(path).add("t", 3, 7)
    assert "" in path.read_text(encoding="utf-8").splitlines()  # the blank lines are there
    with caplog.at_level("WARNING", logger="persona.poison"):
        whole = PoisonLedger(path)
    assert len(whole) == 2 and not [r for r in caplog.records if "torn" in r.getMessage()]
    # A line a crash did tear is still reported, with what it held.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('["t", 4, ')
    with caplog.at_level("WARNING", logger="persona.poison"):
        assert len(PoisonLedger(path)) == 2
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records if "torn" in r.getMessage()] == [
        "ignoring a torn line '[\"t\", 4, '"
    ]


def test_internal_letter_names_the_exception() -> None:
    letter = internal_letter(KeyError("item-9"))
    assert (letter.reason, letter.error, letter.message) == ("internal", "KeyError", "'item-9'")
    assert internal_letter(ZeroDivisionError()).message == "ZeroDivisionError()"


def test_a_bug_dead_letters_records_and_restarts_in_that_order(tmp_path: Path, calls: list[tuple[str, Any]]) -> None:
    ledger = PoisonLedger(tmp_path / poison.LEDGER_NAME)
    with pytest.raises(Exited), Guard(Settings(), ledger, "p.purchase", Msg()):
        raise KeyError("item-9")
    assert calls == [("confirm", ("p.purchase", 7, "internal", "KeyError")), ("exit", RESTART_EXIT_CODE)]
    assert ("p.purchase", 1, 7) in PoisonLedger(tmp_path / poison.LEDGER_NAME)  # on disk before the exit


def test_an_unconfirmed_dead_letter_restarts_without_recording_the_record(
    tmp_path: Path, calls: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poison, "confirm_dead_letter", lambda *args: False)
    ledger = PoisonLedger(tmp_path / poison.LEDGER_NAME)
    with pytest.raises(Exited), Guard(Settings(), ledger, "p.purchase", Msg()):
        raise ValueError("bug")
    assert calls == [("exit", RESTART_EXIT_CODE)]
    assert not PoisonLedger(tmp_path / poison.LEDGER_NAME)  # the replay meets it again


def test_crash_decisions_and_cancellation_pass_through_the_guard(tmp_path: Path, calls: list[tuple[str, Any]]) -> None:
    ledger = PoisonLedger(tmp_path / poison.LEDGER_NAME)
    with pytest.raises(StateError), Guard(Settings(), ledger, "p.purchase", Msg()):
        raise StateError("a profile from a newer schema")
    with pytest.raises(asyncio.CancelledError), Guard(Settings(), ledger, "p.purchase", Msg()):
        raise asyncio.CancelledError
    with Guard(Settings(), ledger, "p.purchase", Msg()):
        pass
    assert calls == [] and not ledger


def test_the_failpoint_fires_for_its_record_only(tmp_path: Path, calls: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAILPOINT_ENV, "p.purchase:1:8")
    ledger = PoisonLedger(tmp_path / poison.LEDGER_NAME)
    with Guard(Settings(), ledger, "p.purchase", Msg(offset=7)):
        pass
    assert calls == []
    with pytest.raises(Exited), Guard(Settings(), ledger, "p.purchase", Msg(offset=8)):
        pass
    assert calls[0] == ("confirm", ("p.purchase", 8, "internal", "RuntimeError"))


def test_a_recorded_record_is_passed_by_and_counted_as_a_dead_letter(tmp_path: Path) -> None:
    from stream_app import metrics

    ledger = PoisonLedger(tmp_path / poison.LEDGER_NAME)
    assert not passed_by(ledger, Msg())
    ledger.add("p.purchase", 1, 7)
    outcome, reason = metrics.event_counter("p.purchase", "dead_letter"), metrics.DEAD_LETTERS.labels("internal")
    before = outcome._value.get(), reason._value.get()
    assert passed_by(ledger, Msg()) and not passed_by(ledger, Msg(offset=8)) and not passed_by(ledger, Msg(partition=0))
    assert (outcome._value.get(), reason._value.get()) == (before[0] + 1, before[1] + 1)


def test_the_ledger_forgets_records_the_group_committed_past_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / poison.LEDGER_NAME
    ledger = PoisonLedger(path)
    for entry in [("t.purchases", 0, 5), ("t.purchases", 0, 9), ("t.purchases", 1, 3), ("t.reviews", 0, 7)]:
        ledger.add(*entry)
    committed = {("t.purchases", 0): 9, ("t.purchases", 1): 4}  # t.reviews:0: no commit yet
    asked: list[tuple[str, int]] = []

    def next_offset(topic: str, partition: int) -> int | None:
        asked.append((topic, partition))
        return committed.get((topic, partition))

    assert ledger.prune(next_offset) == 2
    assert set(asked) == {("t.purchases", 0), ("t.purchases", 1), ("t.reviews", 0)}
    # Offset 9 is the group's next record: a replay meets it, so it stays; 5 and 3 are behind.
    want = {("t.purchases", 0, 9), ("t.reviews", 0, 7)}
    assert {e for e in want if e in ledger} == want and len(ledger) == 2
    assert ("t.purchases", 0, 5) not in ledger and ("t.purchases", 1, 3) not in ledger
    reopened = PoisonLedger(path)
    assert len(reopened) == 2 and all(e in reopened for e in want)
    assert reopened.prune(next_offset) == 0 and not (tmp_path / (poison.LEDGER_NAME + ".tmp")).exists()


def test_records_of_the_groups_topic_are_passed_by_and_their_pruned_ones_are_named_for_tombstones(tmp_path: Path) -> None:
    ledger = PoisonLedger(tmp_path / "fresh" / poison.LEDGER_NAME)
    assert ledger.stale  # nothing read from the group's topic yet
    ledger.add("t.purchases", 0, 2)  # this worker's own
    ledger.merge({("t.purchases", 1, 7), ("t.purchases", 1, 12), ("t.reviews", 0, 4)})  # another worker's
    assert passed_by(ledger, Msg(topic="t.purchases", partition=1, offset=7)) and len(ledger) == 4
    committed = {("t.purchases", 0): 3, ("t.purchases", 1): 10}
    assert ledger.prune(lambda topic, partition: committed.get((topic, partition))) == 2
    # Only what came from the topic gets a tombstone there; the worker's own went from its file.
    assert ledger.forgotten == {("t.purchases", 1, 7)}
    assert ("t.purchases", 1, 12) in ledger and ("t.reviews", 0, 4) in ledger
    assert ledger.prune(lambda topic, partition: None) == 0 and ledger.forgotten == set()


def test_agents_that_find_the_ledger_stale_share_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def read(settings: Settings, timeout_s: float = 10.0) -> set[tuple[str, int, int]]:
        reads.append(settings.poison_topic)
        return {("t.purchases", 3, 9)}

    monkeypatch.setattr(poison, "read_shared", read)
    ledger = PoisonLedger(tmp_path / poison.LEDGER_NAME)

    async def agents() -> None:
        await asyncio.gather(*(poison.refresh(ledger, Settings()) for _ in range(6)))

    asyncio.run(agents())
    assert reads == [Settings().poison_topic] and not ledger.stale and ("t.purchases", 3, 9) in ledger
    ledger.stale = True  # a rebalance: the next agent reads again
    asyncio.run(poison.refresh(ledger, Settings()))
    assert len(reads) == 2 and not ledger.stale
