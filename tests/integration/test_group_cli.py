"""``persona group members|leave`` against a real broker and a real static member."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from deploy.workers import WorkerProcess, settings_env, wait_group_stable
from stream_app.cli import app
from stream_app.settings import Settings

pytestmark = [pytest.mark.integration]


def _members(runner: CliRunner) -> Any:
    result = runner.invoke(app, ["group", "members", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_group_members_lists_a_stopped_static_member_until_group_leave_removes_it(
    topic_factory: Callable[..., Settings],
    worker_factory: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = topic_factory(session_timeout_s=120.0, group_instance_id="cli-worker-0")
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    worker = worker_factory(settings)
    worker.wait_ready()
    wait_group_stable(settings, 1)

    view = _members(runner)
    assert view["group"] == settings.app_id and view["state"] == "STABLE"
    (member,) = view["members"]
    assert member["instance_id"] == "cli-worker-0" and member["partitions"] >= settings.partitions

    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)["group_members"]
    assert [(m["instance_id"], m["partitions"]) for m in shown["members"]] == [("cli-worker-0", member["partitions"])]

    assert worker.stop() == 0
    # Stopped, and still a member (no leave on close): what a scale-down leaves behind.
    assert [m["instance_id"] for m in _members(runner)["members"]] == ["cli-worker-0"]

    left = runner.invoke(app, ["group", "leave", "cli-worker-0", "never-was"])
    assert left.exit_code == 0, left.output
    assert left.stdout.splitlines() == [
        f"cli-worker-0: removed from group {settings.app_id}",
        f"never-was: not a member of group {settings.app_id} (its session ended, or a wrong id)",
    ]
    assert _members(runner)["members"] == []
