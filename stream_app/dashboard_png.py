"""``persona dashboard snapshot``'s picture: every panel of the Grafana dashboard drawn to one
PNG with matplotlib, from the series :mod:`stream_app.dashboard` fetched from Prometheus.

Split from :mod:`stream_app.dashboard` (queries and Prometheus) so that each stays readable;
this module imports that one, never the other way round. matplotlib is imported only when a
PNG is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from state.paths import REPO_ROOT
from stream_app.dashboard import (
    DEFAULT_DASHBOARD,
    DashboardError,
    Panel,
    PanelData,
    Series,
    base_url,
    check_range,
    fetch_panels,
    format_legend,
    load_dashboard,
    panel_queries,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Pixels of one Grafana grid column (24 across) and of one grid row.
COLUMN_PX = 72
ROW_PX = 32
HEADER_PX = 56
FOOTER_PX = 40
MARGIN_PX = 8
DPI = 100

# Grafana's dark theme, so the picture reads as the dashboard it stands for.
_BG = "#111217"
_PANEL_BG = "#181b1f"
_BORDER = "#2c3235"
_TEXT = "#ccccdc"
_MUTED = "#8e8e9e"
_GRID = "#2c3235"
_PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d", "#fade2a")
#: x, y, width, height in pixels from the top left, as Grafana's grid counts.
Box = tuple[float, float, float, float]
_NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a", "blue": "#5794f2", "purple": "#b877d9"}


def canvas_size_px(panels: Sequence[Panel]) -> tuple[int, int]:
    """Width and height of the PNG :func:`render_png` draws for these panels."""
    rows = max((p.grid.y + p.grid.h for p in panels), default=8)
    return 24 * COLUMN_PX + 2 * MARGIN_PX, HEADER_PX + rows * ROW_PX + FOOTER_PX


def _format_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit == "s":
        a = abs(value)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if a < 1:
            return f"{value * 1e3:.3g} ms"
        if a < 60:
            return f"{value:.3g} s"
        return f"{value / 60:.3g} min"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _colour(name: str) -> str:
    return _NAMED.get(name, name)


def _threshold_colour(panel: Panel, value: float) -> str:
    colour = _PALETTE[0]
    for at, name in panel.thresholds:
        if value >= at:
            colour = _colour(name)
    return colour


def _import_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise DashboardError(
            "drawing the dashboard needs matplotlib, which is not installed: pip install matplotlib "
            "(or the project's test extra: pip install -e '.[test]')"
        ) from exc


def _mdates() -> Any:
    """matplotlib.dates, typed as Any: the module has no annotations, so mypy --strict
    would refuse every call into it."""
    from matplotlib import dates

    return dates


def _epoch_to_num(ts: Sequence[float]) -> list[float]:
    # date2num rather than seconds / 86400: matplotlib's date epoch is a setting (date.epoch).
    return [float(n) for n in _mdates().date2num([datetime.fromtimestamp(t, tz=UTC) for t in ts])]


def _broken(points: Sequence[tuple[float, float]], step: float) -> tuple[list[float], list[float]]:
    """x and y with a NaN where Prometheus left steps out, so the line breaks there (Grafana
    does not join across missing points either); inf drawn as a gap, too."""
    xs: list[float] = []
    ys: list[float] = []
    prev: float | None = None
    for t, v in points:
        if prev is not None and t - prev > 1.5 * step:
            xs.append((prev + t) / 2)
            ys.append(math.nan)
        xs.append(t)
        ys.append(v if math.isfinite(v) else math.nan)
        prev = t
    return xs, ys


def _labelled(data: PanelData) -> list[tuple[str, Series]]:
    return [(format_legend(r.legend, s.labels, r.expr), s) for r in data.results for s in r.series]


class _Canvas:
    """Pixel rectangles (top-left origin, like Grafana's grid) to figure fractions."""

    def __init__(self, fig: Figure, width: int, height: int) -> None:
        self.fig, self.width, self.height = fig, width, height

    def rect(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        return x / self.width, 1 - (y + h) / self.height, w / self.width, h / self.height

    def point(self, x: float, y: float) -> tuple[float, float]:
        return x / self.width, 1 - y / self.height


def _style_axes(ax: Axes) -> None:
    ax.set_facecolor(_PANEL_BG)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=_MUTED, labelsize=7, length=0, pad=3)
    ax.grid(True, color=_GRID, linewidth=0.6)
    ax.set_axisbelow(True)


def _time_axis(ax: Axes, start: float, end: float, width_px: float) -> None:
    mdates = _mdates()
    lo, hi = _epoch_to_num([start, end])
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=2, maxticks=max(3, int(width_px // 90)), tz=UTC))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))


def _legend(canvas: _Canvas, labels: Sequence[str], colours: Sequence[str], box: Box, rows: int) -> None:
    from matplotlib.lines import Line2D

    x, y, w, _ = box
    ncol = _legend_columns(labels, w)
    shown = list(labels)
    shown_colours = list(colours)
    if len(shown) > ncol * rows:
        keep = ncol * rows - 1
        shown = shown[:keep] + [f"+{len(labels) - keep} more"]
        shown_colours = shown_colours[:keep] + [_PANEL_BG]
    handles = [Line2D([], [], color=c, linewidth=3) for c in shown_colours]
    canvas.fig.legend(
        handles,
        shown,
        loc="upper left",
        bbox_to_anchor=canvas.point(x, y),
        bbox_transform=canvas.fig.transFigure,
        ncols=ncol,
        fontsize=7,
        frameon=False,
        labelcolor=_TEXT,
        handlelength=1.2,
        handletextpad=0.4,
        columnspacing=1.2,
        borderaxespad=0,
        borderpad=0,
    )


def _legend_columns(labels: Sequence[str], width_px: float) -> int:
    longest = max((len(s) for s in labels), default=1)
    per = longest * 4.6 + 34  # DejaVu Sans at 7 pt is ~4.6 px a character, plus the swatch and the gap
    return max(1, min(len(labels), int(width_px // per)))


def _legend_rows(labels: Sequence[str], width_px: float) -> int:
    ncol = _legend_columns(labels, width_px)
    return min(3, math.ceil(len(labels) / ncol)) if labels else 0


def _no_data(canvas: _Canvas, x: float, y: float, w: float, h: float) -> None:
    cx, cy = canvas.point(x + w / 2, y + h / 2)
    canvas.fig.text(cx, cy, "No data", color=_MUTED, fontsize=10, ha="center", va="center")


def _draw_timeseries(canvas: _Canvas, data: PanelData, box: Box, start: float, end: float, step: float) -> None:
    from matplotlib.ticker import FuncFormatter

    x, y, w, h = box
    panel = data.panel
    series = _labelled(data)
    labels = [name for name, _ in series]
    colours = [_PALETTE[i % len(_PALETTE)] for i in range(len(series))]
    legend_rows = _legend_rows(labels, w - 16)
    legend_h = legend_rows * 13 + (6 if legend_rows else 0)
    left = 58 if panel.axis_label else 46
    ax = canvas.fig.add_axes(canvas.rect(x + left, y + 8, w - left - 14, h - 8 - 22 - legend_h))
    _style_axes(ax)
    _time_axis(ax, start, end, w - left - 14)
    unit = panel.unit
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _format_value(v, unit)))
    if panel.axis_label:
        ax.set_ylabel(panel.axis_label, color=_MUTED, fontsize=7, labelpad=2)
    finite: list[float] = []
    for (_, s), colour in zip(series, colours, strict=True):
        ts, vs = _broken(s.points, step)
        if not any(math.isfinite(v) for v in vs):
            continue
        xs = _epoch_to_num(ts)
        ax.plot(xs, vs, color=colour, linewidth=1.2)
        ax.fill_between(xs, vs, 0, color=colour, alpha=0.08, linewidth=0)
        finite.extend(v for v in vs if math.isfinite(v))
    if finite:
        if min(finite) >= 0:
            # Rates, lags and latencies: the axis starts at zero (the JSON's min: 0), not at autoscale's margin below it.
            ax.set_ylim(bottom=0)
    else:
        ax.set_yticks([])
        _no_data(canvas, x, y, w, h)
    if labels:
        _legend(canvas, labels, colours, (x + 10, y + h - legend_h - 2, w - 16, legend_h), legend_rows)


def _draw_stat(canvas: _Canvas, data: PanelData, box: Box, start: float, end: float, step: float) -> None:
    x, y, w, h = box
    panel = data.panel
    series = [(name, s) for name, s in _labelled(data) if any(math.isfinite(v) for _, v in s.points)][:3]
    if not series:
        _no_data(canvas, x, y, w, h)
        return
    slot = w / len(series)
    for i, (name, s) in enumerate(series):
        last = next(v for _, v in reversed(s.points) if math.isfinite(v))  # Grafana's lastNotNull
        colour = _threshold_colour(panel, last)
        # The sparkline under the number (graphMode: area).
        ax = canvas.fig.add_axes(canvas.rect(x + i * slot + 6, y + h * 0.55, slot - 12, h * 0.42))
        ax.set_axis_off()
        _time_axis(ax, start, end, slot)
        ts, vs = _broken(s.points, step)
        xs = _epoch_to_num(ts)
        ax.plot(xs, vs, color=colour, linewidth=1.2)
        ax.fill_between(xs, vs, 0, color=colour, alpha=0.18, linewidth=0)
        finite = [v for v in vs if math.isfinite(v)]
        lo, hi = min(finite + [0.0]), max(finite + [0.0])
        ax.set_ylim(lo, hi + (hi - lo) * 0.1 if hi > lo else lo + 1)
        cx, cy = canvas.point(x + (i + 0.5) * slot, y + h * 0.42)
        canvas.fig.text(cx, cy, _format_value(last, panel.unit), color=colour, fontsize=30, weight="bold", ha="center", va="center")
        if len(series) > 1 or name != panel.title:
            lx, ly = canvas.point(x + (i + 0.5) * slot, y + h * 0.16)
            canvas.fig.text(lx, ly, name, color=_MUTED, fontsize=8, ha="center", va="center")


def _draw_state_timeline(canvas: _Canvas, data: PanelData, box: Box, start: float, end: float, step: float) -> None:
    x, y, w, h = box
    series = _labelled(data)
    if not any(math.isfinite(v) and v != 0 for _, s in series for _, v in s.points):
        _no_data(canvas, x, y, w, h)
        return
    longest = max(len(name) for name, _ in series)
    left = min(w * 0.35, longest * 5.4 + 18)
    ax = canvas.fig.add_axes(canvas.rect(x + left, y + 6, w - left - 14, h - 6 - 22))
    _style_axes(ax)
    ax.grid(True, axis="x", color=_GRID, linewidth=0.6)
    ax.grid(False, axis="y")
    _time_axis(ax, start, end, w - left - 14)
    day = 86400.0
    rows = list(reversed(series))  # first series on top, as Grafana lists them
    for row, (_, s) in enumerate(rows):
        colour = _PALETTE[(len(rows) - 1 - row) % len(_PALETTE)]
        segments: list[tuple[float, float]] = []
        seg: float | None = None
        last_on = 0.0
        for t, v in s.points:
            on = math.isfinite(v) and v != 0
            # A version stops being served where its series stops (Prometheus leaves the steps out).
            if seg is not None and (not on or t - last_on > 1.5 * step):
                segments.append((seg, last_on + step))
                seg = None
            if on:
                seg = t if seg is None else seg
                last_on = t
        if seg is not None:
            segments.append((seg, last_on + step))
        spans = [(_epoch_to_num([a])[0], (min(b, end) - a) / day) for a, b in segments]
        ax.broken_barh(spans, (row - 0.38, 0.76), facecolors=colour, alpha=0.75)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], color=_TEXT, fontsize=7)


def _panel_card(canvas: _Canvas, panel: Panel, box: Box) -> None:
    from matplotlib.patches import FancyBboxPatch

    x, y, w, h = box
    fx, fy, fw, fh = canvas.rect(x, y, w, h)
    canvas.fig.patches.append(
        FancyBboxPatch(
            (fx, fy),
            fw,
            fh,
            boxstyle="round,pad=0,rounding_size=0.002",
            transform=canvas.fig.transFigure,
            facecolor=_PANEL_BG,
            edgecolor=_BORDER,
            linewidth=0.8,
            zorder=-1,
        )
    )
    tx, ty = canvas.point(x + 10, y + 14)
    canvas.fig.text(tx, ty, panel.title, color=_TEXT, fontsize=9, weight="bold", ha="left", va="center")


def _shown_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def render_png(
    data: Sequence[PanelData],
    out: Path,
    *,
    prometheus: str,
    start: float,
    end: float,
    step: float,
    title: str = "Persona",
    provenance: str = "real Prometheus data",
    dashboard: Path | None = None,
) -> tuple[int, int]:
    """Draw every panel, laid out by its Grafana gridPos, into one PNG; returns its pixel size.

    ``provenance`` is the footer's account of where the numbers came from: a snapshot of a
    live system says real Prometheus data, a test against a fake server says so instead.
    """
    _import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_range(start, end, step)
    width, height = canvas_size_px([d.panel for d in data])
    # A quarter pixel over: Agg truncates width x dpi, and 1744 / 100 x 100 can come out as 1743.99...
    fig = Figure(figsize=((width + 0.25) / DPI, (height + 0.25) / DPI), dpi=DPI, facecolor=_BG)
    FigureCanvasAgg(fig)
    canvas = _Canvas(fig, width, height)

    hx, hy = canvas.point(MARGIN_PX + 4, HEADER_PX / 2)
    fig.text(hx, hy, title, color=_TEXT, fontsize=16, weight="bold", ha="left", va="center")
    rx, ry = canvas.point(width - MARGIN_PX - 4, HEADER_PX / 2)
    minutes = (end - start) / 60
    shown_end = _stamp(end)[11:] if _stamp(end)[:10] == _stamp(start)[:10] else _stamp(end)
    span = f"{_stamp(start)} → {shown_end} UTC  ({minutes:.3g} min, step {step:g} s)"
    fig.text(rx, ry, span, color=_MUTED, fontsize=9, ha="right", va="center")

    draw = {"stat": _draw_stat, "state-timeline": _draw_state_timeline}
    for d in data:
        g = d.panel.grid
        box = (MARGIN_PX + g.x * COLUMN_PX + 3, HEADER_PX + g.y * ROW_PX + 3, g.w * COLUMN_PX - 6, g.h * ROW_PX - 6)
        _panel_card(canvas, d.panel, box)
        inner = (box[0], box[1] + 24, box[2], box[3] - 24)
        draw.get(d.panel.kind, _draw_timeseries)(canvas, d, inner, start, end, step)

    fx, fy = canvas.point(MARGIN_PX + 4, height - FOOTER_PX / 2)
    queries = f" · the queries of {_shown_path(dashboard)}" if dashboard is not None else ""
    fig.text(
        fx,
        fy,
        f"Rendered from {provenance}: {base_url(prometheus)}/api/v1/query_range, {_stamp(start)} → {_stamp(end)} UTC, "
        f"step {step:g} s{queries} · drawn {_stamp(datetime.now(tz=UTC).timestamp())} UTC",
        color=_MUTED,
        fontsize=8,
        ha="left",
        va="center",
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, facecolor=_BG)
    return width, height


def snapshot(
    prometheus: str,
    out: Path,
    *,
    start: float,
    end: float,
    step: float = 5.0,
    dashboard: Path = DEFAULT_DASHBOARD,
    timeout: float = 10.0,
    provenance: str = "real Prometheus data",
) -> list[PanelData]:
    """Query every panel of ``dashboard`` and draw the PNG; the per-panel answers, so a caller
    can check that every panel had data (:attr:`PanelData.has_data`)."""
    _import_matplotlib()  # before the queries: a missing matplotlib should not cost a minute of them
    panels = panel_queries(dashboard)
    title = str(load_dashboard(dashboard).get("title") or "Persona")
    data = fetch_panels(prometheus, panels, start=start, end=end, step=step, timeout=timeout)
    render_png(data, out, prometheus=prometheus, start=start, end=end, step=step, title=title, provenance=provenance, dashboard=dashboard)
    return data
