"""Prefect flows: thin shells over ``recops.steps``. Each step is a flow; ``pipeline`` chains them.

Flows read their settings from the environment (``RECOPS_*``), so a deployment run by a worker or by
``flow.serve`` sees the same backends as the CLI that created it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from recops import steps
from recops.config import load_settings


def _log(result: dict, title: str) -> dict:
    get_run_logger().info("%s: %s", title, steps.to_json(result))
    return {k: v for k, v in result.items() if k not in ("per_user_ndcg", "users")}


def _table(d: dict) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(d.items()))
    return "| metric | value |\n|---|---|\n" + rows


@flow(name="ingest", log_prints=True)
def ingest_flow(source: str = "synthetic", path: str | None = None, n_events: int = 100_000, seed: int = 42,
                bad_share: float = 0.01, end: str | None = None, mapping: dict[str, str] | None = None,
                items_path: str | None = None, users_path: str | None = None) -> dict:
    """Load a source (synthetic, movielens, online-retail, otto, file) into a staging batch.

    Args:
        source: synthetic, file, or a public data set (movielens, online-retail, otto).
        path: the data set's folder or the events file (all sources but synthetic).
        n_events: synthetic: about how many events.
        seed: synthetic: the random seed.
        bad_share: synthetic: the share of malformed rows.
        end: synthetic: when the data ends (default today).
        mapping: file: ``{recops_column: file_column}``.
        items_path: file: an optional item catalog file.
        users_path: file: an optional user demographics file.
    """
    return _log(steps.ingest(load_settings(), source=source, path=path, n_events=n_events, seed=seed,
                             bad_share=bad_share, end=end, mapping=mapping, items_path=items_path,
                             users_path=users_path), "ingest")


@flow(name="validate")
def validate_flow(batch_id: str) -> dict:
    """Great Expectations on the staged batch; quarantine bad rows; load good ones.

    Args:
        batch_id: the staged batch, as returned by the ingest flow.
    """
    try:
        res = steps.validate(load_settings(), batch_id)
    except steps.StepFailed as exc:
        create_markdown_artifact(f"**Validation failed**\n\n{exc}", key="validation-report",
                                 description="validation")
        raise
    create_markdown_artifact(
        f"Batch `{batch_id}`: {res['rows']} rows, {res['bad_rows']} quarantined ({res['bad_share']:.2%}).\n\n"
        + _table(res["failed_expectations"] or {"all expectations": "passed"}) + f"\n\nReport: `{res['report']}`",
        key="validation-report", description="event validation")
    return _log(res, "validate")


@flow(name="features")
def features_flow() -> dict:
    """Offline feature tables (validated) -> Feast parquet -> materialize to the online store; then
    the user segments (K-Means, logged to MLflow)."""
    settings = load_settings()
    res = steps.build_features(settings)
    res["segments"] = {k: v for k, v in steps.segment_users(settings).items() if k != "segments"}
    return _log(res, "features")


@flow(name="train")
def train_flow(trigger: str = "manual", evidence: dict | None = None) -> dict:
    """Point-in-time training data, LightGBM ranker, MLflow run, registered version @challenger.

    Args:
        trigger: what started it: schedule, volume, drift, performance or manual (recorded on the run).
        evidence: why (the monitor's figures, or a person's reason).
    """
    res = steps.train(load_settings(), trigger=trigger, evidence=evidence)
    create_markdown_artifact(f"Registered version {res['version']} (@challenger), run `{res['run_id']}`\n\n"
                             + _table(res["metrics"]), key="training-metrics", description="training metrics")
    return _log(res, "train")


@flow(name="train-from-file")
def train_file_flow(events_path: str, items_path: str | None = None, users_path: str | None = None,
                    mapping: dict[str, str] | None = None) -> dict:
    """Any events file (CSV/Parquet): ingest -> validate -> features -> train, each a real subflow run.

    Args:
        events_path: the events file.
        items_path: an optional item catalog file.
        users_path: an optional user demographics file.
        mapping: ``{recops_column: file_column}`` renames.
    """
    batch = ingest_flow(source="file", path=events_path, mapping=mapping, items_path=items_path, users_path=users_path)
    validated = validate_flow(batch["batch_id"])
    feats = features_flow()
    trained = train_flow()
    return {"ingest": batch, "validate": validated, "features": feats, "train": trained}


@flow(name="batch-recommend")
def recommend_flow(users_path: str, out_path: str, k: int | None = None, version: str | None = None,
                   alias: str | None = None) -> dict:
    """Batch scoring: top-k per user from a file into a CSV (e-mail campaigns, offline evaluation).

    Args:
        users_path: CSV with a user_id column (or one id per line).
        out_path: the CSV to write: user_id, item_id, rank, score.
        k: items per user (default: the ``k`` setting).
        version: the registered version to score with (default: the newest).
        alias: or the alias whose version to score with, e.g. champion.
    """
    res = steps.recommend_users(load_settings(), users_path, out_path, k=k, version=version, alias=alias)
    create_markdown_artifact(f"Scored {res['users']} users with version {res['version']} → `{res['out']}` "
                             f"({res['rows']} rows, {res['fallback_users']} users on the fallback)",
                             key="batch-recommend", description="batch scoring")
    return _log(res, "batch-recommend")


@flow(name="batch-next-items")
def next_items_flow(sessions_path: str, out_path: str, k: int = 20, version: str | None = None,
                    alias: str | None = None) -> dict:
    """Offline next-item evaluation: the served model's top-k after every prefix of every session.

    Args:
        sessions_path: CSV with session_id, item_id, timestamp.
        out_path: the CSV to write: session_id, step, item_id, rank.
        k: items per prefix.
        version: the registered version to use (default: the newest).
        alias: or the alias whose version to use, e.g. champion.
    """
    res = steps.next_items_batch(load_settings(), sessions_path, out_path, k=k, version=version, alias=alias)
    create_markdown_artifact(f"Next items for {res['sessions']} sessions with version {res['version']} "
                             f"→ `{res['out']}` ({res['rows']} rows)", key="batch-next-items",
                             description="batch next items")
    return _log(res, "batch-next-items")


@flow(name="evaluate")
def evaluate_flow() -> dict:
    """@challenger vs @champion on the same holdout."""
    return _log(steps.evaluate(load_settings()), "evaluate")


@flow(name="promote")
def promote_flow(force: bool = False) -> dict:
    """Move @champion when the challenger is not worse (or when forced).

    Args:
        force: promote even without an evaluation, or when the challenger is worse.
    """
    return _log(steps.promote(load_settings(), force=force), "promote")


@flow(name="pipeline")
def pipeline_flow(source: str = "synthetic", path: str | None = None, n_events: int = 100_000, seed: int = 42,
                  bad_share: float = 0.01, end: str | None = None, force_promote: bool = False) -> dict:
    """ingest -> validate -> features -> train -> evaluate -> promote, each a real (sub)flow run.

    Args:
        source, path, n_events, seed, bad_share, end: what to ingest, as for ``ingest_flow``.
        force_promote: promote the new version even when it is worse than the champion.
    """
    batch = ingest_flow(source=source, path=path, n_events=n_events, seed=seed, bad_share=bad_share, end=end)
    validated = validate_flow(batch["batch_id"])
    feats = features_flow()
    trained = train_flow()
    evaluated = evaluate_flow()
    promoted = promote_flow(force=force_promote)
    return {"ingest": batch, "validate": validated, "features": feats, "train": trained,
            "evaluate": evaluated, "promote": promoted}


@flow(name="retrain")
def retrain_flow(force_promote: bool = False, trigger: str = "schedule", evidence: dict | None = None) -> dict:
    """Features -> train -> evaluate -> promote on what the event store holds now.

    Scheduled (nightly, weekly), started by the monitor's events (volume, drift, performance: the
    deployment's triggers) or by hand (``recops retrain --reason``). What started it is a tag of this
    flow run (``trigger:<name>``), and a tag and parameter of the training run. An event-triggered run
    within ``retrain_cooldown_hours`` of the last training does nothing (the alarms of one change
    arrive hour after hour).

    Args:
        force_promote: promote the new version even when it is worse than the champion.
        trigger: schedule, volume, drift, performance or manual.
        evidence: the monitor's figures (or the reason given by hand).
    """
    if trigger not in steps.TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}: one of {', '.join(steps.TRIGGERS)}")
    _tag_run(f"trigger:{trigger}")
    settings = load_settings()
    if trigger in ("volume", "drift", "performance"):
        age = steps.last_training_age_hours(settings)
        if age < settings.retrain_cooldown_hours:
            get_run_logger().info("%s alarm ignored: the last training started %.1f h ago (cool-down %.1f h)",
                                  trigger, age, settings.retrain_cooldown_hours)
            return {"skipped": f"cool-down: the last training started {age:.1f} h ago", "trigger": trigger}
    feats = features_flow()
    trained = train_flow(trigger=trigger, evidence=evidence)
    evaluated = evaluate_flow()
    promoted = promote_flow(force=force_promote)
    return {"features": feats, "train": trained, "evaluate": evaluated, "promote": promoted, "trigger": trigger}


def _tag_run(*tags: str) -> None:
    """Add tags to the running flow run (the Prefect UI filters runs by them)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, tags=sorted({*run.tags, *tags}))


ALARM_EVENTS = {"drift": "recops.drift.detected", "volume": "recops.volume.reached",
                "performance": "recops.performance.dropped"}


@flow(name="monitor")
def monitor_flow(at: float | None = None) -> dict:
    """Watch the champion: drift against its training reference, online quality, performance, volume.

    Each alarm becomes a Prefect event (``ALARM_EVENTS``) that the retrain deployment's triggers
    answer, unless a retrain ran within the cool-down.

    Args:
        at: the end of the look (epoch seconds); None: now.
    """
    from prefect.events import emit_event

    res = steps.monitor(load_settings(), at)
    if res.get("version") is None:
        get_run_logger().info("no champion to watch yet")
        return res
    emitted = []
    for alarm in res["alarms"] if not res["cooling_down"] else []:
        evidence = _evidence(res, alarm)
        emit_event(ALARM_EVENTS[alarm], resource={"prefect.resource.id": f"recops.model.{res['version']}",
                                                  "prefect.resource.name": f"champion v{res['version']}"},
                   payload={"trigger": alarm, "evidence": evidence})
        emitted.append(ALARM_EVENTS[alarm])
    res["emitted"] = emitted
    d, q = res["drift"], res["quality"]
    rows = {k: v for k, v in {**d, **{f"online_{k}": v for k, v in q.items()}}.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    create_markdown_artifact(
        f"**Champion v{res['version']}**: alarms {', '.join(res['alarms']) or 'none'}"
        + (" (cool-down: not acted on)" if res["cooling_down"] and res["alarms"] else "")
        + f"; {res['new_events']} events since its training cut. Drifted: {', '.join(d['drifted']) or 'nothing'}.\n\n"
        + _table(rows) + f"\n\nReport: `{res['report']}`; MLflow run `{res['mlflow_run_id']}`.",
        key="monitor", description="monitoring look")
    return _log(res, "monitor")


def _evidence(res: dict, alarm: str) -> dict:
    """What an alarm rests on, for the retrain it starts."""
    if alarm == "drift":
        d = res["drift"]
        return {"drifted": d["drifted"], "at": res["at"], "version": res["version"],
                **{k: round(d[k], 4) for k in d["drifted"] if isinstance(d.get(k), float)}}
    if alarm == "volume":
        return {"new_events": res["new_events"], "at": res["at"], "version": res["version"]}
    p = res["performance"]
    return {"dropped": p["dropped"], "at": res["at"], "version": res["version"],
            **{f"{m}_lift": round(p[f"{m}_lift"], 4) for m in p["dropped"]}}


@flow(name="ab-evaluate")
def ab_evaluate_flow(name: str | None = None) -> dict:
    """Evaluate the running online experiment and apply the policy (ramp, promote, roll back, hold,
    continue or stop); one MLflow run per evaluation, every decision in the experiment's history.

    Args:
        name: the experiment; None: the running one (nothing to do when none runs).
    """
    from recops.experiments.lifecycle import evaluate, mlflow_experiment_name

    res = evaluate(load_settings(), name)
    if res["experiment"] is None:
        get_run_logger().info("no experiment is running: nothing to evaluate")
        return res
    d, v = res["decision"], res["variants"]
    rows = "\n".join(f"| {k} | {f['users']} | {f['impressions']} | {f['clicks']} | {f['conversions']} | "
                     f"{f['revenue']:.2f} | {f['fallback_impressions']} |" for k, f in v.items())
    create_markdown_artifact(
        f"**{res['experiment']}: {d['action']}**: {d['reason']}\n\n| variant | users | lists | clicks | conversions "
        f"| revenue | fallback lists |\n|---|---|---|---|---|---|---|\n{rows}\n\nlift {res['lift']}, CI {res['ci']}, "
        f"always-valid p {res['p_value']}, SRM p {res['srm_p_value']}. MLflow experiment "
        f"`{mlflow_experiment_name(res['experiment'])}`, run `{res['mlflow_run_id']}`.",
        key="ab-evaluation", description="online experiment evaluation")
    return _log(res, "ab-evaluate")
