"""The Grafana dashboard, read without Grafana: list its panels and queries and ask a
Prometheus server for each query's range (:mod:`stream_app.dashboard_png` draws them).

The dashboard JSON (deploy/grafana/dashboards/persona.json) is the single source of the
queries: Grafana shows them live, and ``persona dashboard snapshot`` sends the very same
strings to Prometheus's HTTP API, which is why they use fixed windows (``[1m]``), never
Grafana-only variables such as ``$__rate_interval``.

No Faust import and no matplotlib: this runs in any environment.
"""

from __future__ import annotations

import json
import math
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state.errors import PersonaError
from state.paths import REPO_ROOT

DEFAULT_DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "persona.json"

#: Prometheus refuses a range query with more points per series than this.
MAX_POINTS = 11_000


class DashboardError(PersonaError):
    """The dashboard JSON cannot be read as a dashboard, or a PNG cannot be drawn (no matplotlib)."""


class PrometheusError(PersonaError):
    """Prometheus cannot be reached, or refused or botched a query. The message names the
    server, the query and, when Prometheus said why, its own error text."""

    def __init__(self, message: str, *, url: str, expr: str | None = None, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.expr = expr
        self.status = status
        #: Prometheus's own ``error`` text, when it sent one.
        self.error = error


@dataclass(frozen=True)
class GridPos:
    """Grafana's panel placement: a 24-column grid, ``h`` in grid rows."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: its queries with their legend formats (same length)."""

    title: str
    kind: str  # the Grafana panel type: timeseries, stat or state-timeline
    unit: str  # the Grafana unit id (s, ops, short, percentunit, none)
    axis_label: str  # what the y axis says: s, records, /s, ratio
    exprs: tuple[str, ...]
    legends: tuple[str, ...]
    grid: GridPos
    #: ``[(value, colour)]`` from the panel's absolute thresholds; the first value is -inf.
    thresholds: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and ``(epoch seconds, value)`` points."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class QueryResult:
    expr: str
    legend: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class PanelData:
    """A panel with what Prometheus answered for each of its queries."""

    panel: Panel
    results: tuple[QueryResult, ...]

    @property
    def series(self) -> int:
        return sum(len(r.series) for r in self.results)

    @property
    def points(self) -> int:
        """Points as Prometheus sent them, NaN included."""
        return sum(len(s.points) for r in self.results for s in r.series)

    @property
    def finite_points(self) -> int:
        """Points that can be drawn: a quantile over an idle histogram is NaN, which draws nothing."""
        return sum(1 for r in self.results for s in r.series for _, v in s.points if math.isfinite(v))

    @property
    def has_data(self) -> bool:
        return self.finite_points > 0


# -- the dashboard JSON -------------------------------------------------------------------

#: The y-axis label of a Grafana unit when the panel does not set ``custom.axisLabel``.
UNIT_LABELS = {"s": "s", "ops": "/s", "reqps": "/s", "percentunit": "ratio", "short": "", "none": "", "bytes": "bytes"}


def load_dashboard(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DashboardError(f"cannot read the dashboard {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DashboardError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("panels"), list):
        raise DashboardError(f"{path} is not a Grafana dashboard: no 'panels' list")
    return doc


def _flat_panels(panels: Sequence[Any]) -> list[dict[str, Any]]:
    """Panels in order; a collapsed row carries its panels inside it."""
    out: list[dict[str, Any]] = []
    for p in panels:
        if not isinstance(p, dict):
            continue
        if p.get("type") == "row":
            out.extend(_flat_panels(p.get("panels") or []))
        else:
            out.append(p)
    return out


def _thresholds(defaults: Mapping[str, Any]) -> tuple[tuple[float, str], ...]:
    steps = (defaults.get("thresholds") or {}).get("steps") or []
    out: list[tuple[float, str]] = []
    for step in steps:
        value = step.get("value")
        out.append((-math.inf if value is None else float(value), str(step.get("color", "green"))))
    return tuple(out)


def panel_queries(path: Path = DEFAULT_DASHBOARD) -> list[Panel]:
    """Every panel of the dashboard (rows unfolded) with its queries, in the JSON's order."""
    doc = load_dashboard(path)
    panels: list[Panel] = []
    bottom = 0
    for i, raw in enumerate(_flat_panels(doc["panels"])):
        title = str(raw.get("title") or f"panel {raw.get('id', i + 1)}")
        exprs: list[str] = []
        legends: list[str] = []
        for target in raw.get("targets") or []:
            if target.get("hide"):
                continue
            expr = str(target.get("expr") or "").strip()
            if not expr:
                raise DashboardError(f"{path}: panel {title!r} has a target without a PromQL expr")
            exprs.append(expr)
            legends.append(str(target.get("legendFormat") or ""))
        defaults = (raw.get("fieldConfig") or {}).get("defaults") or {}
        unit = str(defaults.get("unit") or "none")
        custom = defaults.get("custom") or {}
        axis_label = str(custom["axisLabel"]) if custom.get("axisLabel") else UNIT_LABELS.get(unit, unit)
        gp = raw.get("gridPos") or {}
        try:
            grid = GridPos(int(gp["x"]), int(gp["y"]), int(gp["w"]), int(gp["h"]))
        except (KeyError, TypeError, ValueError):
            # Grafana places a panel without gridPos itself; below the others is what it does.
            grid = GridPos(0, bottom, 12, 8)
        bottom = max(bottom, grid.y + grid.h)
        panels.append(
            Panel(
                title=title,
                kind=str(raw.get("type") or "timeseries"),
                unit=unit,
                axis_label=axis_label,
                exprs=tuple(exprs),
                legends=tuple(legends),
                grid=grid,
                thresholds=_thresholds(defaults),
            )
        )
    return panels


_LEGEND_VAR = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def format_legend(fmt: str, labels: Mapping[str, str], expr: str = "") -> str:
    """Grafana's legendFormat: ``{{label}}`` becomes the series' label value (empty when the
    series has no such label). Without a format, Grafana's default: ``name{k="v", ...}``, or
    the query itself for a series without labels (an aggregate)."""
    if fmt and fmt != "__auto":
        return _LEGEND_VAR.sub(lambda m: labels.get(m.group(1), ""), fmt)
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    if not name and not rest:
        return expr
    return f"{name}{{{rest}}}" if rest else name


# -- Prometheus's HTTP API ----------------------------------------------------------------


def base_url(prometheus: str) -> str:
    parsed = urllib.parse.urlsplit(prometheus)
    # urllib would also open file:// and ftp:// URLs; a Prometheus server is only ever HTTP(S).
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PrometheusError(f"not a Prometheus URL: {prometheus!r} (expected http://host:port)", url=prometheus)
    return prometheus.rstrip("/")


def check_range(start: float, end: float, step: float) -> None:
    if not (math.isfinite(start) and math.isfinite(end) and math.isfinite(step)):
        raise DashboardError(f"start, end and step must be finite numbers, got {start}, {end}, {step}")
    if step <= 0:
        raise DashboardError(f"the step must be positive, got {step}")
    if end <= start:
        raise DashboardError(f"the end ({end}) must come after the start ({start})")
    if (end - start) / step > MAX_POINTS:
        raise DashboardError(f"{(end - start) / step:.0f} points per series is more than Prometheus allows ({MAX_POINTS}): raise --step")


def query_range(prometheus: str, expr: str, *, start: float, end: float, step: float, timeout: float = 10.0) -> list[Series]:
    """``/api/v1/query_range``: the matrix Prometheus answers for ``expr``."""
    check_range(start, end, step)
    base = base_url(prometheus)
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
    url = f"{base}/api/v1/query_range?{params}"
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "persona-dashboard"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        # Prometheus answers a bad query with 400 (or 422, 503) and a JSON body that says why.
        raw = exc.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("error"):
            error = str(doc["error"])
            kind = str(doc.get("errorType") or "error")
            raise PrometheusError(
                f"Prometheus at {base} refused {expr!r} (HTTP {exc.code}, {kind}): {error}",
                url=base,
                expr=expr,
                status=exc.code,
                error=error,
            ) from exc
        text = raw.decode("utf-8", "replace").strip()[:200]
        raise PrometheusError(
            f"Prometheus at {base} answered HTTP {exc.code} to {expr!r}: {text or exc.reason}", url=base, expr=expr, status=exc.code
        ) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise PrometheusError(f"Prometheus at {base} did not answer within {timeout:g} s", url=base, expr=expr) from exc
        raise PrometheusError(f"cannot reach Prometheus at {base}: {reason}", url=base, expr=expr) from exc
    except (TimeoutError, socket.timeout) as exc:  # a timeout while reading the body
        raise PrometheusError(f"Prometheus at {base} did not answer within {timeout:g} s", url=base, expr=expr) from exc
    except OSError as exc:
        raise PrometheusError(f"cannot reach Prometheus at {base}: {exc}", url=base, expr=expr) from exc
    return _parse_matrix(body, base, expr)


def _parse_matrix(body: bytes, base: str, expr: str) -> list[Series]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise PrometheusError(f"{base} did not answer JSON to {expr!r}: is it a Prometheus server?", url=base, expr=expr) from exc
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = str(doc.get("error", "")) if isinstance(doc, dict) else ""
        raise PrometheusError(
            f"Prometheus at {base} failed {expr!r}: {error or 'no success status'}", url=base, expr=expr, error=error or None
        )
    data = doc.get("data") or {}
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise PrometheusError(
            f"Prometheus at {base} answered {expr!r} with a {data.get('resultType')!r}, not a matrix", url=base, expr=expr
        )
    out: list[Series] = []
    try:
        for item in data["result"]:
            labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
            # Values come as strings; "NaN" and "+Inf" are what float() reads them as.
            points = tuple((float(t), float(v)) for t, v in item.get("values") or [])
            out.append(Series(labels=labels, points=points))
    except (AttributeError, TypeError, ValueError) as exc:
        raise PrometheusError(f"Prometheus at {base} sent a malformed matrix for {expr!r}: {exc}", url=base, expr=expr) from exc
    return out


def fetch_panels(
    prometheus: str, panels: Sequence[Panel], *, start: float, end: float, step: float, timeout: float = 10.0
) -> list[PanelData]:
    """Every query of every panel over ``[start, end]``."""
    check_range(start, end, step)
    out: list[PanelData] = []
    for panel in panels:
        results = tuple(
            QueryResult(expr, legend, tuple(query_range(prometheus, expr, start=start, end=end, step=step, timeout=timeout)))
            for expr, legend in zip(panel.exprs, panel.legends, strict=True)
        )
        out.append(PanelData(panel, results))
    return out
