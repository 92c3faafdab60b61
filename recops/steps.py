"""The lifecycle steps as plain functions: ingest, validate, features, train, evaluate, promote.

Prefect flows, the CLI and tests call these. Each step reads and writes durable state (staging
files, the event store, Feast, the MLflow registry) so that a failed step leaves the previous good
state serving and a step can be re-run on its own.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from recops.config import Settings
from recops.models.rules import BusinessRules
from recops.schema import with_actors
from recops.store import EventStore


class StepFailed(RuntimeError):
    """A step refused to go on (bad data, nothing to train on); nothing downstream was changed."""


_listeners: list = []


def add_listener(fn) -> None:
    """``fn(step, phase, seconds)`` is called when a step starts and ends (the CLI's progress bar).

    Args:
        fn: called with the step's name, ``"start"`` or ``"end"``, and the step's duration in seconds
            (0.0 at the start).
    """
    _listeners.append(fn)


def remove_listener(fn) -> None:
    """Stop calling a listener registered with ``add_listener``.

    Args:
        fn: the registered callable.

    Raises:
        ValueError: ``fn`` is not registered.
    """
    _listeners.remove(fn)


def _timed(fn):
    def wrapper(*args, **kwargs):
        for cb in _listeners:
            cb(fn.__name__, "start", 0.0)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        out["seconds"] = round(time.perf_counter() - t0, 3)
        for cb in _listeners:
            cb(fn.__name__, "end", out["seconds"])
        return out

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


# -- ingest -------------------------------------------------------------------------------------
@_timed
def ingest(settings: Settings, source: str = "synthetic", path: str | None = None, n_events: int = 100_000,
           seed: int = 42, bad_share: float = 0.01, end: str | None = None, mapping: dict | None = None,
           items_path: str | None = None, users_path: str | None = None) -> dict:
    """Load a source into a staging batch (parquet); nothing reaches the event store before validation.

    Args:
        settings: the settings (the batch goes under ``staging_dir``).
        source: ``"synthetic"`` (generated data), ``"file"`` (a generic CSV/Parquet events file) or a named
            public data set (``recops.importers.SOURCES``).
        path: the data set's directory or the events file; required unless ``source`` is synthetic.
        n_events: synthetic only: about how many valid events to generate.
        seed: synthetic only: the random seed.
        bad_share: synthetic only: share of malformed events added (for validation to catch).
        end: synthetic only: the time the data ends (parseable by ``pd.Timestamp``, UTC); None: today, 00:00 UTC.
        mapping: file only: ``{recops_column: file_column}``.
        items_path: file only: an optional items (catalog) file.
        users_path: file only: an optional users file.

    Returns:
        ``batch_id``, ``source``, the ``events``, ``items`` and ``users`` row counts, ``staging`` (the
        batch's directory) and ``seconds``.

    Raises:
        StepFailed: unknown source, a missing ``path``, or a file that cannot be read or mapped.
    """
    from recops import importers
    from recops.generate import generate

    settings.ensure_dirs()
    if source == "synthetic":
        d = generate(n_events=n_events, seed=seed, bad_share=bad_share, end=end)
        from recops.schema import normalize_events, normalize_items, normalize_users

        ds = importers.Dataset(normalize_events(d.events), normalize_items(d.items), normalize_users(d.users))
    elif source in importers.SOURCES:
        if not path:
            raise StepFailed(f"source {source!r} needs --path to the data set")
        ds = importers.SOURCES[source](path)
    elif source == "file":
        if not path:
            raise StepFailed("source 'file' needs --path to a CSV/Parquet events file")
        try:
            ds = importers.load_generic(path, mapping=mapping, items_path=items_path, users_path=users_path)
        except (ValueError, FileNotFoundError) as exc:
            raise StepFailed(str(exc)) from exc
    else:
        raise StepFailed(f"unknown source {source!r}; choose synthetic, file or one of {sorted(importers.SOURCES)}")
    batch_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    d = settings.staging_dir / batch_id
    d.mkdir(parents=True)
    ds.events.to_parquet(d / "events.parquet", index=False)
    ds.items.to_parquet(d / "items.parquet", index=False)
    ds.users.to_parquet(d / "users.parquet", index=False)
    return {"batch_id": batch_id, "source": source, "events": len(ds.events), "items": len(ds.items),
            "users": len(ds.users), "staging": str(d)}


# -- validate -----------------------------------------------------------------------------------
@_timed
def validate(settings: Settings, batch_id: str, now: pd.Timestamp | None = None) -> dict:
    """Validate a staged batch; quarantine failing rows with their reasons; load the good ones.

    When the bad share exceeds ``max_bad_share`` the batch is quarantined but not loaded and the
    step fails: the store keeps its previous good state.

    Args:
        settings: the settings (validation limits, staging and reports directories, event store).
        batch_id: the staged batch, as returned by ``ingest``.
        now: the reference time for the too-old/in-the-future checks; None: the current time.

    Returns:
        ``batch_id``, ``rows``, ``bad_rows``, ``bad_share``, ``quarantined``, ``report`` (the HTML report's
        path), ``failed_expectations`` (expectation -> failing rows), ``loaded`` (events added),
        ``total_events`` (in the store afterwards) and ``seconds``.

    Raises:
        StepFailed: no such staged batch, or its bad share exceeds ``max_bad_share``.
    """
    from recops.validation import validate_events, write_report

    d = settings.staging_dir / batch_id
    if not (d / "events.parquet").exists():
        raise StepFailed(f"no staged batch {batch_id!r} in {settings.staging_dir}")
    events = pd.read_parquet(d / "events.parquet")
    outcome = validate_events(events, list(settings.event_types), settings.max_value, settings.max_event_age_days,
                              settings.future_tolerance_seconds, now=now)
    report = write_report([outcome], settings.reports_dir / f"validation-{batch_id}.html",
                          f"Validation of batch {batch_id}")
    store = EventStore(settings.event_store_uri)
    bad = events.loc[outcome.bad_index]
    quarantined = store.quarantine_rows(bad, outcome.reasons, batch_id=batch_id)
    result = {"batch_id": batch_id, "rows": outcome.rows, "bad_rows": len(bad),
              "bad_share": round(outcome.bad_share, 5), "quarantined": quarantined, "report": str(report),
              "failed_expectations": {s["expectation"]: s["unexpected"] for s in outcome.per_expectation
                                      if s["unexpected"]}}
    if outcome.bad_share > settings.max_bad_share:
        store.dispose()
        raise StepFailed(
            f"batch {batch_id}: {outcome.bad_share:.2%} of rows failed validation "
            f"(limit {settings.max_bad_share:.2%}); "
            f"{quarantined} rows quarantined, nothing loaded. Report: {report}"
        )
    good = events.drop(index=outcome.bad_index)
    result["loaded"] = store.add_events(good)
    items = pd.read_parquet(d / "items.parquet")
    users = pd.read_parquet(d / "users.parquet")
    if len(items):
        store.upsert_items(items)
    if len(users):
        store.upsert_users(users)
    result["total_events"] = store.count_events()
    store.dispose()
    return result


# -- features -----------------------------------------------------------------------------------
@_timed
def build_features(settings: Settings, until: pd.Timestamp | None = None) -> dict:
    """Compute the offline feature tables, validate them, write parquet, materialize online.

    Args:
        settings: the settings (event store, Feast, reports directory, rating semantics).
        until: the data's end: the time of the latest snapshot, materialized online; None: the newest
            event's time.

    Returns:
        ``user_rows`` and ``item_rows`` (snapshot rows written), ``users`` and ``items`` (distinct
        entities), ``until``, ``report`` (the HTML validation report's path) and ``seconds``.

    Raises:
        StepFailed: the event store is empty, or a feature table fails validation (nothing is written).
    """
    from recops.features import item_features, session_states, snapshot_points, user_features, user_recent
    from recops.featurestore import FeatureStoreClient
    from recops.validation import run_suite, write_report

    store = EventStore(settings.event_store_uri)
    events = with_actors(store.events())
    items = store.items()
    store.dispose()
    if events.empty:
        raise StepFailed("the event store is empty: ingest and validate a batch first")
    until = until or events["timestamp"].max()
    users_ev = events[events["user_id"].notna()]
    uf = user_features(users_ev, snapshot_points(users_ev, "user_id", until), items)
    itf = item_features(events, snapshot_points(events, "item_id", until))
    outcomes = [run_suite(uf, "user_features"), run_suite(itf, "item_features")]
    report = write_report(outcomes, settings.reports_dir / f"features-{int(time.time())}.html",
                          "Feature table validation")
    failed = [o for o in outcomes if not o.success]
    if failed:
        raise StepFailed("feature tables failed validation ("
                         + ", ".join(f"{o.suite}: {dict(o.reasons.value_counts())}" for o in failed)
                         + f"); the previous features keep serving. Report: {report}")
    fs = FeatureStoreClient(settings)
    # sessions still open for serving: those active in the last day of the data (the view's TTL is 2 days)
    recent = events[events["timestamp"] > until - pd.Timedelta(days=1)]
    latest = pd.DataFrame({"user_id": pd.unique(users_ev["user_id"].astype(str)), "as_of": until})
    fs.write_offline(uf, itf,
                     session_states(recent, items.set_index("item_id")["category"] if not items.empty else None),
                     user_recent(users_ev, latest, (settings.event_types, settings.decay_half_life_days)))
    fs.apply()
    fs.materialize(until)
    return {"user_rows": len(uf), "item_rows": len(itf), "until": str(until), "report": str(report),
            "users": int(uf["user_id"].nunique()), "items": int(itf["item_id"].nunique())}


@_timed
def segment_users(settings: Settings) -> dict:
    """Fit the user segments (K-Means, k by silhouette over ``segments_k``), keep them in home and
    log them to MLflow; a fit that cannot be made leaves the previous segments serving.

    Args:
        settings: the event store, ``segments_k`` and ``random_state``.

    Returns:
        ``k``, ``users``, ``silhouette`` (per k tried), ``segments`` (the summary), ``path``, ``run_id``;
        or ``skipped`` with the reason.
    """
    import mlflow

    from recops import registry
    from recops.profile import profile_features
    from recops.segments import category_shares, fit_segments, segment_features, summary_json

    store = EventStore(settings.event_store_uri)
    events, items, users = store.events(), store.items(), store.users()
    store.dispose()
    ev = events[events["user_id"].notna()]
    if ev.empty:
        return {"skipped": "no identified users to segment"}
    profiles = profile_features(ev, items, ev["timestamp"].max())
    shares = category_shares(ev, items.set_index("item_id")["category"] if not items.empty else pd.Series(dtype=str))
    x = segment_features(profiles, shares, users)
    lo, hi = (int(v) for v in settings.segments_k)
    try:
        seg = fit_segments(x, profiles, shares, users, (lo, hi), settings.random_state)
    except ValueError as exc:
        return {"skipped": str(exc)}
    tmp = settings.segments_path.with_suffix(".tmp")
    seg.save(tmp)
    tmp.replace(settings.segments_path)  # atomic: serving never reads half a file
    registry.setup(settings)
    with mlflow.start_run(run_name="segments") as run:
        mlflow.log_params({"segments_k_min": lo, "segments_k_max": hi, "k": seg.k, "users": len(x),
                           "features": ",".join(seg.columns)[:6000]})
        mlflow.log_metrics({f"silhouette_k{k}": v for k, v in seg.silhouettes.items()})
        mlflow.log_text(summary_json(seg), "segments.json")
    return {"k": seg.k, "users": len(x), "silhouette": seg.silhouettes, "segments": seg.summary,
            "path": str(settings.segments_path), "run_id": run.info.run_id}


# -- train --------------------------------------------------------------------------------------
TRIGGERS = ("schedule", "volume", "drift", "performance", "manual")  # what can start a training


@_timed
def train(settings: Settings, trigger: str = "manual", evidence: dict | None = None) -> dict:
    """Train on the event store with point-in-time features; log to MLflow; register @challenger.

    The run is named for what it is (version, events, data window, trigger) and carries tags, a
    description, the training events as its dataset input and the monitoring reference
    (``recops.monitoring.build_reference``) the monitor compares later windows with.

    Args:
        settings: the settings (event store, Feast, MLflow, training and rule settings).
        trigger: what started it (``TRIGGERS``), recorded on the run and the registered version.
        evidence: why (the monitor's figures for ``drift``, ``volume``, ``performance``; the reason
            for ``manual``); None: none.

    Returns:
        ``run_id``, ``version`` and ``model_uri`` of the registered model, ``metrics`` (the logged holdout
        metrics, rounded), ``split_cut`` and ``seconds``.

    Raises:
        StepFailed: the event store is empty, or the data cannot be split or trained on.
    """
    from recops import monitoring, registry, reporting
    from recops.featurestore import FeatureStoreClient
    from recops.training import train_model

    if trigger not in TRIGGERS:
        raise StepFailed(f"unknown trigger {trigger!r}: one of {', '.join(TRIGGERS)}")
    started = time.time()
    store = EventStore(settings.event_store_uri)
    events, items, users = with_actors(store.events()), store.items(), store.users()
    store.dispose()
    if events.empty:
        raise StepFailed("the event store is empty: nothing to train on")
    fs = FeatureStoreClient(settings)
    try:
        model, rep = train_model(events, items, users, fs, settings)
    except ValueError as exc:
        raise StepFailed(str(exc)) from exc
    ev, split, k = rep["eval"], rep["split"], settings.k
    metrics = {f"{m}": v for m, v in ev["model"].items()}
    metrics.update({f"baseline_{m}": v for m, v in ev.get("baseline", {}).items()})
    for curve in ev["curve"].values():
        metrics.update(curve)
    for curve in ev.get("baseline_curve", {}).values():
        metrics.update({f"baseline_{m}": v for m, v in curve.items()})
    metrics.update(ev["segments"])
    metrics.update({f"baseline_{m}": v for m, v in ev.get("baseline_segments", {}).items()
                    if not m.startswith("users_")})
    metrics.update({k_: v for k_, v in rep["ranker"].items()})
    params = {"k": k, "holdout_days": settings.holdout_days,
              "holdout": (f"{settings.holdout_days} days" if settings.holdout_days
                          else "from the data: the last week or the last tenth of the events, whichever is longer"),
              "candidates_per_source": settings.candidates_per_source, "generators": ",".join(model.generators),
              "n_events": len(events), "split_inner_cuts": split["inner_cuts"], "split_cut": split["cut"],
              "split_end": split["end"], "decay_half_life_days": settings.decay_half_life_days,
              "event_weights": json.dumps(settings.event_types, sort_keys=True), "ranker": "lightgbm-lambdarank",
              "num_features": len(model.feature_names), **{f"tuned_{k_}": v for k_, v in rep["tuned"].items()},
              **{f"scorer_{seg}": v for seg, v in model.scorer.items()},
              **{f"next_item_{k_}": v for k_, v in rep["next_item"].get("params", {}).items()},
              "next_item_model": type(model.next_item).__name__ if model.next_item is not None else "none",
              "cold_start": rep["cold_start"]["cold_start"], "cold_start_why": rep["cold_start"]["cold_start_why"]}
    metrics.update({k_: v for k_, v in rep["cold_start"].items() if k_.startswith("valid_")})
    params.update(model_params(model))
    if "valid_mrr" in rep["next_item"]:
        metrics.update({"next_item_valid_mrr_at_20": rep["next_item"]["valid_mrr"],
                        "next_item_valid_hr_at_20": rep["next_item"]["valid_hr"]})
    ranked = rep["next_item"].get("ranker") or {}
    if ranked.get("valid_mrr") is not None:  # the re-ranked rules on the same sessions, served or not
        metrics.update({"next_item_reranked_valid_mrr_at_20": ranked["valid_mrr"],
                        "next_item_reranked_valid_hr_at_20": ranked["valid_hr"]})

    figs = reporting.training_figures(model, ev, k)
    rules = {f"rule_{f}": v for f, v in vars(BusinessRules.from_settings(settings)).items()}
    params.update({k_: ",".join(v) if isinstance(v, tuple) else v for k_, v in rules.items()})
    params["trigger"] = trigger
    reference = monitoring.build_reference(events, items, settings)
    run = run_identity(events, trigger, evidence, metrics, k)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = reference.save(Path(tmp) / monitoring.REFERENCE_DIR)
            logged = registry.log_model(settings, model, params, metrics, figures=figs,
                                        extra={"split.json": split, "next_item.json": rep["next_item"],
                                               "choices.json": rep["choices"]},
                                        folders={monitoring.REFERENCE_DIR: folder}, run={**run, "started_at": started})
    finally:
        reporting.close(figs)
    return {**logged, "metrics": {k_: round(v, 5) for k_, v in metrics.items()}, "split_cut": split["cut"],
            "trigger": trigger}


def run_identity(events: pd.DataFrame, trigger: str, evidence: dict | None, metrics: dict, k: int) -> dict:
    """How a training run reads in the MLflow UI: its name, tags, description and dataset input.

    Args:
        events: the training events.
        trigger: what started the training.
        evidence: why, or None.
        metrics: the holdout metrics (the description quotes NDCG@k against popularity).
        k: the list length.

    Returns:
        ``name``, ``tags``, ``description`` and ``dataset`` for ``registry.log_model``'s ``run``.
    """
    import mlflow.data

    first, last = events["timestamp"].min(), events["timestamp"].max()
    window = f"{first:%Y-%m-%d}..{last:%Y-%m-%d}"
    tags = {"trigger": trigger, "data_window": window, "data_start": first.isoformat(), "data_end": last.isoformat(),
            "n_events": len(events), "n_users": int(events["user_id"].nunique()),
            "n_items": int(events["item_id"].nunique())}
    if evidence:
        tags["trigger_evidence"] = json.dumps(evidence, sort_keys=True, default=str)[:4900]
    ndcg, base = metrics.get(f"ndcg_at_{k}"), metrics.get(f"baseline_ndcg_at_{k}")
    quality = (f" Holdout NDCG@{k} {ndcg:.4f} against {base:.4f} for popularity."
               if ndcg is not None and base is not None else "")
    why = f" Evidence: {tags['trigger_evidence']}" if evidence else ""
    sample = events.sample(min(len(events), 10_000), random_state=0) if len(events) > 10_000 else events
    return {"name": f"v{{version}} · {trigger} · {len(events):,} events · {window}", "tags": tags,
            "description": f"Trained ({trigger}) on {len(events):,} events from {window}; registered as version "
                           f"{{version}} (@challenger).{quality}{why}",
            "dataset": mlflow.data.from_pandas(sample.assign(timestamp=sample["timestamp"].astype(str)),
                                               name=f"events {window}", digest=f"{len(events)}-{last.value}")}


def model_params(model) -> dict:
    """Hyper-parameters of the ranker and every generator, flat, for MLflow.

    Args:
        model: A trained ``RecopsModel`` (its ranker may be None).

    Returns:
        ``ranker_<param>`` (without the run-time ones such as threads and verbosity) and
        ``gen_<generator>_<attribute>`` (public scalar attributes, not fitted state) -> value; list
        values joined with commas.
    """
    out = {}
    if model.ranker is not None:
        skip = {"num_threads", "verbosity", "force_col_wise", "deterministic", "metric", "objective"}
        out.update({f"ranker_{k}": v for k, v in model.ranker.params.items() if k not in skip})
    for name, gen in model.generators.items():
        for k, v in vars(gen).items():
            if not k.endswith("_") and isinstance(v, (int, float, str, bool)):
                out[f"gen_{name}_{k}"] = v
    return {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in out.items()}


# -- evaluate -----------------------------------------------------------------------------------
@_timed
def evaluate(settings: Settings) -> dict:
    """Compare @challenger with @champion on the same holdout (paired bootstrap CI of the NDCG gap).

    The results are also recorded as tags of the challenger's version (read by ``promote``). On the
    data and settings it was trained with (``training.holdout_fingerprint``), the challenger's own
    evaluation from training is reused: the same computation, done once.

    Args:
        settings: the settings (event store, Feast, MLflow registry, ``k``, split settings).

    Returns:
        ``challenger``, ``champion`` (None when there is none), ``holdout_cut``, ``k``,
        ``challenger_metrics``, ``baseline_metrics``, ``challenger_reused`` (training's evaluation
        served), ``seconds`` and, when a different champion
        exists, ``champion_metrics``, ``ndcg_delta`` (challenger minus champion, mean per user) and
        ``ndcg_delta_ci`` (95% bootstrap interval ``[lo, hi]``).

    Raises:
        StepFailed: no @challenger, or the events cannot be split into train and holdout.
    """
    from recops import registry
    from recops.featurestore import FeatureStoreClient
    from recops.models.metrics import bootstrap_ci
    from recops.training import FeastFeatures, evaluate_model, holdout_fingerprint, pipeline_split

    challenger = registry.alias_version(settings, registry.CHALLENGER)
    if challenger is None:
        raise StepFailed("no @challenger version to evaluate: run train first")
    champion = registry.alias_version(settings, registry.CHAMPION)
    store = EventStore(settings.event_store_uri)
    events, items, users = with_actors(store.events()), store.items(), store.users()
    store.dispose()
    try:
        split = pipeline_split(events, settings)
    except ValueError as exc:
        raise StepFailed(str(exc)) from exc
    provider = FeastFeatures(FeatureStoreClient(settings))
    cut = next(iter(split.cut.values()))
    model = registry.load_version(settings, challenger)
    res_c = model.holdout_eval or {}
    reused = res_c.get("fingerprint") == holdout_fingerprint(events, items, users, settings)
    if not reused:
        res_c = evaluate_model(model, split, items, users, settings, provider)
    out = {"challenger": challenger, "champion": champion, "holdout_cut": str(cut), "k": settings.k,
           "challenger_metrics": res_c["model"], "baseline_metrics": res_c.get("baseline"),
           "challenger_reused": reused}
    if champion is not None and champion != challenger:
        res_p = evaluate_model(registry.load_version(settings, champion), split, items, users, settings, provider,
                               with_baseline=False)
        diff = res_c["per_user_ndcg"] - res_p["per_user_ndcg"]
        lo, hi = bootstrap_ci(diff, seed=settings.random_state)
        out.update({"champion_metrics": res_p["model"], "ndcg_delta": float(diff.mean()), "ndcg_delta_ci": [lo, hi]})
    client = registry.setup(settings)
    k = settings.k
    client.set_model_version_tag(settings.model_name, challenger, "eval_ndcg", f"{res_c['model'][f'ndcg_at_{k}']:.5f}")
    client.set_model_version_tag(settings.model_name, challenger, "eval_holdout_cut", str(cut))
    if "ndcg_delta" in out:
        client.set_model_version_tag(settings.model_name, challenger, "eval_vs_champion",
                                     json.dumps({"champion": champion, "ndcg_delta": round(out["ndcg_delta"], 5),
                                                 "ci95": [round(x, 5) for x in out["ndcg_delta_ci"]]}))
    return out


# -- promote ------------------------------------------------------------------------------------
@_timed
def promote(settings: Settings, force: bool = False, version: str | None = None, online: dict | None = None) -> dict:
    """Move @champion to @challenger when it is not worse (or when forced); record why in tags.

    Args:
        settings: the settings (MLflow registry, ``promote_tolerance``: how much NDCG may be lost).
        force: promote without (or regardless of) an evaluation against the champion.
        version: promote this registered version instead of @challenger's.
        online: an online experiment's verdict (``reason`` and its figures): promote on that
            evidence, which goes into the version's ``online_experiment`` tag.

    Returns:
        ``promoted`` (bool), ``reason``, ``champion`` (the champion version afterwards),
        ``previous_champion`` (None when there was none) and ``seconds``.

    Raises:
        StepFailed: there is no @challenger.
    """
    from recops import registry

    client = registry.setup(settings)
    challenger = version or registry.alias_version(settings, registry.CHALLENGER)
    if challenger is None:
        raise StepFailed("no @challenger version to promote: run train first")
    champion = registry.alias_version(settings, registry.CHAMPION)
    tags = client.get_model_version(settings.model_name, challenger).tags
    if champion is None:
        promoted, why = True, "first model: no champion yet"
    elif champion == challenger:
        promoted, why = False, f"version {challenger} is already champion"
    elif online is not None:
        promoted, why = True, f"online experiment against v{champion}: {online['reason']}"
        client.set_model_version_tag(settings.model_name, challenger, "online_experiment",
                                     to_json({**online, "champion": champion}))
    elif force:
        promoted, why = True, f"forced over champion v{champion}"
    elif "eval_vs_champion" not in tags:
        promoted, why = False, "not evaluated against the current champion: run evaluate first (or --force)"
    else:
        cmp = json.loads(tags["eval_vs_champion"])
        if cmp["champion"] != champion:
            promoted, why = False, (f"evaluated against v{cmp['champion']}, but the champion is now v{champion}: "
                                    "evaluate again")
        else:
            delta = cmp["ndcg_delta"]
            promoted = delta >= -settings.promote_tolerance
            why = (f"NDCG@{settings.k} delta vs v{champion}: {delta:+.5f} "
                   f"(95% CI {cmp['ci95'][0]:+.5f}..{cmp['ci95'][1]:+.5f}); "
                   + ("not worse: promoted" if promoted
                      else f"worse than tolerance {settings.promote_tolerance}: kept champion"))
    client.set_model_version_tag(settings.model_name, challenger, "promotion_decision",
                                 "promoted" if promoted else "rejected")
    client.set_model_version_tag(settings.model_name, challenger, "promotion_reason", why)
    if promoted:
        client.set_registered_model_alias(settings.model_name, registry.CHAMPION, challenger)
        client.set_model_version_tag(settings.model_name, challenger, "promoted_at",
                                     pd.Timestamp.now(tz="UTC").isoformat())
        if champion is not None and champion != challenger:
            client.set_model_version_tag(settings.model_name, champion, "replaced_by", challenger)
    return {"promoted": promoted, "reason": why, "champion": challenger if promoted else champion,
            "previous_champion": champion}


# -- monitor ------------------------------------------------------------------------------------
MONITORING_SUFFIX = "-monitoring"  # the MLflow experiment of the monitoring runs: {mlflow_experiment}-monitoring


@_timed
def monitor(settings: Settings, at: float | None = None) -> dict:
    """One look at the champion (``recops.monitoring.watch``): drift against its training reference,
    the last hour's online quality, its performance against its own baseline, the new-event volume.

    Logged to MLflow as time series in one run per day and champion version (experiment
    ``{mlflow_experiment}-monitoring``; step: whole hours since the training cut), with Evidently's
    HTML report; the latest look is also written to ``reports/monitor-latest.json`` (``recops status``).

    Args:
        settings: backends, windows and thresholds.
        at: the end of the look (epoch seconds); None: now.

    Returns:
        ``watch``'s figures plus ``mlflow_run_id``, ``report`` (the HTML's path) and ``cooling_down``
        (an event-triggered retrain ran within ``retrain_cooldown_hours``: alarms are not acted on);
        ``version`` None when there is no champion.
    """
    from recops import monitoring, registry

    version = registry.alias_version(settings, registry.CHAMPION)
    if version is None:
        return {"version": None, "alarms": [], "reason": "no champion to watch yet"}
    try:
        ref = monitoring.Reference.load(registry.reference_folder(settings, version, monitoring.REFERENCE_DIR))
    except Exception as exc:  # a version trained before monitoring existed carries no reference
        raise StepFailed(f"version {version} has no monitoring reference ({type(exc).__name__}): retrain it") from exc
    at = time.time() if at is None else float(at)
    stamp = pd.Timestamp(at, unit="s", tz="UTC")
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    report = settings.reports_dir / f"monitor-{stamp:%Y%m%dT%H%M%S}.html"
    res = monitoring.watch(settings, ref, version, at, report_path=report)
    res["report"] = str(report) if report.exists() else None
    res["cooling_down"] = last_training_age_hours(settings) < settings.retrain_cooldown_hours
    res["mlflow_run_id"] = _log_look(settings, res, ref, stamp)
    (settings.reports_dir / "monitor-latest.json").write_text(to_json(res))
    return res


def last_training_age_hours(settings: Settings) -> float:
    """Hours since the newest training run started (inf when none ran)."""
    import mlflow

    from recops import registry

    registry.setup(settings)
    runs = mlflow.search_runs(experiment_names=[settings.mlflow_experiment], filter_string="params.trigger != ''",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return (time.time() - runs[0].info.start_time / 1000) / 3600 if runs else float("inf")


def _log_look(settings: Settings, res: dict, ref, stamp: pd.Timestamp) -> str:
    """One look's figures as points of the day's monitoring run (created on the day's first look)."""
    import mlflow

    from recops import registry

    client = registry.setup(settings)
    name = settings.mlflow_experiment + MONITORING_SUFFIX
    exp = mlflow.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=f"{settings.artifact_root.rstrip('/')}/{name}")
    day, version = f"{stamp:%Y-%m-%d}", res["version"]
    found = client.search_runs([exp_id], f"tags.day = '{day}' and tags.model_version = '{version}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(exp_id, run_name=f"monitor {day} · v{version}", tags={
            "day": day, "model_version": version, "model_uri": f"models:/{settings.model_name}/{version}",
            "mlflow.note.content": f"Hourly looks at champion v{version} on {day}: drift against its training "
                                   "reference, online quality, performance, new-event volume."}).info.run_id
    step, ts = max(0, int((stamp.value / 1e9 - ref.cut) // 3600)), int(stamp.value / 1e6)
    figures = {**{k: v for k, v in res["drift"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
               **{f"online_{k}": v for k, v in res["quality"].items() if isinstance(v, (int, float))},
               **{f"performance_{k}": v for k, v in res["performance"].items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)},
               "new_events": res["new_events"], "drift_detected": float(res["drift"]["detected"]),
               "volume_reached": float(res["volume_reached"]),
               "performance_dropped": float(res["performance"]["detected"])}
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric(k.replace("drift_events", "window_events"), float(v), ts, step)
                                      for k, v in figures.items() if v is not None and np.isfinite(v)])
    if res.get("report"):
        client.log_artifact(run_id, res["report"], "reports")
    client.set_tag(run_id, "last_alarms", ",".join(res["alarms"]) or "none")
    client.set_terminated(run_id)  # finished as of this look; the next one adds its points
    client.set_model_version_tag(settings.model_name, version, "monitoring_run", run_id)
    return run_id


# -- batch scoring ------------------------------------------------------------------------------
@_timed
def recommend_users(settings: Settings, users_path: str, out_path: str, k: int | None = None,
                    version: str | None = None, alias: str | None = None) -> dict:
    """Top-``k`` for every user in a file, written as CSV (user_id, item_id, rank, score).

    The model is a named version, an alias's version, or else the newest registered version (the
    one just trained). Scoring runs the HTTP service's own code (``recops.serving.Serving``) on the
    same event store and online features, so a user gets the list the service would answer.

    Args:
        settings: the settings (registry, event store, Feast, rules).
        users_path: the users file (see ``read_user_ids``).
        out_path: the CSV to write (parent directories are created).
        k: items per user; None: ``settings.k``.
        version: the model version to score with; wins over ``alias``.
        alias: A registry alias (e.g. ``"champion"``) whose version to score with.

    Returns:
        ``out`` (the CSV's absolute path), ``users``, ``rows``, ``k``, ``version``, ``fallback_users``
        (users answered by the fallback, not the model) and ``seconds``.

    Raises:
        StepFailed: the users file is missing or has no ids, or no model version can be loaded.
    """
    k = k or settings.k
    ids = read_user_ids(users_path)
    serving, version = _batch_serving(settings, version, alias)
    rows, fallback = [], 0
    for u in ids:
        r = serving.recommendations.recommend(u, k)
        fallback += bool(r.fallback)
        rows += [(u, it.item_id, it.rank, it.score) for it in r.items]
    serving.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"]).to_csv(out, index=False)
    return {"out": str(out.resolve()), "users": len(ids), "rows": len(rows), "k": k, "version": str(version),
            "fallback_users": fallback}


def _batch_serving(settings: Settings, version: str | None, alias: str | None):
    """The HTTP service's own code pinned to a version: a named one, an alias's, else the newest."""
    from recops import registry
    from recops.serving import Serving

    if version is None:
        version = registry.alias_version(settings, alias) if alias else registry.latest_version(settings)
        if version is None:
            raise StepFailed(f"no model {'with alias @' + alias if alias else 'is registered'}: run train first")
    try:
        serving = Serving(settings, version=str(version))
    except Exception as exc:
        raise StepFailed(f"cannot load version {version} of model {settings.model_name!r}: {exc}") from exc
    if serving.champion.get() is None:
        raise StepFailed(f"cannot load version {version} of model {settings.model_name!r}: "
                         f"{serving.champion.load_error}")
    return serving, str(version)


@_timed
def next_items_batch(settings: Settings, sessions_path: str, out_path: str, k: int = 20,
                     version: str | None = None, alias: str | None = None) -> dict:
    """Offline next-item evaluation input: for every prefix of every session in a CSV (session_id,
    item_id, timestamp), the served model's top-``k`` next items, written as CSV (session_id, step,
    item_id, rank); step t means "given the first t items, predict item t+1".

    Args:
        settings: the settings (registry, event store, Feast).
        sessions_path: CSV of session events: ``session_id``, ``item_id``, ``timestamp`` (any order).
        out_path: the CSV to write (parent directories are created).
        k: next items per prefix.
        version: the model version to use; wins over ``alias``.
        alias: A registry alias whose version to use; neither: the newest registered version.

    Returns:
        ``out`` (the CSV's absolute path), ``sessions`` (distinct sessions), ``rows``, ``k``, ``version``
        and ``seconds``.

    Raises:
        StepFailed: the file is missing, lacks a column or has incomplete rows, no model version can
            be loaded, or the version has no next-item model.
    """
    from recops.nextitem import prefix_predictions

    p = Path(sessions_path)
    if not p.exists():
        raise StepFailed(f"sessions file {sessions_path} does not exist")
    sessions = pd.read_csv(p, dtype={"session_id": str, "item_id": str})
    missing = {"session_id", "item_id", "timestamp"} - set(sessions.columns)
    if missing:
        raise StepFailed(f"{sessions_path} needs the columns session_id, item_id, timestamp; missing {sorted(missing)}")
    sessions["timestamp"] = pd.to_datetime(sessions["timestamp"], utc=True, errors="coerce")
    bad = sessions[["session_id", "item_id", "timestamp"]].isna().any(axis=1)
    if bad.any():
        raise StepFailed(f"{sessions_path}: {int(bad.sum())} rows without a session_id, item_id or valid timestamp "
                         f"(first at line {int(bad.to_numpy().argmax()) + 2})")
    serving, version = _batch_serving(settings, version, alias)
    model = serving.champion.require().model
    serving.close()
    if model.next_item is None:
        raise StepFailed(f"version {version} has no next-item model: retrain it")
    out = prefix_predictions(model.next_item, sessions.assign(user_id=None), k=k)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return {"out": str(path.resolve()), "sessions": int(sessions["session_id"].nunique()), "rows": len(out),
            "k": k, "version": version}


def read_user_ids(path: str) -> list[str]:
    """User ids from a CSV with a ``user_id`` column, or a headerless one-id-per-line file.

    Args:
        path: the file; ``.parquet``/``.pq`` files are read as Parquet (and need a ``user_id`` column).

    Returns:
        The distinct ids in file order, stripped, empty ones dropped.

    Raises:
        StepFailed: the file is missing, has no ``user_id`` column (and is not a one-column CSV) or no ids.
    """
    p = Path(path)
    if not p.exists():
        raise StepFailed(f"users file {path} does not exist")
    frame = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p, dtype=str)
    if "user_id" in frame.columns:
        col = frame["user_id"]
    elif p.suffix not in (".parquet", ".pq") and frame.shape[1] == 1:
        col = pd.concat([pd.Series([frame.columns[0]]), frame.iloc[:, 0]], ignore_index=True)  # no header
    else:
        raise StepFailed(f"{path}: needs a user_id column (columns: {list(frame.columns)})")
    ids = col.dropna().astype(str).str.strip()
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise StepFailed(f"{path}: no user ids")
    return ids


def _np_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (pd.Timestamp, Path)):
        return str(o)
    raise TypeError(type(o))


def to_json(result: dict) -> str:
    """A step's result as indented JSON with sorted keys (numpy values, timestamps and paths converted).

    Args:
        result: A step's result dict; its ``per_user_ndcg`` and ``users`` entries are left out.

    Returns:
        The JSON text.
    """
    clean = {k: v for k, v in result.items() if k not in ("per_user_ndcg", "users")}
    return json.dumps(clean, default=_np_default, indent=2, sort_keys=True)
