"""``persona kafka up|down|status``: the local broker, mounted into the ``persona`` command
through the ``persona.commands`` entry-point group (pyproject.toml), like the benchmarks, so
that ``stream_app`` never imports ``deploy``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(help="A local Apache Kafka broker (KRaft, no Docker).", no_args_is_help=True)
console = Console(stderr=True)


@app.command("up")
def kafka_up(
    port: Annotated[int, typer.Option(help="Broker port on 127.0.0.1.")] = 9092,
    data_dir: Annotated[Optional[Path], typer.Option(help="Broker data dir.")] = None,
) -> None:
    """Fetch the pinned Kafka jars (once) and start a single-node broker; prints the bootstrap."""
    from deploy.kafka import launcher

    handle = launcher.start(port=port, data_dir=data_dir)
    console.print(f"Kafka {launcher.KAFKA_VERSION} up (pid {handle.pid}), logs: {handle.log_file}")
    print(handle.bootstrap)


@app.command("down")
def kafka_down(data_dir: Annotated[Optional[Path], typer.Option(help="Broker data dir.")] = None) -> None:
    """Stop the local broker."""
    from deploy.kafka import launcher

    stopped = launcher.stop(data_dir or launcher.default_data_dir())
    console.print("stopped" if stopped else "no broker was running")


@app.command("status")
def kafka_status(data_dir: Annotated[Optional[Path], typer.Option(help="Broker data dir.")] = None) -> None:
    """Say whether the local broker runs; exit 1 if not."""
    from deploy.kafka import launcher

    handle = launcher.status(data_dir or launcher.default_data_dir())
    if handle is None:
        console.print("not running")
        raise typer.Exit(1)
    print(f"running pid={handle.pid} bootstrap={handle.bootstrap}")
