"""``persona bench ...``: mounted into the ``persona`` command through the
``persona.commands`` entry-point group (see pyproject.toml), so that ``stream_app`` never
imports ``bench``. Heavy imports happen inside the commands, as in ``stream_app.cli``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Benchmarks: ratios against baselines measured in the same run.", no_args_is_help=True)

_REGISTRY_HELP = "Registry dir (default $PERSONA_MODEL_REGISTRY or <repo>/models/encoder)."


def _data_dir() -> Path:
    from stream_app.settings import Settings

    return Settings().data_dir


def _model_registry(registry: Path | None) -> Path:
    from stream_app.settings import Settings

    return registry or Settings().model_registry


@app.command("stream")
def bench_stream(
    bootstrap: Annotated[Optional[str], typer.Option(help="Use this broker (default: start a local one).")] = None,
    events: Annotated[Optional[int], typer.Option(help="Behaviour events (default: all 100,000 MovieLens ratings).")] = None,
    profiles: Annotated[int, typer.Option(help="New users in the footprint run (each event a first; 0: skip).")] = 100_000,
    ranking: Annotated[bool, typer.Option(help="Also run the in-process `bench ranking` measures (needs MovieLens).")] = True,
    rankings: Annotated[int, typer.Option(help="In-process rankings timed per ranker (0: skip).")] = 2_000,
    eval_events: Annotated[int, typer.Option(help="MovieLens events the in-process evaluator replays (0: skip).")] = 30_000,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
    against: Annotated[
        Optional[str], typer.Option(help="Also run this git revision's worker on the same events (a change's before/after).")
    ] = None,
    against_set: Annotated[
        Optional[list[str]],
        typer.Option(help="name=value for the compared worker (repeatable): a changed default's old value; alone: this tree."),
    ] = None,
    pairs: Annotated[
        int, typer.Option(min=1, help="Runs of each side with --against/--against-set, alternating which goes first; the median ratio.")
    ] = 1,
    batch: Annotated[
        int, typer.Option(min=0, help="Also the same events as batch records of up to N of a user's events (0 or 1: skip).")
    ] = 16,
    against_batched: Annotated[
        bool,
        typer.Option(help="Compare with --against/--against-set on batch records of up to --batch events, not records of one event."),
    ] = False,
) -> None:
    """Events/s of one worker (blend, baseline ranker) vs a trivial Faust agent and a bare consumer; footprint; then `bench ranking`."""
    from bench import ranking as ranking_bench
    from bench.against import against_overrides, render_pairs
    from bench.stream import render_rankers, run

    try:
        overrides = against_overrides(against_set or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    data_dir = _data_dir()
    if pairs > 1 and not (against or overrides):
        raise typer.BadParameter("--pairs compares with --against or --against-set")
    if against_batched and (batch < 2 or not (against or overrides)):
        raise typer.BadParameter("--against-batched compares with --against or --against-set on --batch of 2 or more")
    report: dict[str, object] = run(
        bootstrap, data_dir, events, profiles, against=against, against_set=overrides, pairs=pairs, batch=batch,
        against_batched=against_batched,
    )
    console = Console()
    _print_report("persona bench stream", {k: v for k, v in report.items() if k != "against_pairs"})
    render_rankers(report, console)
    render_pairs(report, console)
    if ranking:
        if (data_dir / ranking_bench.DATASET).is_dir():
            inproc = ranking_bench.run(data_dir, rankings=rankings, eval_events=eval_events)
            ranking_bench.render(inproc, console)
            report["ranking"] = inproc
        else:
            console.print(f"in-process ranking skipped: no {data_dir / ranking_bench.DATASET}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


@app.command("ranking")
def bench_ranking(
    rankings: Annotated[int, typer.Option(help="Rankings timed per ranker, over a deterministic sample of users (0: skip).")] = 2_000,
    eval_events: Annotated[int, typer.Option(help="MovieLens events the in-process evaluator replays (0: skip).")] = 30_000,
    seed: Annotated[int, typer.Option(help="Seed of the user sample.")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
    trained: Annotated[
        str, typer.Option(help="Also time a trained ranker: current (the ranker registry's CURRENT), a folder, or none.")
    ] = "current",
) -> None:
    """In process, no broker: p50/p99 of one Pipeline.recommend per ranker on MovieLens-100k; evaluator rankings/s (goal 2,000)."""
    from bench import ranking as ranking_bench
    from stream_app.models import open_ranker
    from stream_app.settings import Settings

    model = None if trained == "none" else open_ranker(trained, Settings())

    data_dir = _data_dir()
    if not (data_dir / ranking_bench.DATASET).is_dir():
        raise typer.BadParameter(f"{data_dir / ranking_bench.DATASET} not found (set PERSONA_DATA_DIR)")
    report = ranking_bench.run(data_dir, rankings=rankings, eval_events=eval_events, seed=seed, trained=model)
    ranking_bench.render(report, Console())
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


@app.command("replication")
def bench_replication(
    events: Annotated[Optional[int], typer.Option(help="The first n MovieLens events (default: all).")] = None,
    worker_us: Annotated[
        Optional[float],
        typer.Option(help="A worker's CPU µs per own event (from `bench stream`) for the projection; default: in-process cost."),
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """In process: a worker's cost per own event against per delta of another worker, and the scale-out ceiling."""
    from bench import replication

    data_dir = _data_dir()
    if not (data_dir / "movielens-100k").is_dir():
        raise typer.BadParameter(f"{data_dir / 'movielens-100k'} not found (set PERSONA_DATA_DIR)")
    report = replication.run(data_dir, events, worker_us)
    replication.render(report, Console())
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


@app.command("restore")
def bench_restore(
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers (default: a local broker for the run).")] = None,
    events: Annotated[Optional[int], typer.Option(help="The first n MovieLens events (default: all).")] = None,
    at: Annotated[float, typer.Option(help="The snapshot is taken after this fraction of the deltas.")] = 0.9,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """A worker's start-up catch-up of the shared scoring state: whole deltas topic against the latest snapshot."""
    from bench import restore

    data_dir = _data_dir()
    if not (data_dir / "movielens-100k").is_dir():
        raise typer.BadParameter(f"{data_dir / 'movielens-100k'} not found (set PERSONA_DATA_DIR)")
    report = restore.run(bootstrap, data_dir, events, at)
    restore.render(report, Console())
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


@app.command("padding")
def bench_padding(
    registry: Annotated[Optional[Path], typer.Option(help=_REGISTRY_HELP)] = None,
    texts: Annotated[int, typer.Option(help="Musical Instruments reviews, in micro-batches of --micro-batch.")] = 1024,
    micro_batch: Annotated[int, typer.Option(help="Reviews per micro-batch (PERSONA_REVIEW_BATCH's default).")] = 64,
    budget: Annotated[Optional[int], typer.Option(help="Padded tokens per call (default: the CPU default budget).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="intra-op threads (default: all available cores).")] = None,
    export_missing: Annotated[bool, typer.Option(help="Export fp32/int8 via .venv-train when missing.")] = True,
    repeat: Annotated[int, typer.Option(help="Timed passes per policy; the best one counts.")] = 2,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows here.")] = None,
) -> None:
    """Texts/s with a token budget per inference call against a row count alone (CPU)."""
    from bench.padding import render, run
    from encoders.runtime import CPU_BATCH_TOKENS

    rows = run(
        _model_registry(registry), texts=texts, micro_batch=micro_batch, budget=budget or CPU_BATCH_TOKENS,
        threads=threads, export_missing=export_missing, repeat=repeat,
    )
    render(rows, Console())
    if json_out:
        json_out.write_text(json.dumps([{**row.__dict__, "ratio": row.ratio} for row in rows], indent=2))


@app.command("encoder")
def bench_encoder(
    registry: Annotated[Optional[Path], typer.Option(help=_REGISTRY_HELP)] = None,
    texts: Annotated[int, typer.Option(help="Review texts per batch size (batch 1 uses at most 128).")] = 1024,
    threads: Annotated[Optional[int], typer.Option(help="intra-op threads (default: all available cores).")] = None,
    export_missing: Annotated[bool, typer.Option(help="Export fp32/int8 via .venv-train when missing.")] = True,
    repeat: Annotated[int, typer.Option(help="Timed passes per path; the best one counts.")] = 2,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows here.")] = None,
) -> None:
    """Texts/s of the Persona encode path vs a bare onnxruntime session on pre-tokenized batches."""
    from bench.encoder import render, run

    rows = run(_model_registry(registry), texts=texts, threads=threads, export_missing=export_missing, repeat=repeat)
    render(rows, Console())
    if json_out:
        json_out.write_text(json.dumps([{**row.__dict__, "ratio": row.ratio} for row in rows], indent=2))


@app.command("reviews")
def bench_reviews(
    bootstrap: Annotated[Optional[str], typer.Option(help="Use this broker (default: start a local one).")] = None,
    registry: Annotated[Optional[Path], typer.Option(help=_REGISTRY_HELP)] = None,
    reviews: Annotated[int, typer.Option(help="Musical Instruments reviews per variant.")] = 2_000,
    threads: Annotated[Optional[int], typer.Option(help="intra-op threads, worker and baseline (default: all cores).")] = None,
    export_missing: Annotated[bool, typer.Option(help="Export fp32/int8 via .venv-train when missing.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows here.")] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda on a GPU machine (refuses to report a CPU fallback).")] = "cpu",
    batch: Annotated[Optional[int], typer.Option(help="Reviews per micro-batch (default PERSONA_REVIEW_BATCH).")] = None,
    max_batch_tokens: Annotated[Optional[int], typer.Option(help="Token budget per inference call.")] = None,
    pipeline_spin: Annotated[str, typer.Option(help="The worker's PERSONA_MODEL_SPIN: off (its default), on, or both.")] = "off",
) -> None:
    """Reviews/s through one worker's two-stage review pipeline vs the encoder alone."""
    from rich.table import Table

    from bench.reviews import run

    spins = {"off": (False,), "on": (True,), "both": (False, True)}.get(pipeline_spin)
    if spins is None:
        raise typer.BadParameter(f"--pipeline-spin is off, on or both, not {pipeline_spin!r}")
    rows = run(
        bootstrap, _data_dir(), _model_registry(registry), reviews=reviews, threads=threads, export_missing=export_missing,
        device=device, batch=batch, max_batch_tokens=max_batch_tokens, pipeline_spins=spins,
    )
    table = Table(title="persona bench reviews (reviews/s; ratio = pipeline / the faster encoder alone)")
    cols = ("variant", "reviews", "batch", "threads", "alone, spin / no spin", "worker spin", "pipeline", "ratio")
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r["variant"], f"{r['reviews']:,}", str(r["batch"]), str(r["threads"]),
            f"{r['encoder_alone_spin_per_s']:,.1f} / {r['encoder_alone_nospin_per_s']:,.1f}",
            "on" if r["pipeline_spin"] else "off", f"{r['pipeline_per_s']:,.1f}", f"{r['ratio']:.3f}",
        )
    Console().print(table)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2))


@app.command("load")
def bench_load(
    bootstrap: Annotated[Optional[str], typer.Option(help="Use this broker (default: start a local one).")] = None,
    registry: Annotated[Optional[Path], typer.Option(help=_REGISTRY_HELP)] = None,
    levels: Annotated[str, typer.Option(help="Offered loads, events/s, comma-separated.")] = "100,500,1000,2000",
    seconds: Annotated[float, typer.Option(help="Seconds per level.")] = 30.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """p50/p99 event->emit of one worker at offered loads (10% reviews), up to saturation."""
    from rich.table import Table

    from bench.load import run

    report = run(bootstrap, _data_dir(), _model_registry(registry), levels=tuple(int(x) for x in levels.split(",")), seconds=seconds)
    table = Table(title=f"persona bench load ({seconds:g} s per level, emit interval {report['emit_interval_s']:g} s)")
    cols = ("offered/s", "applied/s", "applied/offered", "unapplied", "uncommitted", "event p50 s", "event p99 s", "message p99 s",
            "saturated")
    for col in cols:
        table.add_column(col, justify="right")
    for r in report["levels"]:
        if "not_run" in r:
            table.add_row(f"{r['offered_eps']:,}", r["not_run"], *[""] * (len(cols) - 2))
            continue
        table.add_row(
            f"{r['offered_actual_eps']:,.0f}", f"{r['applied_eps_during']:,.0f}", f"{r['applied_vs_offered']:.3f}",
            f"{r['unapplied_at_end']:,}", f"{r['uncommitted_at_end']:,}",
            f"{r.get('event_p50_s', float('nan')):.3f}", f"{r.get('event_p99_s', float('nan')):.3f}",
            f"{r.get('message_p99_s', float('nan')):.3f}", "yes" if r["saturated"] else "no",
        )
    Console().print(table)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


@app.command("scale")
def bench_scale(
    bootstrap: Annotated[Optional[str], typer.Option(help="Use this broker (default: start a local one).")] = None,
    events: Annotated[Optional[int], typer.Option(help="Behaviour events (default: all 100,000 MovieLens ratings).")] = None,
    workers: Annotated[str, typer.Option(help="Worker counts, comma-separated.")] = "1,2,4",
    restarts: Annotated[bool, typer.Option(help="Also kill and restart one of two workers, dynamic and static members.")] = True,
    stops: Annotated[bool, typer.Option(help="Also stop one of two workers for good (dynamic; static; static, then group leave; "
                                             "static with PERSONA_STATIC_LEAVE=kubernetes).")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """Events/s of 1, 2, 4 workers in one group on 8 partitions; the pause when a worker joins, leaves or restarts."""
    from bench.scale import run

    report = run(bootstrap, _data_dir(), events, tuple(int(x) for x in workers.split(",") if x.strip()), restarts, stops)
    _print_report("persona bench scale", {k: v for k, v in report.items() if k not in ("rows", "rebalance", "restart", "stop")})
    from rich.table import Table

    table = Table(title=f"{report['data']}, {report['partitions']} partitions, {report['cpus']} cores")
    for col in ("workers", "events/s", "speedup vs 1", "seconds"):
        table.add_column(col, justify="right")
    for r in report["rows"]:
        table.add_row(str(r["workers"]), f"{r['eps']:,.0f}", f"{r['speedup']:.2f}", f"{r['seconds']:.1f}")
    Console().print(table)
    rb = report["rebalance"]
    Console().print(f"rebalance run (2 workers, +1 at 1/3, -1 at 2/3): {rb['eps']:,.0f} events/s; longest pause after the join "
                    f"{rb.get('join_pause_s', float('nan')):.1f} s, after the leave {rb.get('leave_pause_s', float('nan')):.1f} s; "
                    f"supervisor restarts {rb['worker_restarts']}")
    for kind, rs in report.get("restart", {}).items():
        Console().print(f"restart run, {kind} members (2 workers, one killed and started again at 1/3): group's longest pause "
                        f"{rs.get('restart_pause_s', float('nan')):.1f} s; the restarted worker applied again after "
                        f"{rs.get('back_s', float('nan')):.1f} s; supervisor restarts {rs['worker_restarts']}")
    for kind, rs in report.get("stop", {}).items():
        Console().print(f"scale-down run, {kind} (2 workers, one stopped for good at 1/3): group's longest pause "
                        f"{rs.get('stop_pause_s', float('nan')):.1f} s (the stop took {rs.get('stopped_s', float('nan')):.1f} s); "
                        f"supervisor restarts {rs['worker_restarts']}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


@app.command("all")
def bench_all(
    bootstrap: Annotated[Optional[str], typer.Option(help="Use this broker (default: start a local one per part).")] = None,
    registry: Annotated[Optional[Path], typer.Option(help=_REGISTRY_HELP)] = None,
    parts: Annotated[str, typer.Option(help="Comma-separated parts.")] = (
        "stream,ranking,replication,memory,catalog,encoder,reviews,load,scale,new-users"
    ),
    quick: Annotated[bool, typer.Option(help="Reduced sizes (a smoke run; figures not comparable).")] = False,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("var/bench"),
) -> None:
    """Every benchmark in one run: one JSON and one Markdown report of ratios against same-run baselines."""
    from bench.all import PARTS, run, write

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise typer.BadParameter(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    report = run(chosen, bootstrap, _data_dir(), _model_registry(registry), quick)
    js, md = write(report, out)
    print(md.read_text())
    Console(stderr=True).print(f"wrote {js} and {md}")


@app.command("memory")
def bench_memory(
    bootstrap: Annotated[Optional[str], typer.Option(help="Use this broker (default: start a local one).")] = None,
    profiles: Annotated[int, typer.Option(help="Synthetic users (one purchase each) in the large run.")] = 100_000,
    small: Annotated[int, typer.Option(help="Users in the fixed-cost run.")] = 1_000,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the report here; FILE.partial holds a large run's curve so far.")
    ] = None,
    configs: Annotated[str, typer.Option(help="before,after (after alone: the current defaults, e.g. a million users).")] = "before,after",
    registry: Annotated[
        Optional[Path], typer.Option(help="An encoder registry: profiles then carry interest vectors (the full profile).")
    ] = None,
    cache_bytes: Annotated[
        str, typer.Option(help="Comma-separated profile cache sizes in bytes: also run the current defaults with each.")
    ] = "",
    poll_records: Annotated[
        str, typer.Option(help="Comma-separated max_poll_records (0: no bound, Faust's default): also run the current defaults with each.")
    ] = "",
) -> None:
    """RSS and disk per 100k profiles: the previous cache and RocksDB settings against the current defaults."""
    from bench.memory import run

    chosen = tuple(c.strip() for c in configs.split(",") if c.strip())
    caches = tuple(int(c) for c in cache_bytes.split(",") if c.strip())
    polls = tuple(int(c) for c in poll_records.split(",") if c.strip())
    partial = json_out.with_name(json_out.name + ".partial") if json_out else None
    report = run(bootstrap, profiles=profiles, small=small, configs=chosen, registry=registry, cache_bytes=caches, partial=partial,
                 poll_records=polls)
    flat: dict[str, object] = {k: v for k, v in report.items() if not isinstance(v, dict)}
    for name, part in report.items():
        if not isinstance(part, dict):
            continue
        for k, v in part.items():
            if k == "rss_curve":
                flat[f"{name}.rss_mb_at"] = ", ".join(f"{n / 1000:.0f}k: {r / 1e6:.0f}" for n, r in v)
            elif k == "parts_bytes_per_100k_profiles":  # the worker's own memory gauges, part by part
                fixed, run_ = part.get("parts_bytes_fixed", {}), part.get("parts_bytes_run", {})
                for p, grown in v.items():
                    shown = f"{grown / 1e6:.1f}" if p == "accounted" else (
                        f"{fixed.get(p, 0) / 1e6:.1f} / {run_.get(p, 0) / 1e6:.1f} / {grown / 1e6:.1f}"
                    )
                    flat[f"{name}.{p} MB (small / large run / per 100k)"] = shown
            elif k not in ("settings", "parts_bytes_fixed", "parts_bytes_run"):
                flat[f"{name}.{k}"] = v
    _print_report("persona bench memory", flat)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
        if partial is not None:
            partial.unlink(missing_ok=True)  # the whole report replaces it


@app.command("catalog")
def bench_catalog(
    items: Annotated[int, typer.Option(help="Catalog items built per part.")] = 100_000,
    parts: Annotated[str, typer.Option(help="Comma-separated parts (default: all).")] = "",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """Catalog and item-vector memory per 100k items, part by part: before and after issue 13."""
    from bench.catalog import PARTS, run

    chosen = tuple(p.strip() for p in parts.split(",") if p.strip()) or PARTS
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise typer.BadParameter(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    report = run(_data_dir(), items=items, parts=chosen)
    flat: dict[str, object] = {k: v for k, v in report.items() if not isinstance(v, dict)}
    for name, row in report["parts"].items():
        flat[f"{name} MB per 100k items"] = round(row["bytes_per_100k_items"] / 1e6, 1)
    _print_report("persona bench catalog", flat)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


def _print_report(title: str, report: dict[str, object]) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in report.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else str(value))
        table.add_row(key, shown)
    Console().print(table)


@app.command("new-users")
def bench_new_users(
    users: Annotated[int, typer.Option(help="Synthetic users, one first purchase each.")] = 6_000,
    rankings: Annotated[int, typer.Option(help="Rankings timed: after each of the last n purchases.")] = 1_500,
    items: Annotated[int, typer.Option(help="Catalog items (20 categories).")] = 1_000,
    against: Annotated[Optional[str], typer.Option(help="Also run this git revision at the same time, one process per core.")] = None,
    data: Annotated[
        str, typer.Option(help="new-users: the synthetic burst; movielens: the MovieLens-100k replay (repeat users), random item vectors.")
    ] = "new-users",
    vectors: Annotated[bool, typer.Option(help="Random item vectors (content candidates, interest vectors); off: behaviour only.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report here.")] = None,
) -> None:
    """In process: ms per ranking of a burst of new users with interest vectors (every event ranked)."""
    from bench import new_users

    if data not in new_users.DATA:
        raise typer.BadParameter(f"--data: one of {', '.join(new_users.DATA)}")
    if data == "movielens":
        from bench.ranking import DATASET
        from state.paths import data_dir

        if not (data_dir() / DATASET).is_dir():
            raise typer.BadParameter(f"{data_dir() / DATASET} not found (set PERSONA_DATA_DIR)")
    report = new_users.run(against, users=users, rankings=rankings, items=items, data=data, vectors_on=vectors)
    title = "a new user's ranking" if data == "new-users" else "a MovieLens user's ranking, after each event"
    table = Table(title=f"{title}, in process (best of 3 calls each){'' if vectors else ', no item vectors'}")
    table.add_column("code")
    for col in ("rankings", "mean ms", "p50 ms", "p99 ms", "lists sha256", "update µs/event"):
        table.add_column(col, justify="right")
    for name in ("this tree", against):
        if name is None:
            continue
        r = report[name]
        table.add_row(
            name, str(r["rankings"]), f"{r['mean_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", r["lists_sha256"],
            f"{r['update_us_per_event']:.1f}",
        )
    console = Console()
    console.print(table)
    if against is not None:
        console.print(
            f"mean ranking this tree / {against} = {report['mean_vs_against']:.3f}; "
            f"update per event = {report['update_vs_against']:.3f}; same lists: {report['same_lists']}"
        )
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
