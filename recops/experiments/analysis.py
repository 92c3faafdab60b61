"""An experiment's figures from what was served and what users did: per-variant counts, the primary
metric's lift with its intervals, the always-valid p-value, SRM and the guardrails.

The unit is the user (or the anonymous session). Fallback lists are counted apart and never earn a
variant anything. Each evaluation is a "look"; the always-valid p-value runs over every look so far
(``looks``: the lift and its variance at each earlier look, kept in the experiment's history).

A ramp starts a new phase: the figures are of the current phase only (``lifecycle.phase_start``).
Pooling phases would mix users assigned at different shares (the split would no longer match
any one share, and SRM would fire), and a user moved from control into the challenger by the ramp
would count in both. So each step of the ramp earns its evidence afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from recops.config import Settings
from recops.experiments import stats
from recops.experiments.assignment import CHALLENGER, CONTROL
from recops.experiments.records import INTERLEAVED, Experiment
from recops.impressions import (
    attributed_outcomes,
    load_impressions,
    p99,
    per_unit,
    team_credit_per_unit,
)
from recops.store import events
from recops.vocabulary import CART_ACTIVITY, CONVERSION, ENGAGE

METRIC_COLUMN = {"ctr": "clicks", "conversion": "conversions", "revenue": "revenue"}
PRE_PERIOD_DAYS = 28.0  # CUPED's covariate: each unit's events in this many days before the start


@dataclass
class Observations:
    """What an experiment has seen so far."""

    impressions: pd.DataFrame
    per_unit: pd.DataFrame  # unit, variant, fallback, impressions, clicks, conversions, revenue
    credit: pd.DataFrame  # interleaving: unit, control, challenger
    pre_activity: pd.Series  # unit -> events before the start (CUPED)


def observe(engine: sa.Engine, exp: Experiment, settings: Settings, until: float | None = None,
            since: float | None = None) -> Observations:
    """Load an experiment's impressions and attribute the outcomes since its start (or ``since``).

    Args:
        engine: the event store's engine.
        exp: the experiment.
        settings: ``attribution_window_hours``.
        until: the end of the observed period (epoch seconds); None: now.
        since: the start of the observed period; None: the experiment's start.

    Returns:
        The observations.
    """
    since = exp.started_at if since is None else since
    imps, shown = load_impressions(engine, since, until)
    attributed = attributed_outcomes(engine, imps, shown, since, until, settings.attribution_window_hours * 3600.0)
    mine = imps[imps["experiment"] == exp.name]
    metric_types = {"ctr": ENGAGE, "conversion": CART_ACTIVITY, "revenue": CONVERSION}[exp.metric]
    units = per_unit(mine, attributed, ENGAGE, CART_ACTIVITY, CONVERSION)
    credit = team_credit_per_unit(mine[mine["variant"] == INTERLEAVED], attributed, metric_types,
                                  value=exp.metric == "revenue")
    return Observations(mine, units, credit, _pre_activity(engine, exp, set(units["unit"])))


def _pre_activity(engine: sa.Engine, exp: Experiment, units: set[str]) -> pd.Series:
    e = events.c
    since = exp.started_at - PRE_PERIOD_DAYS * 86400
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.coalesce(e.user_id, e.session_id), sa.func.count())
                            .where(e.timestamp >= since, e.timestamp < exp.started_at)
                            .group_by(sa.func.coalesce(e.user_id, e.session_id))).all()
    return pd.Series({u: n for u, n in rows if u in units}, dtype=float)


def summarize(exp: Experiment, obs: Observations, settings: Settings, looks: list[dict] | None = None,
              cuped: bool = True) -> dict:
    """The experiment's figures now.

    Args:
        exp: the experiment.
        obs: what ``observe`` loaded.
        settings: ``experiment_min_lift`` (the mSPRT's mixing scale) and ``experiment_alpha``.
        looks: the earlier evaluations' ``{"diff", "variance"}`` (oldest first); None: none.
        cuped: take out what each unit's pre-experiment activity predicts (A/B only).

    Returns:
        ``variants`` (per variant: users, impressions, clicks, conversions, revenue, the rates,
        fallback lists apart, error and fallback rates, p99 latency), ``lift``, ``ci`` (fixed
        horizon, 95%), ``ci_always_valid``, ``p_value`` (always valid), ``p_value_fixed``,
        ``srm_p_value``, ``srm``, ``look`` (this look's diff and variance) and, for interleaving,
        ``interleaving``. Missing figures are None.
    """
    arms = _arms(exp)
    variants = {v: _variant_figures(obs, v) for v in arms}
    out: dict = {"metric": exp.metric, "method": exp.method, "variants": variants}
    users = [variants[v]["users"] for v in arms]
    shares = [1 - exp.share, exp.share]
    out["srm_p_value"] = stats.srm_p_value(users, shares) if exp.share < 1 else 1.0
    out["srm"] = out["srm_p_value"] < stats.SRM_ALPHA
    tau2 = settings.experiment_min_lift ** 2
    if exp.method == "interleave":
        c = obs.credit
        win_share, p_binom, n = stats.interleaving_preference(c["control"].to_numpy(), c["challenger"].to_numpy())
        diff, var = (win_share - 0.5, 0.25 / n) if n else (float("nan"), float("nan"))
        tot_a, tot_b = float(c["control"].sum()), float(c["challenger"].sum())
        lift = tot_b / tot_a - 1 if tot_a > 0 else float("nan")
        ci = (win_share - 1.96 * math.sqrt(var), win_share + 1.96 * math.sqrt(var)) if n else (math.nan, math.nan)
        out["interleaving"] = {"users": len(c), "preferring": n, "ties": len(c) - n, "challenger_win_share": win_share,
                               "win_share_ci": list(ci), "binomial_p_value": p_binom}
        out["lift"], out["ci"], out["p_value_fixed"] = lift, list(ci), p_binom
        # a challenger earning (1 + L) times control's credit wins about (1 + L) / (2 + L) ≈ 1/2 + L/4 of the users
        tau2 = (settings.experiment_min_lift / 4) ** 2
    else:
        col = METRIC_COLUMN[exp.metric]
        est = {}
        for v in arms:
            u = obs.per_unit[(obs.per_unit["variant"] == v) & ~obs.per_unit["fallback"].astype(bool)]
            est[v] = (u[col].to_numpy(float), u["impressions"].to_numpy(float), u["unit"].to_numpy())
        y = np.concatenate([est[v][0] for v in arms])
        if cuped and len(y) > 2:
            x = obs.pre_activity.reindex(np.concatenate([est[v][2] for v in arms])).fillna(0.0).to_numpy()
            adj = stats.cuped(y, x)
            n0 = len(est[CONTROL][0])
            est = {CONTROL: (adj[:n0], *est[CONTROL][1:]), CHALLENGER: (adj[n0:], *est[CHALLENGER][1:])}
        lift = stats.relative_lift(stats.ratio_estimate(*est[CONTROL][:2]), stats.ratio_estimate(*est[CHALLENGER][:2]))
        diff, var = lift.lift, lift.se ** 2
        out["lift"], out["ci"], out["p_value_fixed"] = lift.lift, [lift.low, lift.high], lift.p_value
    diffs = [lk["diff"] for lk in looks or [] if _finite(lk.get("diff"), lk.get("variance"))]
    variances = [lk["variance"] for lk in looks or [] if _finite(lk.get("diff"), lk.get("variance"))]
    if _finite(diff, var) and var > 0:
        out["p_value"] = float(stats.msprt(np.array([*diffs, diff]), np.array([*variances, var]), tau2)[-1])
        centre = 0.5 if exp.method == "interleave" else 0.0
        low, high = stats.confidence_sequence(diff, var, tau2, settings.experiment_alpha)
        out["ci_always_valid"] = [centre + low, centre + high]
    else:
        out["p_value"] = float(stats.msprt(np.array(diffs), np.array(variances), tau2)[-1]) if diffs else 1.0
        out["ci_always_valid"] = [None, None]
    out["look"] = {"diff": diff, "variance": var, "tau2": tau2}
    return _clean(out)


def _arms(exp: Experiment) -> tuple[str, str]:
    return (CONTROL, INTERLEAVED) if exp.method == "interleave" else (CONTROL, CHALLENGER)


def _variant_figures(obs: Observations, variant: str) -> dict:
    u = obs.per_unit[obs.per_unit["variant"] == variant]
    ok = u[~u["fallback"].astype(bool)]
    imps = obs.impressions[obs.impressions["variant"] == variant]
    n_imp = int(ok["impressions"].sum())
    fig = {"users": int(ok["unit"].nunique()), "impressions": n_imp, "clicks": int(ok["clicks"].sum()),
           "conversions": int(ok["conversions"].sum()), "revenue": round(float(ok["revenue"].sum()), 2),
           "ctr": ok["clicks"].sum() / n_imp if n_imp else None,
           "conversion_rate": ok["conversions"].sum() / n_imp if n_imp else None,
           "revenue_per_impression": ok["revenue"].sum() / n_imp if n_imp else None,
           "fallback_impressions": int(u.loc[u["fallback"].astype(bool), "impressions"].sum()),
           "error_rate": float(imps["error"].astype(bool).mean()) if len(imps) else None,
           "fallback_rate": float(imps["fallback"].astype(bool).mean()) if len(imps) else None,
           "p99_latency_ms": p99(imps["latency_ms"]) if len(imps) else None}
    if variant == INTERLEAVED:
        c = obs.credit
        fig["team_credit"] = {CONTROL: float(c["control"].sum()), CHALLENGER: float(c["challenger"].sum())}
    return fig


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def _clean(o):
    """NaN and infinities as None, numpy scalars as Python ones (JSON-ready)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o
