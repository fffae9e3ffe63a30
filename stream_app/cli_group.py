"""``persona group members|leave``: the worker group as the coordinator sees it, and removing
static members that were stopped for good (mounted by stream_app.cli)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from state.errors import PersonaError
from stream_app.cli_ops import _settings as settings_for
from stream_app.cli_ops import exit_code

group_app = typer.Typer(help="The worker consumer group: its members; remove stopped static members.", no_args_is_help=True)
console = Console(stderr=True)

Bootstrap = Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")]


@group_app.command("members")
def group_members(
    bootstrap: Bootstrap = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The group's state and members: instance id (static members), host, partitions held.

    A static member that was stopped is listed, holding its partitions, until its session ends
    or ``persona group leave`` removes it."""
    from stream_app.membership import describe

    try:
        view = describe(settings_for(bootstrap))
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(exit_code(exc)) from exc
    if as_json:
        print(json.dumps(asdict(view), indent=2, sort_keys=True))
        return
    table = Table(title=f"group {view.group}: {view.state}, {len(view.members)} members")
    for col in ("instance id", "member id", "host", "partitions"):
        table.add_column(col, justify="right" if col == "partitions" else "left")
    for m in view.members:
        table.add_row(m.instance_id or "(dynamic)", m.member_id, m.host, str(m.partitions))
    Console().print(table)


@group_app.command("leave")
def group_leave(
    instance_ids: Annotated[list[str], typer.Argument(help="Group instance ids (PERSONA_GROUP_INSTANCE_ID) of workers stopped for good.")],
    bootstrap: Bootstrap = None,
) -> None:
    """Remove static members from the group now, so their partitions move at once.

    For a scale-down with static membership (the StatefulSet): a removed pod's worker does not
    leave the group when it stops, and its partitions wait for its session to time out
    (PERSONA_SESSION_TIMEOUT_S). Run this after the pods are gone. An id that is not a member
    (its session ended already) is reported and is not an error. A worker still running under
    a removed id rejoins as a new member: one rebalance."""
    from stream_app.membership import leave

    settings = settings_for(bootstrap)
    try:
        results = leave(settings, instance_ids)
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(exit_code(exc)) from exc
    refused = False
    for r in results:
        if r.outcome == "removed":
            print(f"{r.instance_id}: removed from group {settings.app_id}")
        elif r.outcome == "absent":
            print(f"{r.instance_id}: not a member of group {settings.app_id} (its session ended, or a wrong id)")
        else:
            refused = True
            console.print(f"[red]{r.instance_id}: refused by the group coordinator: {r.error}[/red]")
    if refused:
        raise typer.Exit(1)
