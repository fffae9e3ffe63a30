"""``persona model ...``: the encoder and ranker registries (export, list, promote, rollback, trials).

Mounted by :mod:`stream_app.cli`. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:  # encoders imports onnxruntime, settings numpy and usearch: not at every `persona` start
    from encoders.registry import Registry
    from stream_app.settings import Settings

console = Console(stderr=True)


def _settings() -> Settings:
    from stream_app.settings import Settings

    return Settings()


model_app = typer.Typer(
    help="Model registries: encoders (export: trainer environment, .venv-train) and trained rankers.", no_args_is_help=True
)


def _model_registry(registry: Path | None) -> Path:
    """``--registry``, else ``PERSONA_MODEL_REGISTRY``, else the settings' default."""
    return registry or _settings().model_registry


@model_app.command("export")
def model_export(
    source: Annotated[Optional[Path], typer.Option(help="HF model folder (default: packaged all-MiniLM-L6-v2).")] = None,
    variant: Annotated[list[str], typer.Option(help="fp32|int8|fp16; repeat to export several.")] = ["fp32"],  # noqa: B006
    registry: Annotated[Optional[Path], typer.Option(help="Registry dir (default: $PERSONA_MODEL_REGISTRY).")] = None,
    texts: Annotated[int, typer.Option(help="Parity texts (every 17th review).")] = 600,
    publish: Annotated[bool, typer.Option(help="Point CURRENT at the new version.")] = True,
    gpu_graph: Annotated[bool, typer.Option(help="fp32: also carry an fp16 graph for CUDA workers.")] = True,
) -> None:
    """Export the encoder to ONNX, check parity against torch, fit the sentiment head, publish."""
    import logging
    import time

    try:
        from export import export_encoder, reviews
        from export.pipeline import MIN_COS
    except ImportError as exc:
        console.print(f"[red]{exc}[/red]: run this in the trainer environment (.venv-train/bin/persona model export)")
        raise typer.Exit(2) from exc
    from encoders.artifact import VARIANTS, read_manifest

    bad = [v for v in variant if v not in VARIANTS]
    if bad:
        raise typer.BadParameter(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    # onnxruntime's quantizer logs every tensor at INFO on the root logger: keep ours only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("persona").setLevel(logging.INFO)
    all_reviews = reviews.read_reviews()
    parity = reviews.parity_texts(all_reviews, texts)
    pairs = reviews.train_pairs(all_reviews)
    root = _model_registry(registry)
    for v in variant:
        started = time.perf_counter()
        path = export_encoder(source, v, root, parity_texts=parity, train_pairs=pairs, publish=publish, gpu_graph=gpu_graph)  # type: ignore[arg-type]
        p = read_manifest(path).parity
        figures = (
            f"min cos {p.min_cos:.8f} (1-min {1 - p.min_cos:.1e}), mean cos {p.mean_cos:.8f} "
            f"over {p.n} review texts (floor {MIN_COS[v]})"
            if p.checked and p.min_cos is not None and p.mean_cos is not None
            else p.note
        )
        console.print(f"{v}: parity {figures}; exported in {time.perf_counter() - started:.1f} s")
        g = read_manifest(path).gpu_parity
        if g is not None and g.min_cos is not None:
            console.print(f"{v}: fp16 graph for CUDA, parity min cos {g.min_cos:.6f} over {g.n} texts (run on CPU)")
        print(path)


def _registries(kind: str | None) -> list[tuple[str, Path]]:
    settings = _settings()
    both = [("ranker", settings.ranker_registry), ("encoder", settings.model_registry)]
    if kind is not None and kind not in dict(both):
        raise typer.BadParameter(f"--kind is ranker or encoder, got {kind!r}")
    return [(k, p) for k, p in both if kind is None or k == kind]


@model_app.command("list")
def model_list(
    kind: Annotated[Optional[str], typer.Option(help="ranker or encoder (default: both).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every version in the registries: status (serving, published before, rejected, ...), metrics, training window."""
    from stream_app.model_ops import list_versions

    rows = [row for k, root in _registries(kind) for row in list_versions(k, root)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("kind", "version", "status", "quality", "trained on", "created")
    for r in rows:
        table.add_row(r["kind"], r["version"], r["status"], r["quality"], r["window"], r["created_at"])
    import sys

    Console().print(table) if sys.stdout.isatty() else Console(width=200).print(table)


def _change(kind: str, action: str, change: Callable[[Registry], str], done: str, announce: bool) -> None:
    """Apply one registry change (a ModelError is printed, exit 1), say what happened, and
    announce it on the control topic when asked (workers also poll)."""
    from encoders.registry import Registry
    from state.errors import ModelError

    ((_, root),) = _registries(kind)
    try:
        version = change(Registry(root))
    except ModelError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(done.format(version=version, root=root))
    if announce:
        from stream_app.control import announce as send

        send(_settings(), kind, action, version)


ANNOUNCE = typer.Option(help="Tell the workers on the control topic (they also poll).")


@model_app.command("promote")
def model_promote(
    version: Annotated[str, typer.Argument(help="A complete version (see `persona model list`).")],
    kind: Annotated[str, typer.Option(help="ranker or encoder.")] = "ranker",
    announce: Annotated[bool, ANNOUNCE] = True,
) -> None:
    """Serve VERSION: point CURRENT at it. Every worker swaps to it without a restart (at once when announced)."""
    _change(kind, "publish", lambda r: r.publish(version).name, f"{kind} {{version}} is CURRENT in {{root}}", announce)


@model_app.command("rollback")
def model_rollback(
    kind: Annotated[str, typer.Option(help="ranker or encoder.")] = "ranker",
    announce: Annotated[bool, ANNOUNCE] = True,
) -> None:
    """Serve the version published before the current one again (every worker, no restart)."""
    _change(kind, "rollback", lambda r: r.rollback(), f"{kind} rolled back to {{version}} in {{root}}", announce)


@model_app.command("shadow")
def model_shadow(
    version: Annotated[Optional[str], typer.Argument(help="A complete ranker version (none with --stop).")] = None,
    share: Annotated[
        Optional[float], typer.Option(min=0.0, max=1.0, help="Serve it to this share of users (a stable hash of the user id) "
                                      "instead of running it in shadow.")
    ] = None,
    stop: Annotated[bool, typer.Option("--stop", help="End the trial: production only.")] = False,
    announce: Annotated[bool, ANNOUNCE] = True,
) -> None:
    """Try a ranker beside production: in shadow (ranked and scored by the live hit rate, never shown) or on an A/B share."""
    if stop:

        def clear(r: Registry) -> str:
            r.clear_candidate()
            return ""

        _change("ranker", "stop", clear, "ranker trial stopped: production only", announce)
        return
    if version is None:
        raise typer.BadParameter("name a VERSION, or pass --stop")
    mode = "shadow" if share is None else "share"

    def trial(r: Registry) -> str:
        r.set_candidate(version, mode, share or 0.0)
        return version

    shown = "in shadow" if share is None else f"serving {share:.0%} of users"
    _change("ranker", mode, trial, f"ranker {{version}}: {shown}", announce)
