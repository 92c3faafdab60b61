"""The ``recops`` command: one subcommand per lifecycle step, plus serve, schedule and demo.

Step commands run as real Prefect flow runs. Heavy imports (Prefect, Feast, MLflow) happen inside
the commands, so ``recops --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from recops.config import Settings, load_settings

app = typer.Typer(help="recops: workflow-orchestrated MLOps for real-time behavioral recommendations.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
_state: dict = {}


@app.callback()
def main(
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="settings file (default: ./recops.yaml if present)"),
    home: Path | None = typer.Option(None, "--home",
                                     help="where local state lives (env RECOPS_HOME; default ./.recops)"),
    profile: str | None = typer.Option(None, "--profile", help="local (default) or scaleout"),
) -> None:
    """Settings come from the config file, then RECOPS_* environment variables, then these options."""
    overrides = {k: v for k, v in {"home": home, "profile": profile}.items() if v is not None}
    _state["settings"] = load_settings(config, **overrides)


def settings() -> Settings:
    """The settings the callback loaded, with their directories created and exported (``prepare_env``).

    Returns:
        The settings of this invocation.
    """
    s = _state["settings"]
    s.ensure_dirs()
    prepare_env(s)
    return s


def prepare_env(s: Settings) -> None:
    """Export the settings (so flow runs and the server see them) and Prefect's local state dir.

    Also turns off the libraries' telemetry and sends flow runs' logs to Prefect (INFO and up) but only
    warnings to the terminal, unless the environment sets these already. ``PREFECT_API_URL`` is
    overwritten when the settings name a Prefect server, and set to the server ``recops schedule`` runs
    for this home when it answers (the runs then show in its UI).

    Args:
        s: the settings to export (``Settings.to_env``) into ``os.environ``.
    """
    os.environ.update(s.to_env())
    os.environ.setdefault("PREFECT_HOME", str((Path(s.home) / "prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # every step's log lines go to its Prefect run (the UI shows them), only warnings to the terminal
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "recops")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    if s.prefect_api_url:
        os.environ["PREFECT_API_URL"] = s.prefect_api_url
    elif "PREFECT_API_URL" not in os.environ and (Path(s.home) / "prefect" / "server-url").exists():
        from recops.flows.server import running_api  # runs go to the server `recops schedule` started

        if api := running_api(Path(s.home) / "prefect"):
            os.environ["PREFECT_API_URL"] = api


def _run(title: str, fn, *args, stages: int = 1, **kwargs) -> dict:
    """Run a flow with a progress bar that advances as its steps finish."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from recops import steps

    t0 = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(title, total=stages)

        def listen(step: str, phase: str, seconds: float) -> None:
            if phase == "start":
                bar.update(task, description=f"{title}: {step}")
            else:
                bar.advance(task)
                bar.console.print(f"  [green]✓[/] {step} ({seconds:.1f}s)")

        steps.add_listener(listen)
        try:
            out = fn(*args, **kwargs)
        except steps.StepFailed as exc:
            # soft wrap: a long path in the message stays whole in logs and pipes (rich breaks at 80 there)
            console.print(f"[red]{title} failed:[/] {exc}", soft_wrap=True)
            raise typer.Exit(1)
        finally:
            steps.remove_listener(listen)
    console.print(f"[green]✓[/] {title} ({time.perf_counter() - t0:.1f}s)")
    return out


def _print(result: dict) -> None:
    from recops.steps import to_json

    typer.echo(to_json(result))


def _mapping(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        dst, sep, src = p.partition("=")
        if not sep or not dst or not src:
            raise typer.BadParameter(f"{p!r}: expected recops_column=file_column, e.g. user_id=customer")
        out[dst.strip()] = src.strip()
    return out


MAP_HELP = "rename a file column: recops_column=file_column (repeatable), e.g. --map user_id=CustomerID"


@app.command()
def ingest(
    source: str = typer.Option("synthetic", help="synthetic | movielens | online-retail | otto | file"),
    path: str | None = typer.Option(None, help="data set folder or events file (all sources but synthetic)"),
    n_events: int = typer.Option(100_000, help="synthetic: how many events"),
    seed: int = typer.Option(42, help="synthetic: random seed"),
    bad_share: float = typer.Option(0.01, help="synthetic: share of malformed rows"),
    end: str | None = typer.Option(None, help="synthetic: last day of data (default today)"),
    items: str | None = typer.Option(None, "--items", help="file: optional item catalog file"),
    users: str | None = typer.Option(None, "--users", help="file: optional user demographics file"),
    map_: list[str] = typer.Option([], "--map", help="file: " + MAP_HELP),
) -> None:
    """Load a source into a staging batch (nothing reaches the store before validation)."""
    settings()
    from recops.flows.pipeline import ingest_flow

    _print(_run("ingest", ingest_flow, source=source, path=path, n_events=n_events, seed=seed, bad_share=bad_share,
                end=end, mapping=_mapping(map_) or None, items_path=items, users_path=users))


@app.command()
def validate(batch_id: str = typer.Argument(..., help="the batch id printed by ingest")) -> None:
    """Run the Great Expectations suite; quarantine bad rows; load the good ones."""
    settings()
    from recops.flows.pipeline import validate_flow

    _print(_run("validate", validate_flow, batch_id))


@app.command()
def features() -> None:
    """Build the offline feature tables, validate, write Feast parquet, materialize online."""
    settings()
    from recops.flows.pipeline import features_flow

    _print(_run("features", features_flow))


@app.command()
def train(
    events: Path | None = typer.Option(None, "--events", help="train on this events file (CSV/Parquet: user_id, "
                                           "item_id, event_type, timestamp; optional session_id, value): ingest, "
                                           "validate, features, train"),
    items: Path | None = typer.Option(None, "--items", help="with --events: optional item catalog file"),
    users: Path | None = typer.Option(None, "--users", help="with --events: optional user demographics file"),
    map_: list[str] = typer.Option([], "--map", help=MAP_HELP),
) -> None:
    """Train on point-in-time features; log to MLflow; register the version as @challenger."""
    settings()
    if events is None:
        if items or users or map_:
            raise typer.BadParameter("--items, --users and --map go with --events")
        from recops.flows.pipeline import train_flow

        _print(_run("train", train_flow))
        return
    for p in (events, items, users):
        if p is not None and not p.exists():
            raise typer.BadParameter(f"{p} does not exist")
    from recops.flows.pipeline import train_file_flow

    _print(_run("train", train_file_flow, stages=4, events_path=str(events), items_path=str(items) if items else None,
                users_path=str(users) if users else None, mapping=_mapping(map_) or None))


# which registered model a batch command scores with (one of them, or the newest version)
VERSION = typer.Option(None, "--version", help="a registered version (default: the newest, i.e. just trained)")
ALIAS = typer.Option(None, "--alias", help="or the version an alias points at, e.g. champion")


def _one_model(version: str | None, alias: str | None) -> None:
    """Load the settings for a batch command and refuse both a version and an alias."""
    settings()
    if version and alias:
        raise typer.BadParameter("give --version or --alias, not both")


@app.command()
def recommend(
    users: Path = typer.Option(..., "--users", help="CSV with a user_id column (or one id per line)"),
    out: Path = typer.Option(..., "--out", help="CSV to write: user_id, item_id, rank, score"),
    k: int = typer.Option(10, "--k", min=1, max=1000, help="items per user"),
    version: str | None = VERSION, alias: str | None = ALIAS,
) -> None:
    """Batch scoring: the same lists the HTTP service would answer, for every user in a file."""
    _one_model(version, alias)
    from recops.flows.pipeline import recommend_flow

    _print(_run("recommend", recommend_flow, users_path=str(users), out_path=str(out), k=k, version=version,
                alias=alias))


@app.command("next-items")
def next_items(
    sessions: Path = typer.Option(..., "--sessions", help="CSV with session_id, item_id, timestamp"),
    out: Path = typer.Option(..., "--out", help="CSV to write: session_id, step, item_id, rank"),
    k: int = typer.Option(20, "--k", min=1, max=1000, help="items per prefix"),
    version: str | None = VERSION, alias: str | None = ALIAS,
) -> None:
    """Next-item predictions for every prefix of every session (step t: given the first t items,
    predict item t+1), for offline evaluation."""
    _one_model(version, alias)
    from recops.flows.pipeline import next_items_flow

    _print(_run("next-items", next_items_flow, sessions_path=str(sessions), out_path=str(out), k=k, version=version,
                alias=alias))


@app.command()
def evaluate() -> None:
    """Compare @challenger with @champion on the same holdout."""
    settings()
    from recops.flows.pipeline import evaluate_flow

    _print(_run("evaluate", evaluate_flow))


@app.command()
def promote(force: bool = typer.Option(False, help="promote even if the challenger is worse")) -> None:
    """Move @champion to @challenger when it is not worse (or with --force)."""
    settings()
    from recops.flows.pipeline import promote_flow

    _print(_run("promote", promote_flow, force=force))


@app.command()
def pipeline(
    source: str = typer.Option("synthetic", help="synthetic | movielens | online-retail | otto | file"),
    path: str | None = typer.Option(None, help="data set folder or events file"),
    n_events: int = typer.Option(100_000, help="synthetic: how many events"),
    seed: int = typer.Option(42),
    bad_share: float = typer.Option(0.01),
    end: str | None = typer.Option(None),
    force_promote: bool = typer.Option(False),
) -> None:
    """ingest -> validate -> features -> train -> evaluate -> promote, as one Prefect flow run."""
    settings()
    from recops.flows.pipeline import pipeline_flow

    _print(_run("pipeline", pipeline_flow, stages=6, source=source, path=path, n_events=n_events, seed=seed,
                bad_share=bad_share, end=end, force_promote=force_promote))


def server_home(s: Settings, port: int) -> str:
    """The ``BENTOML_HOME`` of a server on ``port``: one per port, because BentoML empties its Prometheus
    files there at start, and a second server sharing it would freeze the first one's ``/metrics``.

    Args:
        s: the settings (``home``).
        port: the server's port.

    Returns:
        ``{home}/bentoml/port-{port}``, absolute.
    """
    return str((Path(s.home) / "bentoml" / f"port-{port}").resolve())


def server_command(s: Settings, port: int | None = None) -> list[str]:
    """The command line that serves the BentoML service with the ``bentoml`` next to this Python.

    Args:
        s: the settings (``serve_host``, ``serve_port``).
        port: the port; None: ``s.serve_port``.

    Returns:
        The argv, for ``os.execv`` or ``subprocess.Popen``.
    """
    bentoml = Path(sys.executable).with_name("bentoml")
    return [str(bentoml), "serve", "recops.services.service:Recops", "--host", s.serve_host,
            "--port", str(port or s.serve_port)]


@app.command()
def serve(port: int | None = typer.Option(None, help="default: serve_port setting (3000)")) -> None:
    """Serve the @champion over HTTP (BentoML): /recommend, /track, /health, /model."""
    s = settings()
    os.environ.setdefault("BENTOML_HOME", server_home(s, port or s.serve_port))
    cmd = server_command(s, port)
    os.execv(cmd[0], cmd)


@app.command()
def package(version: str | None = typer.Option(None, help="the registry version to package"),
            alias: str = typer.Option("champion", help="package the version this alias points to (without --version)"),
            ) -> None:
    """Package a model the BentoML way: import it into BentoML's model store, build a Bento (pinned
    requirements) and print its tag, for ``bentoml serve TAG`` (no registry needed) and ``bentoml containerize``."""
    s = settings()
    from recops import registry
    from recops.services.packaging import build

    if version is None:
        version = registry.alias_version(s, alias)
        if version is None:
            raise typer.BadParameter(f"no version has the @{alias} alias yet: train and promote one, or pass --version",
                                     param_hint="--alias")
    elif not version.isdigit():
        raise typer.BadParameter(f"{version!r} is not a version number", param_hint="--version")
    try:
        tag = build(s, version)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            raise typer.BadParameter(f"{s.model_name} has no version {version}", param_hint="--version") from None
        raise
    console.print(f"packaged {s.model_name} version {version}: serve it with [bold]bentoml serve {tag}[/bold] "
                  f"(RECOPS_HOME={s.home}), or build an image with bentoml containerize {tag}")
    typer.echo(tag)


@app.command()
def schedule(cron: str = typer.Option("0 3 * * *", help="the nightly retrain's cron ('' : off)"),
             weekly_cron: str = typer.Option("0 4 * * 0", "--weekly-cron", help="the weekly retrain's cron ('' : off)"),
             monitor_cron: str = typer.Option("0 * * * *", "--monitor-cron", help="the monitor's cron (hourly)"),
             ab_cron: str = typer.Option("0 * * * *", "--ab-cron", help="the ab-evaluate deployment's cron (hourly)"),
             port: int = typer.Option(4200, help="local profile: the port of the Prefect server started here")) -> None:
    """Serve every deployment (retrains on crons and on the monitor's alarms, the monitor, ab-evaluate).

    With the local profile a Prefect server (embedded SQLite) starts here first, so its UI shows the
    deployments, schedules, triggers and runs; the scale-out profile uses ``prefect_api_url``.
    Ctrl-C stops the deployments, then the server."""
    s = settings()
    from recops.flows.server import PrefectServer

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it even when started in the background
    server = None
    if not s.prefect_api_url:
        server = PrefectServer(Path(s.home) / "prefect", port=port)
        console.print(f"starting a Prefect server on {server.url} (PREFECT_HOME={server.home}) ...")
        server.start()
        os.environ.update(server.env())
    ui = server.url if server else s.prefect_api_url.removesuffix("/api")
    console.print(f"[bold]Prefect UI: {ui}[/bold] (deployments, schedules, triggers, runs); Ctrl-C stops")
    from recops.flows.deployments import serve_schedules

    try:
        serve_schedules({"nightly-retrain": cron, "weekly-retrain": weekly_cron, "monitor": monitor_cron,
                         "ab-evaluate": ab_cron})
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()
        console.print("stopped")


@app.command()
def retrain(reason: str = typer.Option(..., "--reason", help="why (recorded on the runs and the version)"),
            force_promote: bool = typer.Option(False, help="promote even if the new version is worse")) -> None:
    """Retrain now, by hand: features -> train -> evaluate -> promote, recorded as ``trigger=manual``."""
    if not reason.strip():
        raise typer.BadParameter("say why: --reason must not be empty", param_hint="--reason")
    settings()
    from recops.flows.pipeline import retrain_flow

    _print(_run("retrain", retrain_flow, stages=4, force_promote=force_promote, trigger="manual",
                evidence={"reason": reason}))


@app.command()
def monitor(at: str | None = typer.Option(None, help="the look's end (ISO time; default now)")) -> None:
    """One monitor look now: drift, online quality, performance, volume (a monitor flow run)."""
    settings()
    from recops.flows.pipeline import monitor_flow

    when = None if at is None else pd_timestamp(at)
    _print(_run("monitor", monitor_flow, at=when))


def pd_timestamp(text: str) -> float:
    """An ISO time (UTC unless it says otherwise) as epoch seconds."""
    import pandas as pd

    try:
        t = pd.Timestamp(text)
    except ValueError:
        raise typer.BadParameter(f"not a time: {text!r}") from None
    return (t if t.tzinfo else t.tz_localize("UTC")).value / 1e9


@app.command()
def demo(
    n_events: int = typer.Option(60_000, help="synthetic events to generate"),
    port: int = typer.Option(3077, help="port for the demo server"),
    keep: bool = typer.Option(False, help="keep the previous demo state instead of starting fresh"),
) -> None:
    """Generate data, run the whole pipeline (real Prefect flows), serve, send requests, stop."""
    home = Path(_state["settings"].home)
    if home.name == ".recops" and "RECOPS_HOME" not in os.environ:
        home = Path(".recops-demo")
    if home.exists() and not keep:
        shutil.rmtree(home)
    _state["settings"] = load_settings(home=home)
    s = settings()
    import httpx

    from recops.flows.pipeline import pipeline_flow

    console.rule("[bold]1. pipeline: ingest → validate → features → train → evaluate → promote")
    res = _run("pipeline flow run", pipeline_flow, stages=6, n_events=n_events, bad_share=0.01)
    v, t, p = res["validate"], res["train"], res["promote"]
    console.print(f"  validated {v['rows']} rows: {v['bad_rows']} quarantined ({v['bad_share']:.2%}), "
                  f"report {v['report']}")
    m = t["metrics"]
    console.print(f"  trained version {t['version']}: NDCG@{s.k} {m[f'ndcg_at_{s.k}']:.4f} vs popularity "
                  f"{m[f'baseline_ndcg_at_{s.k}']:.4f}; recall@{s.k} {m[f'recall_at_{s.k}']:.4f} "
                  f"vs {m[f'baseline_recall_at_{s.k}']:.4f}")
    console.print(f"  promote: {p['reason']}")

    console.rule("[bold]2. serve the champion and call it")
    os.environ.setdefault("BENTOML_HOME", server_home(s, port))
    proc = subprocess.Popen(server_command(s, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://{s.serve_host}:{port}"
    try:
        _wait_ready(base, proc)
        from recops.store import EventStore

        store = EventStore(s.event_store_uri)
        ev = store.events()
        items = store.items().set_index("item_id")
        store.dispose()
        known = ev["user_id"].value_counts().index[0]
        from recops.auth import READ, TRACK, TokenStore

        tokens = TokenStore(EventStore(s.event_store_uri).engine)
        name = f"demo-{int(time.time())}"  # --keep: an earlier demo's token keeps its name
        key = tokens.create(name, frozenset({READ, TRACK}))
        console.print(f"  API token {name!r} (scopes read, track), as `recops token create --scope read,track "
                      f"--name {name}` makes one; every call below sends 'Authorization: Bearer {key[:7]}…'",
                      soft_wrap=True)
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
            _show(c, "a known user", {"user_id": known, "k": 5}, items)
            _show(c, "a new user (fallback to trending)", {"user_id": "demo-new-user", "k": 5}, items)
            # a user whose recommendations change after tracked events
            user = ev["user_id"].value_counts().index[len(ev["user_id"].unique()) // 2]
            before = _show(c, f"user {user} before new events", {"user_id": user, "k": 5}, items)
            top = items.loc[[i for i in before if i in items.index], "category"]
            other = items[~items["category"].isin(set(top))]
            target_cat = other["category"].value_counts().index[0]
            viewed = other[other["category"] == target_cat].index[:4].tolist()
            r = c.post("/track/batch", json=[{"user_id": user, "item_id": i, "event_type": et}
                                             for i in viewed for et in ("view", "click")])
            console.print(f"  tracked {len(viewed) * 2} events on {target_cat} items {viewed}: {r.json()}")
            after = _show(c, f"user {user} right after", {"user_id": user, "k": 5}, items)
            changed = len(set(after) - set(before))
            in_cat = lambda ids: sum(items.loc[i, "category"] == target_cat for i in ids if i in items.index)
            console.print(f"  → {changed} of 5 recommendations changed; {target_cat} items: "
                          f"{in_cat(before)} → {in_cat(after)}")
            _behavioral_tour(c, known, viewed, items)
            console.print(f"  /model: version {c.get('/model').json()['version']}; "
                          f"/health: {c.get('/health').json()['status']}")
            console.rule("[bold]3. an online experiment: a challenger trained on more data, against the champion")
            _experiment_tour(s, c, ev, items)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    console.rule("[bold]4. look around")
    console.print(f"  MLflow UI:  {Path(sys.executable).with_name('mlflow')} ui --backend-store-uri {s.tracking_uri} "
                  "--port 5000")
    console.print(f"  Prefect UI: PREFECT_HOME={os.environ['PREFECT_HOME']} PREFECT_SERVER_ANALYTICS_ENABLED=false "
                  "PREFECT_SERVER_UI_API_URL=http://127.0.0.1:4200/api "
                  f"{Path(sys.executable).with_name('prefect')} server start --port 4200")
    console.print(f"  Operate:    RECOPS_HOME={Path(s.home).resolve()} recops schedule   (Prefect server, every "
                  "deployment, the monitor; Ctrl-C stops)")
    console.print(f"  Reports:    {s.reports_dir}")
    console.print(f"  Serve it:   RECOPS_HOME={Path(s.home).resolve()} recops serve")
    console.print("[green]demo finished; the server is stopped.")


def _experiment_tour(s: Settings, c, ev, items, users: int = 300) -> None:
    """Train a challenger on everything stored now (the demo's tracked events too), A/B test it
    against the champion with simulated shoppers over HTTP, and run one ab-evaluate flow."""
    import numpy as np

    from recops.experiments import lifecycle
    from recops.flows.pipeline import ab_evaluate_flow, features_flow, train_flow

    _run("features + train the challenger", lambda: (features_flow(), train_flow())[1], stages=2)
    name = f"demo-{int(time.time())}"
    st = lifecycle.start(s, name, "@challenger", share=0.5)
    console.print(f"  started {name}: v{st['challenger']} against @champion v{st['control']}, A/B, share 0.5, "
                  "metric ctr", soft_wrap=True)
    t0 = time.time()
    while c.get("/health").json()["experiment"] != name and time.time() - t0 < 3 * s.reload_interval_seconds + 30:
        time.sleep(0.5)
    # simulated shoppers: they click items of their own two favourite categories, more often near the top
    rng = np.random.default_rng(0)
    cat = ev.merge(items[["category"]], left_on="item_id", right_index=True)
    fav = cat.groupby("user_id")["category"].agg(lambda x: set(x.value_counts().index[:2]))
    category = items["category"].to_dict()
    shoppers = ev["user_id"].value_counts().index[:users]
    sent = {"control": 0, "challenger": 0}
    for u in shoppers:
        clicks = []
        for _ in range(2):
            r = c.post("/recommend", json={"user_id": u, "k": 10}).json()
            sent[r["variant"] or "control"] += 1
            for it in r["items"]:
                liked = category.get(it["item_id"]) in fav.get(u, set())
                if rng.random() < (0.25 if liked else 0.03) / np.log2(it["rank"] + 1):
                    clicks.append({"user_id": u, "item_id": it["item_id"], "event_type": "click",
                                   "request_id": r["request_id"]})
        if clicks:
            c.post("/track/batch", json=clicks)
    console.print(f"  {len(shoppers)} simulated shoppers, 2 lists each: {sent['control']} lists from control, "
                  f"{sent['challenger']} from the challenger", soft_wrap=True)
    res = _run("ab-evaluate flow run", ab_evaluate_flow, name=name)
    st = lifecycle.status(s, name)
    _brief(st)
    console.print(f"  decision: {res['decision']['action']}: {res['decision']['reason']}", soft_wrap=True)
    console.print(f"  in MLflow: experiment [bold]{lifecycle.mlflow_experiment_name(name)}[/], run "
                  f"{res['mlflow_run_id']}; `recops experiment status {name}` shows it again", soft_wrap=True)


def _behavioral_tour(c, user: str, viewed: list[str], items) -> None:
    """The behavioral endpoints, once each: an anonymous session, next items, why, deals."""
    sid = f"demo-session-{int(time.time())}"
    c.post("/track/batch", json=[{"session_id": sid, "item_id": i, "event_type": "view"} for i in viewed[:3]])
    r = c.post("/session/recommend", json={"session_id": sid, "k": 3}).json()
    console.print(f"[bold]an anonymous session[/] viewed {viewed[:3]}: intent {r['intent']} ({r['intent_reason']})")
    for it in r["items"]:
        console.print(f"   {it['rank']}. {it['item_id']:<7} "
                      f"{items.loc[it['item_id'], 'category'] if it['item_id'] in items.index else '?':<12} "
                      f"{it['reason']}")
    nxt = c.post("/next-items", json={"recent_item_ids": viewed[:1], "k": 3}).json()["items"]
    console.print(f"[bold]next after {viewed[0]}[/]: " + "; ".join(f"{it['item_id']} ({it['reason']})" for it in nxt))
    top = c.post("/recommend", json={"user_id": user, "k": 1}).json()["items"][0]["item_id"]
    why = c.get("/explain", params={"user_id": user, "item_id": top}).json()
    console.print(f"[bold]why {top} for {user}[/] (scorer: {why['scorer']}): "
                  + "; ".join(x["reason"] for x in why["contributions"][:3]))
    deals = c.post("/deals", json={"user_id": user, "k": 3}).json()
    console.print(f"[bold]deals for {user}[/] (price sensitivity {deals['price_sensitivity']:.2f}, "
                  f"cap {deals['max_discount']:.0%}):")
    for d in deals["deals"]:
        console.print(f"   {d['item_id']:<7} {d['list_price']:>8.2f} → {d['deal_price']:>8.2f}  {d['reason']}")


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the server at {base} was not ready after {timeout}s")


def _show(client, title: str, body: dict, items) -> list[str]:
    r = client.post("/recommend", json=body).json()
    flag = f" [yellow]fallback: {r['fallback_reason']}[/]" if r["fallback"] else ""
    console.print(f"[bold]{title}[/] (model v{r['model_version']}){flag}")
    for it in r["items"]:
        cat = items.loc[it["item_id"], "category"] if it["item_id"] in items.index else "?"
        console.print(f"   {it['rank']}. {it['item_id']:<7} {cat:<12} {it['score']:>8.3f}  {it['reason']}")
    return [it["item_id"] for it in r["items"]]


experiment_app = typer.Typer(help="Online experiments: A/B tests and interleaving against @champion.",
                              no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _experiment_call(fn, *args, **kwargs) -> dict:
    """Run an experiment operation; a refused request is a one-line error and exit code 2, nothing changed."""
    from recops.experiments.records import ExperimentError

    try:
        return fn(settings(), *args, **kwargs)
    except ExperimentError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


def _brief(st: dict) -> None:
    """A status in a few lines: the variants' figures, lift, p-values, decision."""
    console.print(f"[bold]{st['name']}[/] {st['status']}: v{st['challenger']} against v{st['control']} "
                  f"({st['method']}, share {st['share']:.2f}, metric {st['metric']})", soft_wrap=True)
    for v, f in st["variants"].items():
        rate = f.get({"ctr": "ctr", "conversion": "conversion_rate", "revenue": "revenue_per_impression"}[st["metric"]])
        console.print(f"  {v:<12} users {f['users']:>6}  lists {f['impressions']:>7}  clicks {f['clicks']:>6}  "
                      f"conversions {f['conversions']:>5}  revenue {f['revenue']:>9.2f}  {st['metric']} "
                      f"{'n/a' if rate is None else format(rate, '.4f')}  fallback lists {f['fallback_impressions']}",
                      soft_wrap=True)
    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)
    ci = st["ci"] or [None, None]
    console.print(f"  lift {fmt(st['lift'], '+.2%')} (95% CI {fmt(ci[0], '+.2%')} .. {fmt(ci[1], '+.2%')}), "
                  f"always-valid p {fmt(st['p_value'], '.3g')}, SRM p {fmt(st['srm_p_value'], '.3g')}", soft_wrap=True)
    d = st.get("decision")
    console.print(f"  last decision: {d['action']}: {d['reason']}" if d else "  no evaluation yet", soft_wrap=True)


@experiment_app.command("start")
def experiment_start(
    name: str = typer.Argument(..., help="a new experiment name"),
    challenger: str = typer.Option(..., "--challenger", help="a registry version (e.g. 4) or an alias (@challenger)"),
    method: str = typer.Option("ab", "--method", help="ab | interleave"),
    traffic: float = typer.Option(0.05, "--traffic", help="the challenger's traffic share, 0-1"),
    metric: str = typer.Option("ctr", "--metric", help="the primary metric: ctr | conversion | revenue"),
) -> None:
    """Start testing a challenger against @champion (one experiment at a time)."""
    from recops.experiments.lifecycle import start

    _brief(_experiment_call(start, name, challenger, method=method, share=traffic, metric=metric))


@experiment_app.command("status")
def experiment_status(name: str = typer.Argument(...),
                      as_json: bool = typer.Option(False, "--json", help="the full status as JSON")) -> None:
    """An experiment's figures now, its last decision and history."""
    from recops.experiments.lifecycle import dumps, status

    st = _experiment_call(status, name)
    typer.echo(dumps(st)) if as_json else _brief(st)


@experiment_app.command("ramp")
def experiment_ramp(name: str = typer.Argument(...), share: float = typer.Argument(..., help="0-1")) -> None:
    """Set a running experiment's challenger share by hand (users in the challenger stay there when it rises)."""
    from recops.experiments.lifecycle import ramp

    _brief(_experiment_call(ramp, name, share))


@experiment_app.command("stop")
def experiment_stop(name: str = typer.Argument(...),
                    promote: bool = typer.Option(False, "--promote", help="promote the challenger to @champion"),
                    rollback: bool = typer.Option(False, "--rollback", help="roll back: share 0")) -> None:
    """End a running experiment: stop, promote its challenger, or roll it back."""
    from recops.experiments.lifecycle import stop

    _brief(_experiment_call(stop, name, promote=promote, rollback=rollback))


@experiment_app.command("list")
def experiment_list() -> None:
    """Every experiment, newest first."""
    from recops.experiments.lifecycle import records

    for e in _experiment_call(lambda s: records(s).list()):
        typer.echo(f"{e.name}\t{e.status}\tv{e.challenger} vs v{e.control}\t{e.method}\tshare {e.share:.2f}\t"
                   f"{e.metric}")


@experiment_app.command("evaluate")
def experiment_evaluate(name: str | None = typer.Argument(None, help="default: the running experiment")) -> None:
    """Evaluate the running experiment now and apply the policy (the ab-evaluate flow, as one run)."""
    settings()
    from recops.flows.pipeline import ab_evaluate_flow

    _print(_run("ab-evaluate", ab_evaluate_flow, name=name))


token_app = typer.Typer(help="API tokens: who may call the HTTP API, with which scopes (read, track, admin, metrics).",
                         no_args_is_help=True)
app.add_typer(token_app, name="token")


def _tokens():
    """The token store of this invocation's event store."""
    from recops.auth import TokenStore
    from recops.store import EventStore

    return TokenStore(EventStore(settings().event_store_uri).engine)


def _token_call(fn, *args):
    """Run a token operation; a refused request is a one-line error and exit code 2, nothing changed."""
    from recops.auth import TokenError

    try:
        return fn(*args)
    except TokenError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


@token_app.command("create")
def token_create(scope: str = typer.Option(..., "--scope", help="comma-separated: read, track, admin, metrics"),
                 name: str = typer.Option(..., "--name", help="what the token is for (unique)"),
                 rate: float | None = typer.Option(None, "--rate", help="its own limit, requests/s (0: none; "
                                                   "default: the rate_limit_per_second setting)")) -> None:
    """Create a token; it is printed once, alone on the last line (the database keeps only its digest)."""
    from recops.auth import parse_scopes

    scopes = _token_call(parse_scopes, scope)
    token = _token_call(_tokens().create, name, scopes, rate)
    console.print(f"token {name!r} with scopes {', '.join(sorted(scopes))}: send it as "
                  "'Authorization: Bearer <token>'; it is not shown again", soft_wrap=True)
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="the token's name")) -> None:
    """Revoke a token: servers refuse it within auth_refresh_seconds."""
    _token_call(_tokens().revoke, name)
    console.print(f"revoked {name!r}")


@token_app.command("list")
def token_list() -> None:
    """Every token (name, scopes, created, revoked), newest first; never the tokens themselves."""
    import time

    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"
    for t in _tokens().list():
        rate = "default rate" if t["rate"] is None else f"{t['rate']:g}/s"
        typer.echo(f"{t['name']}\t{','.join(t['scopes'])}\t{rate}\tcreated {fmt(t['created_at'])}\t"
                   f"{'revoked ' + fmt(t['revoked_at']) if t['revoked_at'] else 'active'}")


@app.command()
def segments(as_json: bool = typer.Option(False, "--json", help="the fit as JSON")) -> None:
    """The user segments the features step fitted: size, region, age group, price sensitivity, categories."""
    s = settings()
    from recops.segments import Segments, summary_json

    if not s.segments_path.exists():
        console.print(f"[red]error:[/] no user segments yet ({s.segments_path}): run recops features", soft_wrap=True)
        raise typer.Exit(2)
    seg = Segments.load(s.segments_path)
    if as_json:
        typer.echo(summary_json(seg))
        return
    typer.echo(f"{seg.k} segments (silhouette {seg.silhouettes[seg.k]:.3f}; tried k = "
               f"{', '.join(f'{k}: {v:.3f}' for k, v in seg.silhouettes.items())})")
    typer.echo(f"{'segment':>7} {'users':>6} {'share':>6}  {'region':<9} {'age':<6} {'price sens.':>11}  "
               "top categories")
    for r in seg.summary:
        typer.echo(f"{r['segment']:>7} {r['size']:>6} {r['share']:>6.1%}  {r['dominant_region'] or '-':<9} "
                   f"{r['dominant_age_group'] or '-':<6} {r['mean_price_sensitivity']:>11.3f}  "
                   f"{', '.join(r['top_categories'])}")


@app.command()
def status() -> None:
    """What the local state holds: events, quarantine, the champion and challenger, the last runs of each
    deployment (when a Prefect server is configured or running), the last monitor look and any alarm."""
    s = settings()
    from recops import registry
    from recops.store import EventStore

    store = EventStore(s.event_store_uri)
    out = {"home": str(Path(s.home).resolve()), "profile": s.profile, "events": store.count_events(),
           "quarantined": store.count_quarantined(),
           "champion": registry.alias_version(s, registry.CHAMPION),
           "challenger": registry.alias_version(s, registry.CHALLENGER)}
    store.dispose()
    latest = s.reports_dir / "monitor-latest.json"
    if latest.exists():
        look = json.loads(latest.read_text())
        out["monitor"] = {"at": pd_iso(look.get("at")), "version": look.get("version"), "alarms": look.get("alarms"),
                          "drifted": look.get("drift", {}).get("drifted"), "new_events": look.get("new_events"),
                          "online": look.get("quality"), "report": look.get("report")}
    out["deployments"] = _last_runs(s)
    typer.echo(json.dumps(out, indent=2, default=str))


def pd_iso(epoch: float | None) -> str | None:
    """Epoch seconds as an ISO time (UTC)."""
    import datetime as dt

    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def _last_runs(s: Settings, per_deployment: int = 3) -> dict | str:
    """Each deployment's latest flow runs on the Prefect server (the settings' or a local one running)."""
    import httpx

    from recops.flows.server import running_api

    api = s.prefect_api_url or running_api(Path(s.home) / "prefect")
    if api is None:
        return "no Prefect server runs for this home (recops schedule starts one)"
    try:
        deps = httpx.post(f"{api}/deployments/filter", json={"limit": 50}, timeout=3).json()
        started = {"state": {"type": {"any_": ["RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"]}}}
        out = {}
        for d in deps:
            runs = httpx.post(f"{api}/flow_runs/filter", timeout=3, json={
                "deployments": {"id": {"any_": [d["id"]]}}, "flow_runs": started, "sort": "START_TIME_DESC",
                "limit": per_deployment}).json()
            out[d["name"]] = {"schedule": [x["schedule"].get("cron") for x in d.get("schedules", [])],
                              "last_runs": [{"state": r["state_name"], "start": r["start_time"],
                                             "trigger": r["parameters"].get("trigger")} for r in runs]}
        return out
    except (httpx.HTTPError, ValueError):
        return f"the Prefect server at {api} does not answer"


if __name__ == "__main__":
    app()
