"""The operations on experiments that the CLI, the HTTP API and the ``ab-evaluate`` flow share:
start, status, ramp, stop and evaluate.

Versions are resolved against the MLflow registry at start (the control is @champion's version);
everything is validated before anything is written, so a bad request changes nothing.
"""

from __future__ import annotations

import json
import time

from recops import registry
from recops.config import Settings
from recops.experiments import analysis, policy
from recops.experiments.records import (
    PROMOTED,
    ROLLED_BACK,
    STOPPED,
    Experiment,
    ExperimentError,
    ExperimentStore,
)
from recops.store import EventStore


def records(settings: Settings) -> ExperimentStore:
    """The experiments of the settings' event store.

    Args:
        settings: the event store's URL.

    Returns:
        An ``ExperimentStore`` on its engine.
    """
    return ExperimentStore(EventStore(settings.event_store_uri).engine)


def resolve_version(settings: Settings, ref: str) -> str:
    """A registry version from ``3`` or ``@challenger``.

    Args:
        settings: the registry.
        ref: a version number, or ``@alias``.

    Returns:
        The version number as a string.

    Raises:
        ExperimentError: no such alias or version.
    """
    ref = str(ref).strip()
    if ref.startswith("@"):
        v = registry.alias_version(settings, ref[1:])
        if v is None:
            raise ExperimentError(f"no model version has the alias {ref}")
        return v
    if not ref.isdigit():
        raise ExperimentError(f"challenger {ref!r}: give a version number (e.g. 3) or an alias (e.g. @challenger)")
    client = registry.setup(settings)
    versions = {str(v.version) for v in client.search_model_versions(f"name='{settings.model_name}'")}
    if ref not in versions:
        raise ExperimentError(f"model {settings.model_name!r} has no version {ref} "
                              f"(registered: {', '.join(sorted(versions, key=int)) or 'none'})")
    return ref


def start(settings: Settings, name: str, challenger: str, method: str = "ab", share: float = 0.05,
          metric: str = "ctr", store: ExperimentStore | None = None) -> dict:
    """Start an experiment: @champion's version against ``challenger``.

    Args:
        settings: the registry and event store.
        name: the experiment's name (new).
        challenger: a version number or ``@alias``.
        method: ``ab`` or ``interleave``.
        share: the challenger's traffic share.
        metric: ``ctr``, ``conversion`` or ``revenue``.
        store: the experiments (default: the settings' event store).

    Returns:
        The experiment's status.

    Raises:
        ExperimentError: no champion, an unknown challenger, or what ``ExperimentStore.start`` refuses.
    """
    store = store or records(settings)
    control = registry.alias_version(settings, registry.CHAMPION)
    if control is None:
        raise ExperimentError("no @champion yet: promote a model before testing a challenger against it")
    version = resolve_version(settings, challenger)
    store.start(name, control, version, method=method, share=share, metric=metric,
                reason=f"started: v{version} against @champion v{control}, {method}, share {share}, metric {metric}")
    return status(settings, name, store)


def status(settings: Settings, name: str, store: ExperimentStore | None = None, now: float | None = None) -> dict:
    """An experiment with its figures now, its last decision and its history (``GET /experiments/{name}``).

    Args:
        settings: the event store and the statistics' settings.
        name: the experiment.
        store: the experiments (default: the settings' event store).
        now: the end of the observed period; None: now.

    Returns:
        The experiment's fields, ``variants``, ``lift``, ``ci``, ``p_value`` (always valid),
        ``srm_p_value``, ``decision`` (the last evaluation's, or None before the first) and ``history``.

    Raises:
        ExperimentError: no such experiment.
    """
    store = store or records(settings)
    exp = store.get(name)
    history = store.history(name)
    figures = _figures(settings, store, exp, history, now)
    last = next((h for h in reversed(history) if h["details"] and "look" in h["details"]), None)
    return {**exp.as_dict(), **figures,
            "decision": {"action": last["action"], "reason": last["reason"], "at": last["at"]} if last else None,
            "history": history}


def ramp(settings: Settings, name: str, share: float, store: ExperimentStore | None = None) -> dict:
    """Set a running experiment's share by hand.

    Args:
        settings: the event store.
        name: the experiment.
        share: the new share, in [0, 1].
        store: the experiments (default: the settings' event store).

    Returns:
        The experiment's status.
    """
    store = store or records(settings)
    before = store.get(name)
    store.ramp(name, share, reason=f"by hand: share {before.share} → {share}")
    return status(settings, name, store)


def stop(settings: Settings, name: str, promote: bool = False, rollback: bool = False,
         store: ExperimentStore | None = None, reason: str | None = None) -> dict:
    """End a running experiment: stop it, promote its challenger, or roll it back.

    Args:
        settings: the registry and event store.
        name: the experiment.
        promote: promote the challenger (through the promote step; @champion moves).
        rollback: roll back (share 0).
        store: the experiments (default: the settings' event store).
        reason: why (default: "by hand").

    Returns:
        The experiment's status.

    Raises:
        ExperimentError: both ``promote`` and ``rollback``, or the experiment is not running.
    """
    if promote and rollback:
        raise ExperimentError("give --promote or --rollback, not both")
    store = store or records(settings)
    exp = store.get(name)
    if exp.status != "running":
        raise ExperimentError(f"experiment {name!r} is {exp.status}, not running: nothing to stop")
    why = reason or "by hand"
    if promote:
        figures = status(settings, name, store)
        _promote(settings, exp, figures, why)
        store.finish(name, PROMOTED, f"promoted: {why}")
    elif rollback:
        store.finish(name, ROLLED_BACK, f"rolled back: {why}", share=0.0)
    else:
        store.finish(name, STOPPED, f"stopped: {why}")
    return status(settings, name, store)


def evaluate(settings: Settings, name: str | None = None, now: float | None = None,
             store: ExperimentStore | None = None) -> dict:
    """One evaluation of the running experiment: figures, the policy's decision, applied and recorded
    in the history and in an MLflow run (the ``ab-evaluate`` flow).

    Args:
        settings: the registry, event store and policy settings.
        name: the experiment; None: the running one.
        now: the evaluation's time (epoch seconds); None: now.
        store: the experiments (default: the settings' event store).

    Returns:
        ``experiment``, ``decision`` (action, reason, share), the figures, ``mlflow_run_id`` and
        ``promoted`` (the promote step's result when it ran); ``{"experiment": None}`` when none runs.

    Raises:
        ExperimentError: the named experiment does not exist or is not running.
    """
    store = store or records(settings)
    exp = store.running() if name is None else store.get(name)
    if exp is None:
        return {"experiment": None, "decision": None, "reason": "no experiment is running"}
    if exp.status != "running":
        raise ExperimentError(f"experiment {exp.name!r} is {exp.status}, not running: nothing to evaluate")
    at = time.time() if now is None else now
    history = store.history(exp.name)
    figures = _figures(settings, store, exp, history, now)
    decision = policy.decide(exp, figures, settings, at)
    details = {"look": {**figures["look"], "at": at, "lift": figures["lift"], "ci": figures["ci_always_valid"]},
               "p_value": figures["p_value"], "srm_p_value": figures["srm_p_value"],
               "users": {v: f["users"] for v, f in figures["variants"].items()}}
    promoted = None
    if decision.action == policy.RAMP:
        store.ramp(exp.name, decision.share, decision.reason, details=details)
    elif decision.action == policy.ROLLBACK:
        store.finish(exp.name, ROLLED_BACK, decision.reason, share=0.0, details=details)
    elif decision.action == policy.STOP:
        store.finish(exp.name, STOPPED, decision.reason, details=details)
    elif decision.action == policy.PROMOTE:
        promoted = _promote(settings, exp, figures, decision.reason)
        store.finish(exp.name, PROMOTED, decision.reason, details=details)
    else:
        store.note(exp.name, decision.action, decision.reason, details)
    result = {"experiment": exp.name, "decision": {"action": decision.action, "reason": decision.reason,
                                                    "share": decision.share}, **figures, "promoted": promoted}
    store.save_result(exp.name, result)
    result["mlflow_run_id"] = _log_run(settings, exp, figures, decision, store.history(exp.name))
    return result


def _figures(settings: Settings, store: ExperimentStore, exp: Experiment, history: list[dict],
             now: float | None) -> dict:
    """The current phase's figures (``analysis.summarize`` over what ``observe`` loads since the
    phase began, with the phase's earlier looks), and when the phase began."""
    since = phase_start(history)
    obs = analysis.observe(store.engine, exp, settings, now, since)
    figures = analysis.summarize(exp, obs, settings, _looks(history), cuped=settings.experiment_cuped)
    return {**figures, "phase_started_at": since}


def phase_start(history: list[dict]) -> float:
    """When the current phase began: the last start or change of share.

    Args:
        history: the experiment's history, oldest first.

    Returns:
        Epoch seconds.
    """
    return max(h["at"] for h in history if h["action"] in ("start", "ramp"))


def _looks(history: list[dict]) -> list[dict]:
    """The current phase's earlier looks (the sequential test restarts with each phase)."""
    since = phase_start(history)
    return [h["details"]["look"] for h in history
            if h["details"] and "look" in h["details"] and h["action"] not in ("ramp",) and h["at"] >= since]


def _promote(settings: Settings, exp: Experiment, figures: dict, reason: str) -> dict:
    from recops import steps

    evidence = {"experiment": exp.name, "reason": reason, "method": exp.method, "metric": exp.metric,
                "lift": figures.get("lift"), "ci": figures.get("ci"), "p_value": figures.get("p_value"),
                "srm_p_value": figures.get("srm_p_value"),
                "users": {v: f["users"] for v, f in figures["variants"].items()}}
    return steps.promote(settings, version=exp.challenger, online=evidence)


def mlflow_experiment_name(name: str) -> str:
    """The MLflow experiment an online experiment's evaluations are logged to.

    Args:
        name: the online experiment's name.

    Returns:
        ``ab-test/{name}``.
    """
    return f"ab-test/{name}"


def _log_run(settings: Settings, exp: Experiment, figures: dict, decision: policy.Decision,
             history: list[dict]) -> str:
    """One MLflow run for one evaluation: parameters, per-variant metrics, the statistics, the
    decision, and the cumulative lift with its always-valid band over the looks so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    registry.setup(settings)
    mexp = mlflow.get_experiment_by_name(mlflow_experiment_name(exp.name))
    exp_id = mexp.experiment_id if mexp else mlflow.create_experiment(
        mlflow_experiment_name(exp.name),
        artifact_location=f"{settings.artifact_root.rstrip('/')}/{mlflow_experiment_name(exp.name)}")
    looks = [h["details"]["look"] for h in history if h["details"] and "look" in h["details"]]
    with mlflow.start_run(experiment_id=exp_id, run_name=f"evaluate {exp.name} #{len(looks)}") as run:
        mlflow.log_params({"control": exp.control, "challenger": exp.challenger, "method": exp.method,
                           "metric": exp.metric, "share": exp.share, "salt": exp.salt})
        metrics = {f"{v}_{k}": x for v, f in figures["variants"].items() for k, x in f.items()
                   if isinstance(x, (int, float)) and x is not None}
        for k in ("lift", "p_value", "p_value_fixed", "srm_p_value"):
            if figures.get(k) is not None:
                metrics[k] = figures[k]
        for k, (lo, hi) in (("ci", figures["ci"]), ("ci_always_valid", figures["ci_always_valid"])):
            if lo is not None and hi is not None:
                metrics[f"{k}_low"], metrics[f"{k}_high"] = lo, hi
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tags({"decision": decision.action, "decision_reason": decision.reason[:4000],
                         "recops.experiment": exp.name})
        mlflow.log_dict(figures, "figures.json")
        fig, ax = plt.subplots(figsize=(7, 3.5))
        pts = [(lk["at"], lk["lift"], *(lk["ci"] or [None, None])) for lk in looks if lk.get("lift") is not None]
        if pts:
            t = [(p[0] - exp.started_at) / 3600 for p in pts]
            ax.plot(t, [p[1] for p in pts], marker="o", label="lift" if exp.method == "ab" else "credit lift")
            band = [(ti, p[1], p[2], p[3]) for ti, p in zip(t, pts) if p[2] is not None]
            if band and exp.method == "ab":  # interleaving's interval is on the win share, not the lift
                bt, mid, lo, hi = (list(x) for x in zip(*band))
                ax.fill_between(bt, lo, hi, alpha=0.2, label="always-valid 95% band")
                ax.errorbar(bt, mid, yerr=[[m - a for m, a in zip(mid, lo)], [b - m for m, b in zip(mid, hi)]],
                            fmt="none", ecolor="C0", alpha=0.5, capsize=3)
            for h in history:
                if h["action"] == "ramp":
                    ax.axvline((h["at"] - exp.started_at) / 3600, color="C2", ls="--", lw=0.8)
                    ax.annotate(f"{h['share']:.0%}", ((h["at"] - exp.started_at) / 3600, ax.get_ylim()[1]),
                                color="C2", fontsize=8, va="top")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("hours since start")
        ax.set_ylabel(f"relative {exp.metric} lift")
        ax.set_title(f"{exp.name}: {decision.action}")
        if pts:
            ax.legend(loc="best")
        fig.tight_layout()
        mlflow.log_figure(fig, "cumulative_lift.png")
        plt.close(fig)
        return run.info.run_id


def dumps(status_: dict) -> str:
    """A status as JSON (what ``recops experiment status --json`` prints).

    Args:
        status_: what ``status`` returned.

    Returns:
        Indented JSON.
    """
    return json.dumps(status_, indent=2, default=str)
