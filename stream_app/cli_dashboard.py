"""``persona dashboard ...``: the Grafana dashboard drawn from a Prometheus server, without Grafana.

Mounted by :mod:`stream_app.cli` (``app.add_typer(dashboard_app, name="dashboard")``).
matplotlib is imported only when a PNG is drawn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from stream_app.dashboard import DEFAULT_DASHBOARD

console = Console(stderr=True)

dashboard_app = typer.Typer(help="The Grafana dashboard (deploy/grafana), drawn from Prometheus.", no_args_is_help=True)


@dashboard_app.callback()
def _dashboard() -> None:
    """The Grafana dashboard (deploy/grafana), drawn from Prometheus."""
    # A callback keeps `snapshot` a sub-command even while it is the only one: without it
    # typer would make a one-command app that command itself.


def _time_range(minutes: float, start: float | None, end: float | None) -> tuple[float, float]:
    """``--end`` or now; ``--start`` or the ``--minutes`` before the end."""
    if minutes <= 0:
        raise typer.BadParameter(f"must be positive, got {minutes:g}", param_hint="--minutes")
    if end is None:
        end = time.time()
    if start is None:
        start = end - minutes * 60
    if end <= start:
        raise typer.BadParameter(f"--end ({end:.0f}) must come after --start ({start:.0f})", param_hint="--start/--end")
    return start, end


@dashboard_app.command("snapshot")
def snapshot_cmd(
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL.")] = "http://127.0.0.1:9090",
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("docs/dashboard.png"),
    dashboard: Annotated[Path, typer.Option(help="Grafana dashboard JSON whose panels to draw.")] = DEFAULT_DASHBOARD,
    minutes: Annotated[float, typer.Option(help="Time range: the N minutes before --end (when no --start).")] = 15.0,
    start: Annotated[Optional[float], typer.Option(help="Range start, epoch seconds (instead of --minutes).")] = None,
    end: Annotated[Optional[float], typer.Option(help="Range end, epoch seconds (default: now).")] = None,
    step: Annotated[float, typer.Option(help="Seconds between points (the scrape interval is 5 s).")] = 5.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each query.")] = 10.0,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Draw even when a panel has no data.")] = False,
) -> None:
    """Query every panel's PromQL over a time range and draw the dashboard to one PNG.

    Prints one line per panel: title, series, points (points that can be drawn). A panel
    without drawable data fails the command (exit 1) before anything is written, so a
    half-empty picture never replaces a good one, unless --allow-empty.
    """
    from state.errors import PersonaError
    from stream_app.dashboard import fetch_panels, load_dashboard, panel_queries
    from stream_app.dashboard_png import render_png

    t0, t1 = _time_range(minutes, start, end)
    if step <= 0:
        raise typer.BadParameter(f"must be positive, got {step:g}", param_hint="--step")
    try:
        panels = panel_queries(dashboard)
        data = fetch_panels(prometheus, panels, start=t0, end=t1, step=step, timeout=timeout)
        print("panel\tseries\tpoints\tfinite_points")
        for d in data:
            print(f"{d.panel.title}\t{d.series}\t{d.points}\t{d.finite_points}")
        empty = [d.panel.title for d in data if not d.has_data]
        if empty and not allow_empty:
            console.print(f"[red]no data in {len(empty)} panel(s): {', '.join(empty)}[/red] (nothing written; --allow-empty draws anyway)")
            raise typer.Exit(1)
        title = str(load_dashboard(dashboard).get("title") or "Persona")
        width, height = render_png(data, out, prometheus=prometheus, start=t0, end=t1, step=step, title=title, dashboard=dashboard)
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if empty:
        console.print(f"[yellow]drawn with {len(empty)} empty panel(s): {', '.join(empty)}[/yellow]")
    console.print(f"wrote {out} ({width}x{height} px, {len(data)} panels)")
