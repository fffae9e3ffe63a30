"""``persona``: the one command. Heavy imports happen inside commands, so the trainer
environment (no Faust) and the worker environment (no torch) share this entry point."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from stream_app.settings import Settings

app = typer.Typer(help="Persona: streaming user profiles and recommendations.", no_args_is_help=True)
inspect_app = typer.Typer(help="Look inside a running system.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")
console = Console(stderr=True)


def _settings(bootstrap: str | None = None) -> Settings:
    from stream_app.settings import Settings

    # Init arguments take precedence over PERSONA_* variables; the environment stays as it was.
    return Settings(bootstrap_servers=bootstrap) if bootstrap else Settings()


@app.command()
def config(markdown: Annotated[bool, typer.Option(help="Print the README table.")] = False) -> None:
    """Print the effective configuration (secrets masked)."""
    from stream_app.settings import markdown_table

    if markdown:
        print(markdown_table())
    else:
        print(json.dumps(_settings().masked(), indent=2))


@app.command()
def produce(
    path: Annotated[Optional[Path], typer.Argument(help="Dataset file or folder (none for synthetic).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="amazon|movielens|ciao|mind|jsonl|synthetic")] = "synthetic",
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    rate: Annotated[Optional[float], typer.Option(help="Events per second (default: as fast as possible).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Send at most N events.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    batch: Annotated[
        int, typer.Option(min=1, help="Up to N of a user's events per record (a batch record; 1: one event per record).")
    ] = 1,
) -> None:
    """Replay a dataset onto the input topics in event-time order."""
    from stream_app.producer import publish
    from stream_app.sources import read_events
    from stream_app.topics import ensure_topics

    settings = _settings(bootstrap)
    if fmt != "synthetic" and path is None:
        raise typer.BadParameter("PATH is required for this format")
    if fmt == "synthetic":
        console.print("[yellow]SYNTHETIC data: generated, not a real dataset[/yellow]")
    ensure_topics(settings)
    events = list(read_events(fmt, path, limit=limit))  # type: ignore[arg-type]
    counts = publish(settings, events, rate=rate, progress=progress, total=len(events), batch=batch)
    for topic, n in sorted(counts.items()):
        print(f"{topic}\t{n}")


@app.command("train")
def train_cmd(
    path: Annotated[Optional[Path], typer.Argument(help="Dataset file or folder: the history to learn from.")] = None,
    from_topics: Annotated[
        bool, typer.Option("--from-topics", help="Learn from the input topics (the accumulated history) instead of a file.")
    ] = False,
    since: Annotated[Optional[float], typer.Option(help="--from-topics: events from this event time (epoch seconds).")] = None,
    until: Annotated[Optional[float], typer.Option(help="--from-topics: events before this event time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="amazon|movielens|ciao|jsonl (also mind)")] = "movielens",
    meta: Annotated[Optional[Path], typer.Option(help="amazon: the meta_<Name>.json.gz file, when not beside PATH.")] = None,
    train_slice: Annotated[str, typer.Option(help="Positives to learn from, as a share of the replay A:B.")] = "0:0.5",
    gate_slice: Annotated[str, typer.Option(help="The later slice the candidate must win on, A:B.")] = "0.5:0.75",
    margin: Annotated[float, typer.Option(help="Publish only if NDCG@10 > production's x (1 + margin).")] = 0.0,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per positive.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of sampling, initialisation and shuffles.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the examples (the best on the held-out share is kept).")] = 150,
    device: Annotated[str, typer.Option(help="cpu, cuda, or auto (CUDA when torch sees a GPU).")] = "cpu",
    encoder: Annotated[str, typer.Option(help="Text encoder: auto, none, or a registry or version folder.")] = "auto",
    publish: Annotated[bool, typer.Option(help="Publish a candidate that passes the gate.")] = True,
    announce: Annotated[bool, typer.Option(help="Announce a published version on the control topic.")] = True,
    every: Annotated[Optional[str], typer.Option(help="Run periodically: 90s, 15m, 6h, 1d.")] = None,
    runs: Annotated[Optional[int], typer.Option(help="With --every: stop after this many runs.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    report_json: Annotated[Optional[Path], typer.Option(help="Write the last run's result as JSON here.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Read only the first N events.")] = None,
    models: Annotated[str, typer.Option(help="What to train, in order: encoder, ranker, or both (encoder,ranker).")] = "encoder,ranker",
    freeze: Annotated[int, typer.Option(min=0, help="Encoder: transformer layers (from the bottom) kept frozen.")] = 4,
    encoder_epochs: Annotated[int, typer.Option(min=1, help="Encoder: passes over the pairs.")] = 1,
    encoder_pairs: Annotated[
        Optional[int], typer.Option(help="Encoder: at most this many pairs, evenly over the slice (default 6,400 on CPU, all on a GPU).")
    ] = None,
) -> None:
    """Fine-tune the text encoder (contrastive + sentiment) and fit the ranker (BCE) on the history.

    Each is gated against production on a later slice, exported to ONNX, and published only if it wins."""
    from stream_app.sources import SOURCE_FORMATS, read_events
    from stream_app.train import every as every_loop
    from stream_app.train import parse_duration, train_once

    if fmt not in SOURCE_FORMATS or fmt == "synthetic":
        raise typer.BadParameter(f"unknown format {fmt!r}; choose from {[f for f in SOURCE_FORMATS if f != 'synthetic']}")

    def _slice(text: str) -> tuple[float, float]:
        try:
            a, b = (float(x) for x in text.split(":"))
        except ValueError as exc:
            raise typer.BadParameter(f"a slice is A:B, got {text!r}") from exc
        return a, b

    settings = _settings()
    windows = _slice(train_slice), _slice(gate_slice)
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    if not wanted or set(wanted) - {"encoder", "ranker"}:
        raise typer.BadParameter(f"--models is encoder, ranker or encoder,ranker; got {models!r}")

    if (path is None) == (not from_topics):
        raise typer.BadParameter("give a dataset PATH or --from-topics (one of them)")

    def once() -> Any:
        # Read again each period: the history grows.
        if from_topics:
            from stream_app.history import read_history

            history = read_history(settings, since=since, until=until)
            events, source = history.events[:limit] if limit else history.events, history.source()
        else:
            assert path is not None
            events = list(read_events(fmt, path, meta=meta, limit=limit))
            source = {"format": fmt, "path": str(path), "events_read": len(events)}
        serving_encoder = encoder
        report: dict[str, Any] = {}
        published = False
        if "encoder" in wanted:
            from export.finetune import FinetuneConfig
            from export.ranker import pick_device
            from stream_app.train_encoder import CPU_PAIRS, NotEnoughPairs, train_encoder_once

            on_gpu = pick_device(device).type == "cuda"
            try:
                tuned = train_encoder_once(
                    events, settings, source=source, train_window=windows[0], gate_window=windows[1], margin=margin,
                    config=FinetuneConfig(epochs=encoder_epochs, freeze=freeze, seed=seed, device=device),
                    pairs_limit=encoder_pairs if encoder_pairs is not None else (None if on_gpu else CPU_PAIRS),
                    production_encoder=encoder, publish=publish, announce=announce, progress=progress,
                )
            except NotEnoughPairs as exc:
                # A stream with little text (the MIND sample): its ranker is still worth training.
                console.print(f"[yellow]encoder not fine-tuned: {exc}[/yellow]")
            else:
                g = tuned.gate
                console.print(
                    f"{tuned.version}: ndcg@10 {g['candidate']['ndcg@10']:.4f} vs production ({g['production']['version']}) "
                    f"{g['production']['ndcg@10']:.4f}; sentiment Spearman {g['candidate'].get('sentiment_spearman')} vs "
                    f"{g['production'].get('sentiment_spearman')}: "
                    f"{'[green]published[/green]' if tuned.published else '[yellow]not published[/yellow]'}"
                )
                report["encoder"] = {"version": tuned.version, "published": tuned.published, "gate": g, "seconds": tuned.seconds}
                published = tuned.published
                if g["passed"]:
                    # The ranker learns the features the workers will compute with this encoder.
                    serving_encoder = str(tuned.path)
        if "ranker" not in wanted:
            if report_json is not None:
                report_json.write_text(json.dumps(report, indent=2) + "\n")
            return _Outcome(published)
        result = train_once(
            events, settings, source=source,
            train_window=windows[0], gate_window=windows[1], margin=margin, negatives=negatives, seed=seed,
            epochs=epochs, device=device, encoder=serving_encoder, publish=publish, announce=announce, progress=progress,
        )
        gate = result.gate
        scored = f"{gate['impressions']:,} impressions" if "impressions" in gate else f"{gate['evaluated']:,} positives"
        console.print(
            f"{result.version}: {gate['metric']} {gate['value']['candidate']:.4f} vs production "
            f"({gate['production']['version']}) {gate['value']['production']:.4f} on {scored} "
            f"of slice {gate_slice}: {'[green]published[/green]' if result.published else '[yellow]not published[/yellow]'}"
        )
        report["ranker"] = {"version": result.version, "published": result.published, "gate": gate, "seconds": result.seconds}
        if report_json is not None:
            report_json.write_text(json.dumps(report, indent=2) + "\n")
        return _Outcome(published or result.published)

    from state.errors import PersonaError

    try:
        if every is None:
            once()
            return
        counts = every_loop(parse_duration(every), once, runs=runs)
    except PersonaError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"runs: {counts}")


@dataclass(frozen=True)
class _Outcome:
    """What ``every`` counts: whether the run published anything."""

    published: bool


@app.command("swap-study")
def swap_study_cmd(
    path: Annotated[Path, typer.Argument(help="Dataset file or folder.")],
    old: Annotated[Path, typer.Option("--from", help="The encoder served before the swap (a registry or version folder).")],
    new: Annotated[Path, typer.Option("--to", help="The encoder swapped in.")],
    fmt: Annotated[str, typer.Option("--format", help="amazon|movielens|ciao|jsonl")] = "movielens",
    at: Annotated[float, typer.Option(help="Where in the replay the swap happens (a share); [at, 1) is scored.")] = 0.8,
    report_json: Annotated[Optional[Path], typer.Option(help="Write the figures as JSON here.")] = None,
) -> None:
    """NDCG@10 on the slice after an encoder swap: A throughout, A then B (migrated interests), B throughout."""
    from stream_app.models import open_text_encoder
    from stream_app.sources import read_events
    from stream_app.swap_study import swap_study

    settings = _settings()
    events = list(read_events(fmt, path))  # type: ignore[arg-type]
    result = swap_study(events, settings, open_text_encoder(str(old), settings), open_text_encoder(str(new), settings), at, progress=True)
    for name in ("before", "swapped", "b_throughout"):
        console.print(f"{name:>12}: NDCG@10 {result[name]['ndcg@10']:.4f}  R@10 {result[name]['recall@10']:.4f}")
    console.print(f"{result['evaluated']:,} positives after position {at}")
    if report_json is not None:
        report_json.write_text(json.dumps(result, indent=2) + "\n")


@app.command("impressions-study")
def impressions_study_cmd(
    path: Annotated[Path, typer.Argument(help="A stream with impressions (the MIND folder).")],
    fmt: Annotated[str, typer.Option("--format", help="mind, or jsonl with impression events.")] = "mind",
    train_slice: Annotated[float, typer.Option(help="Impressions before this share of the replay train.")] = 0.7,
    negatives: Annotated[int, typer.Option(min=1, help="Sampled negatives per click, for the sampled-negatives ranker.")] = 4,
    encoder: Annotated[str, typer.Option(help="Text encoder: auto, none, or a registry or version folder.")] = "none",
    seed: Annotated[int, typer.Option()] = 0,
    report_json: Annotated[Optional[Path], typer.Option(help="Write the report as JSON here.")] = None,
) -> None:
    """Train the ranker with impression negatives and with sampled negatives; AUC and NDCG@10 of both on later impressions."""
    from stream_app.impressions import study
    from stream_app.models import open_text_encoder
    from stream_app.sources import read_events

    settings = _settings()
    events = list(read_events(fmt, path))  # type: ignore[arg-type]
    report = study(
        events, settings, train=train_slice, test=(train_slice, 1.0), negatives=negatives, seed=seed,
        encoder=open_text_encoder(encoder, settings),
    )
    for name, r in report["rankers"].items():
        print(f"{name:22s} AUC {r['auc']:.4f}  NDCG@10 {r['ndcg@10']:.4f}  on {r['impressions']:,} test impressions")
    if report_json is not None:
        report_json.write_text(json.dumps(report, indent=2) + "\n")


@app.command("evaluate")
def evaluate_cmd(
    path: Annotated[Optional[Path], typer.Argument(help="Dataset file or folder.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="amazon|movielens|ciao|jsonl (also mind, synthetic)")] = "movielens",
    meta: Annotated[Optional[Path], typer.Option(help="amazon: the meta_<Name>.json.gz file, when not beside PATH.")] = None,
    k: Annotated[str, typer.Option("--k", help="Cut-offs K, comma separated (the pipeline ranks max K).")] = "10",
    variants: Annotated[
        str, typer.Option(help="Comma separated; all, popularity and item_knn are always included.")
    ] = "all,popularity,decayed_popularity,item_knn",
    report_json: Annotated[Optional[Path], typer.Option(help="Write the report as JSON here.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Replay only the first N events.")] = None,
    emit_interval: Annotated[
        float, typer.Option(help="Coalesce messages per user over this many event-time seconds (0: every change emits).")
    ] = 0.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    window: Annotated[
        str, typer.Option("--slice", help="Score only positives in this share of the replay, A:B (e.g. 0.75:1).")
    ] = "0:1",
    encoder: Annotated[
        str,
        typer.Option(
            help="Text encoder for reviews and item texts: auto (the settings' registry, else the test models), "
            "none, or a registry or version folder."
        ),
    ] = "auto",
    ranker: Annotated[
        str,
        typer.Option(help="Ranker of the `all` variant: hand (the settings' weights), current (the ranker registry's "
                     "CURRENT), or a ranker registry or version folder."),
    ] = "hand",
) -> None:
    """Prequential Recall/NDCG@K of the pipeline's recommendations and baselines, in process (no Kafka)."""
    from stream_app.evaluate import evaluate, render, selected_variants
    from stream_app.sources import SOURCE_FORMATS, read_events

    if fmt not in SOURCE_FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose from {list(SOURCE_FORMATS)}")
    if fmt != "synthetic" and path is None:
        raise typer.BadParameter("PATH is required for this format")
    try:
        ks = sorted({int(x) for x in k.split(",") if x.strip()})
        chosen = selected_variants([v.strip() for v in variants.split(",") if v.strip()])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not ks or ks[0] < 1:
        raise typer.BadParameter("--k needs cut-offs >= 1")
    if fmt == "synthetic":
        console.print("[yellow]SYNTHETIC data: generated, not a real dataset[/yellow]")
    events = list(read_events(fmt, path, limit=limit, meta=meta))
    name = f"{fmt}:{path.name}" if path is not None else fmt
    settings = _settings()
    from stream_app.models import open_ranker, open_text_encoder

    model = open_ranker(ranker, settings)
    if model is not None:
        console.print(f"ranker: {model.version}")

    text_encoder = open_text_encoder(encoder, settings)
    console.print(f"text encoder: {text_encoder.info.version if text_encoder is not None else 'none (behaviour only)'}")
    report = evaluate(
        events, settings, ks=ks, variants=chosen, emit_interval_s=emit_interval, dataset=name, progress=progress,
        window=(float(window.split(":")[0]), float(window.split(":")[1])), encoder=text_encoder, model=model,
    )
    print(render(report))
    t = report.timing
    console.print(
        f"{report.evaluated:,} positives x {len(chosen)} variants = {int(t['rankings']):,} rankings "
        f"+ {int(t['messages']):,} pipeline messages in {t['seconds']:.1f} s: "
        f"{t['rankings_per_s']:,.0f} rankings/s ({t['evaluated_per_s']:,.0f} positives/s); per variant: "
        + ", ".join(f"{v} {t[v + '_per_s']:,.0f}/s" for v in chosen)
    )
    if report_json is not None:
        report_json.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
        console.print(f"report written to {report_json}")


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to read.")],
    max_records: Annotated[int, typer.Option("--max", help="Stop after N records.")] = 20,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    idle_s: Annotated[float, typer.Option(help="Stop after this long without records.")] = 5.0,
) -> None:
    """Print decoded records of a topic from the beginning (events, DLQ, recommendations)."""
    from stream_app.inspect import tail_topic

    for line in tail_topic(_settings(bootstrap), topic, max_records=max_records, idle_s=idle_s):
        print(line)


@app.command()
def worker() -> None:
    """Run a Persona worker (Faust, RocksDB state, /metrics on the web port)."""
    from stream_app.supervise import RESTART_EXIT_CODE, broker_went_away, is_child, run_supervised

    if not is_child():
        # The parent only supervises: it restarts the worker when it asks (exit 75). It never
        # imports Faust, the worker or the models: it lives as long as the worker, beside it.
        raise typer.Exit(run_supervised(["-m", "stream_app.cli", "worker"]))

    import faust

    from stream_app.kafka_clients import validate
    from stream_app.membership import leave_on_exit
    from stream_app.settings import Settings
    from stream_app.topics import ensure_topics
    from stream_app.worker import build_app

    settings = Settings()
    console.print("[bold]Persona worker[/bold] effective configuration:")
    console.print_json(json.dumps(settings.masked()))
    validate(settings)  # every Kafka client's security settings, TLS files loaded: refuse now
    ensure_topics(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    faust_app, _ = build_app(settings)
    w = faust.Worker(faust_app, loglevel=settings.log_level.lower(), quiet=True)
    stopped = False  # a clean stop (SIGTERM), not a restart, a crash or a refused start
    try:
        w.execute_from_commandline()
        stopped = True
    except SystemExit as exc:
        if broker_went_away(faust_app.crash_reason):
            # The broker went away while Faust started or ran (a restart, a lost host): Faust
            # crashes on that; start again from the committed offsets once it answers.
            console.print(f"[yellow]Kafka went away ({faust_app.crash_reason}): restarting the worker[/yellow]")
            raise SystemExit(RESTART_EXIT_CODE) from None
        stopped = exc.code in (0, None)
        raise
    finally:
        leave_on_exit(faust_app, settings, stopped=stopped)


@inspect_app.command("profile")
def inspect_profile(
    user: Annotated[str, typer.Argument(help="User id.")],
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print a user's profile, read from the profile table's changelog topic."""
    from stream_app.inspect import latest_profile, render_profile

    settings = _settings(bootstrap)
    profile = latest_profile(settings, user)
    if profile is None:
        console.print(f"no profile for {user!r}")
        raise typer.Exit(1)
    if as_json:
        import msgspec

        print(msgspec.json.encode(profile).decode())
    else:
        render_profile(profile, settings, Console())


from stream_app.cli_dashboard import dashboard_app  # noqa: E402  (after `app`: the sub-apps are mounted here)
from stream_app.cli_group import group_app  # noqa: E402
from stream_app.cli_model import model_app  # noqa: E402
from stream_app.cli_ops import acls_cmd, dlq_app, erase_cmd, shared_app, status_cmd  # noqa: E402

app.add_typer(model_app, name="model")
app.add_typer(dlq_app, name="dlq")
app.add_typer(dashboard_app, name="dashboard")
app.add_typer(shared_app, name="shared")
app.add_typer(group_app, name="group")
app.command("status")(status_cmd)
app.command("erase")(erase_cmd)
app.command("acls")(acls_cmd)


#: Commands that live outside ``stream_app`` (the benchmarks, for one) are mounted from this
#: entry-point group (pyproject.toml), so the production package never imports them.
COMMAND_GROUP = "persona.commands"


def _mount_commands() -> None:
    for ep in entry_points(group=COMMAND_GROUP):
        try:
            sub = ep.load()
        except Exception as exc:  # a broken optional group must not take the worker down
            console.print(f"[yellow]persona {ep.name}: not available ({type(exc).__name__}: {exc})[/yellow]")
            continue
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=ep.name)


_mount_commands()


@inspect_app.command("recommendations")
def inspect_recommendations(
    users: Annotated[Optional[list[str]], typer.Argument(help="User ids (none: pick a few with differing histories).")] = None,
    pick: Annotated[int, typer.Option(help="Without USER: how many users to pick.")] = 4,
    bootstrap: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print users' final recommendation message (their latest on the topic) with titles and reasons."""
    import sys

    import msgspec

    from stream_app.inspect import catalog_titles, latest_recommendations, pick_users, render_recommendations

    settings = _settings(bootstrap)
    latest = latest_recommendations(settings, users or None)
    chosen = list(users) if users else pick_users(latest, pick)
    missing = [u for u in chosen if u not in latest]
    if missing or not chosen:
        console.print(f"no recommendations for {missing or 'anyone'} on {settings.recommendations_topic}")
        raise typer.Exit(1)
    finals = {u: latest[u] for u in chosen}
    if as_json:
        for final in finals.values():
            print(msgspec.json.encode(final.message).decode())
        return
    titles = catalog_titles(settings, {s.item_id for f in finals.values() for s in f.message.items})
    # Piped (make demo | tee, CI logs): wide enough that titles and reasons do not wrap.
    render_recommendations(finals, titles, Console() if sys.stdout.isatty() else Console(width=160))


def main() -> None:
    from state.errors import PersonaError
    from stream_app.cli_ops import exit_code

    try:
        app(prog_name="persona")
    except PersonaError as exc:
        # A refused login, a denied topic, an unreachable broker, bad settings: one clear line
        # and a distinct exit code, not a traceback (and never a restart: see supervise.py).
        console.print(f"[red]persona: {type(exc).__name__}: {exc}[/red]")
        raise SystemExit(exit_code(exc)) from None


if __name__ == "__main__":
    main()
