"""Operators' commands: ``persona status``, ``persona erase``, ``persona dlq list|redrive`` and ``persona shared snapshot|show``
(mounted by stream_app.cli)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from state.errors import CONFIG_EXIT_CODE, PersonaError

if TYPE_CHECKING:
    from stream_app.settings import Settings
    from stream_app.snapshot_job import Report

dlq_app = typer.Typer(help="Dead-letter topics: list them, redrive them after a fix.", no_args_is_help=True)
shared_app = typer.Typer(help="The shared scoring state's snapshots (what a starting worker restores).", no_args_is_help=True)
console = Console(stderr=True)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """Unix seconds from ``2h``/``30m``/``1d`` (ago), an ISO-8601 time (UTC unless it says), or epoch seconds."""
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"--since is a duration (2h, 30m, 1d), an ISO time or epoch seconds; got {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def exit_code(exc: PersonaError) -> int:
    """3: fix the settings or the credentials (retrying cannot help); 1: anything else."""
    from state.errors import ConfigError
    from stream_app.kafka_clients import AuthenticationError

    return CONFIG_EXIT_CODE if isinstance(exc, (AuthenticationError, ConfigError)) else 1


def _settings(bootstrap: str | None) -> Settings:
    from stream_app.settings import Settings

    return Settings(bootstrap_servers=bootstrap) if bootstrap else Settings()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_cmd(
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Group lag per topic, the last emitted recommendation, published models, dead letters in the last hour."""
    from stream_app.status import status

    settings = _settings(bootstrap)
    try:
        s = status(settings)
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(exit_code(exc)) from exc
    if as_json:
        print(json.dumps(s.to_json(), indent=2, sort_keys=True))
        return
    out = Console()
    table = Table(title=f"group {s.group}: lag per input topic")
    for col in ("topic", "records", "lag", "committed partitions"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    for t in s.lags:
        table.add_row(t.topic, f"{t.records:,}", f"{t.lag:,}", f"{t.committed_partitions}/{t.partitions}")
    out.print(table)
    if s.last_emit is None:
        out.print("last recommendation: [yellow]none emitted yet[/yellow]")
    else:
        out.print(f"last recommendation: {_iso(s.last_emit)} ({s.checked_at - s.last_emit:,.0f} s ago); {s.recommendations:,} on the topic")
    out.print("models: " + ", ".join(f"{k} {v or '(none published)'}" for k, v in s.models.items()))
    total = sum(s.dead_letters_last_hour.values())
    detail = ", ".join(f"{t} {n:,}" for t, n in sorted(s.dead_letters_last_hour.items()) if n)
    out.print(f"dead letters in the last hour: {total:,}" + (f" ({detail})" if detail else ""))
    snap = s.shared_snapshot
    if snap is not None:
        waiting = (
            f", the oldest written {_age(s.checked_at - snap['oldest_behind_at'])} ago" if snap["oldest_behind_at"] is not None else ""
        )
        head = (
            f"{snap['id']} ({snap['deltas']:,} deltas), written {_age(s.checked_at - snap['written_at'])} ago"
            if snap["id"] is not None and snap["written_at"] is not None else "[yellow]none[/yellow]"
        )
        out.print(f"shared-state snapshot: {head}; {snap['behind_records']:,} delta records after it{waiting}")
        if snap["differs"]:
            out.print("[yellow]  taken with other scoring settings than these: " + ", ".join(snap["differs"]) + "[/yellow]")
    if s.group_members is not None:
        ms = s.group_members["members"]
        static = sum(1 for m in ms if m["instance_id"])
        who = ", ".join(f"{m['instance_id'] or '(dynamic)'} {m['partitions']}" for m in ms)
        out.print(f"group members: {len(ms)} ({s.group_members['state']}; {static} static)" + (f": {who} partitions" if ms else ""))
    for note in s.notes:
        out.print(f"[yellow]{note}[/yellow]")


def erase_cmd(
    user: Annotated[str, typer.Argument(help="The user id to erase everywhere.")],
    reason: Annotated[str, typer.Option(help="Audit note (a ticket id; never personal data).")] = "",
    at: Annotated[Optional[float], typer.Option(help="Event time the erasure covers (epoch s; default: now).")] = None,
    wait: Annotated[float, typer.Option(help="Wait up to this many seconds for the worker's tombstone (0: do not wait).")] = 60.0,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
) -> None:
    """Erase a user: profile, changelog, social state, caches; a tombstone on recommendations."""
    from stream_app.erase import end_offsets, request_erasure, wait_for_tombstone
    from stream_app.topics import ensure_topics

    settings = _settings(bootstrap)
    try:
        ensure_topics(settings)
        since = end_offsets(settings, settings.recommendations_topic) if wait > 0 else {}
        erasure = request_erasure(settings, user, ts=at, reason=reason)
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(exit_code(exc)) from exc
    print(f"erasure of {user!r} requested ({erasure.event_id}, covers events up to {_iso(erasure.ts)})")
    if wait <= 0:
        return
    done = wait_for_tombstone(settings, user, since, wait)
    if done is None:
        console.print(f"[red]no tombstone for {user!r} on {settings.recommendations_topic} within {wait:.0f} s: is a worker running?[/red]")
        raise typer.Exit(2)
    where = f"{settings.recommendations_topic} partition {done.partition} offset {done.offset}"
    print(f"erased: tombstone on {where} after {done.waited_s:.1f} s")


def acls_cmd(
    principal: Annotated[Optional[str], typer.Option(help="Principal (default: User:<PERSONA_SASL_USERNAME>).")] = None,
) -> None:
    """Print the ACLs Persona's principal needs, as kafka-acls.sh commands (see stream_app/acls.py)."""
    from stream_app.acls import grants

    settings = _settings(None)
    who = principal or f"User:{settings.sasl_username or 'persona'}"
    for grant in grants(settings):
        print(f"kafka-acls.sh --bootstrap-server {settings.bootstrap_servers} --command-config admin.properties "
              f"{grant.kafka_acls_args(who)}")


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="Event kind (purchase), input topic (persona.purchase) or its .dlq topic.")],
    since: Annotated[Optional[str], typer.Option(help="Only letters from then on: 2h, 30m, 1d, an ISO time or epoch seconds.")] = None,
    limit: Annotated[int, typer.Option(help="Print at most N (the newest).")] = 50,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per letter.")] = False,
) -> None:
    """The dead letters of a topic: where each came from, why, and whether it was redriven."""
    from stream_app.dlq_ops import read_letters, redriven, resolve

    settings = _settings(bootstrap)
    try:
        source, dlq_topic = resolve(settings, topic)
        since_ms = int(parse_since(since, time.time()) * 1000) if since else None
        letters = read_letters(settings, dlq_topic, since_ms=since_ms)
        done = redriven(settings, source, since_ms=min(x.timestamp_ms for x in letters)) if letters else set()
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(exit_code(exc)) from exc
    shown = letters[-limit:] if limit else letters
    if as_json:
        for x in shown:
            print(json.dumps({
                "dlq": f"{x.dlq_topic}:{x.partition}:{x.offset}", "time": x.timestamp_ms / 1000, "source": x.source,
                "origin": x.origin, "reason": x.reason, "message": x.message, "redriven": x.origin in done,
            }))
        return
    newest = f", the newest {len(shown):,}" if len(shown) < len(letters) else ""
    table = Table(title=f"{dlq_topic}: {len(letters):,} dead letters{newest}")
    for col in ("at", "time (UTC)", "source", "reason", "message", "redriven"):
        table.add_column(col)
    for x in shown:
        mark = "yes" if x.origin in done else ""
        table.add_row(f"{x.partition}@{x.offset}", _iso(x.timestamp_ms / 1000)[:-4], x.source, x.reason, x.message[:80], mark)
    Console(width=200).print(table)


@dlq_app.command("redrive")
def dlq_redrive(
    topic: Annotated[str, typer.Argument(help="Event kind (purchase), input topic (persona.purchase) or its .dlq topic.")],
    since: Annotated[Optional[str], typer.Option(help="Only letters from then on: 2h, 30m, 1d, an ISO time or epoch seconds.")] = None,
    reason: Annotated[Optional[list[str]], typer.Option(help="Only letters with this reason (repeatable), e.g. oversized.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be sent; send nothing.")] = False,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
) -> None:
    """Re-publish dead letters to their source topic after a fix; each original record at most once."""
    from stream_app.dlq_ops import redrive

    settings = _settings(bootstrap)
    try:
        since_ms = int(parse_since(since, time.time()) * 1000) if since else None
        report = redrive(settings, topic, since_ms=since_ms, reasons=reason, dry_run=dry_run)
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(exit_code(exc)) from exc
    verb = "would send" if dry_run else "sent"
    would = report.selected - report.already - report.repeated - report.truncated
    print(
        f"{report.dlq_topic} -> {report.source_topic}: {report.selected} selected, {report.already} already redriven, "
        f"{report.repeated} repeated, {verb} {report.sent if not dry_run else would}"
        + (f"; {report.truncated} cut to fit the dead-letter topic, not sent (originals on the source topic)" if report.truncated else "")
    )


@shared_app.command("snapshot")
def shared_snapshot(
    truncate: Annotated[
        bool, typer.Option(help="Then delete the deltas the previous snapshot covers (Kafka delete-records).")
    ] = False,
    every: Annotated[Optional[str], typer.Option(help="Run periodically: 90s, 15m, 1h, 1d (a failed run is retried next period).")] = None,
    runs: Annotated[Optional[int], typer.Option(help="With --every: stop after this many runs.")] = None,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
) -> None:
    """Snapshot the shared scoring state: the latest snapshot plus the deltas since (a periodic job)."""
    from stream_app.snapshot_job import take

    settings = _settings(bootstrap)
    if every is None:
        try:
            _print_snapshot(take(settings, truncate=truncate), as_json)
        except PersonaError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(exit_code(exc)) from exc
        return
    m = _DURATION.match(every.strip())
    if not m or float(m.group(1)) <= 0:
        raise typer.BadParameter(f"--every is a duration (90s, 15m, 1h, 1d); got {every!r}")
    period = float(m.group(1)) * _UNIT[m.group(2)]
    done = 0
    while runs is None or done < runs:
        started = time.monotonic()
        try:
            report: Report = take(settings, truncate=truncate)
            _print_snapshot(report, as_json)
        except PersonaError as exc:  # the broker away, a refused write: the next period tries again
            console.print(f"[red]snapshot failed (retrying in the next period): {exc}[/red]")
        done += 1
        if runs is None or done < runs:
            time.sleep(max(0.0, period - (time.monotonic() - started)))


def _print_snapshot(report: Report, as_json: bool) -> None:
    m = report.manifest
    if as_json:
        print(json.dumps({
            "written": report.written, "id": m.id if m else None, "bytes": m.size if m else 0,
            "chunks": m.chunks if m else 0, "deltas": m.deltas if m else 0, "read": report.read,
            "base": report.base.id if report.base else None,
            "positions": {str(p): o for p, o in sorted(m.positions.items())} if m else {},
            "truncated": {str(p): o for p, o in sorted(report.truncated.items())}, "seconds": round(report.seconds, 3),
        }))
        return
    if m is None:
        console.print("no scoring deltas yet: nothing to snapshot")
        return
    if not report.written:
        console.print(f"snapshot {m.id} is current ({m.deltas:,} deltas): no new deltas since")
        return
    base = f"after snapshot {report.base.id}" if report.base else "from the deltas topic's start"
    console.print(
        f"snapshot {m.id}: {m.deltas:,} deltas, {m.size:,} bytes in {m.chunks} chunks; "
        f"{report.read:,} deltas read {base}, in {report.seconds:.1f} s"
    )
    if report.truncated:
        console.print("deltas before the previous snapshot deleted; partitions now start at " + ", ".join(
            f"{p}:{o}" for p, o in sorted(report.truncated.items())))


@shared_app.command("show")
def shared_show(bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None) -> None:
    """The latest snapshot (its chunks read and checked) and how much of the deltas topic lies
    after it: what a starting worker reads, and for how long those deltas have waited."""
    from stream_app.snapshot_lag import coverage_of
    from stream_app.snapshots import read_latest

    settings = _settings(bootstrap)
    try:
        latest = read_latest(settings)
        # The manifest just read, not read again: the figures below are of that snapshot.
        found = coverage_of(settings, latest.manifest if latest else None, latest.written_at if latest else None)
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(exit_code(exc)) from exc
    now = time.time()  # an operator's view: ages against the wall clock, as Prometheus' alert does
    waiting = (
        f"; the oldest of them was written {_age(now - found.oldest_behind_at)} ago" if found.oldest_behind_at is not None else ""
    )
    if latest is None:
        console.print(f"no snapshot: a starting worker reads all {found.kept:,} delta records{waiting}")
        return
    m = latest.manifest
    written = f", written {_age(now - found.written_at)} ago" if found.written_at is not None else ""
    console.print(
        f"snapshot {m.id}: {m.deltas:,} deltas, {m.size:,} bytes{written}; {found.kept:,} delta records kept, "
        f"{found.behind:,} after the snapshot (what a starting worker reads){waiting}"
    )
    if found.differs:
        console.print(
            "[yellow]taken with other scoring settings than these: " + ", ".join(found.differs)
            + " (a worker with these settings ignores it)[/yellow]"
        )


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
