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
def train_flow() -> dict:
    """Point-in-time training data, LightGBM ranker, MLflow run, registered version @challenger."""
    res = steps.train(load_settings())
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
def retrain_flow(force_promote: bool = False) -> dict:
    """Features -> train -> evaluate -> promote on what the event store holds now (the scheduled job).

    Args:
        force_promote: promote the new version even when it is worse than the champion.
    """
    feats = features_flow()
    trained = train_flow()
    evaluated = evaluate_flow()
    promoted = promote_flow(force=force_promote)
    return {"features": feats, "train": trained, "evaluate": evaluated, "promote": promoted}


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
