"""What an evaluation does with a running experiment's figures, in order of precedence:

1. a guardrail is breached (the challenger's error rate, fallback rate or p99 latency worse than
   control's by the configured margin) → roll back (share 0, rolled_back); latency is judged from
   ``MIN_LATENCY_LISTS`` lists per variant on, and not for interleaving, whose lists ask both models;
2. the traffic split does not match its shares (SRM) → hold: no decision while assignment is broken;
3. the primary metric's always-valid p-value is below ``experiment_alpha``: better → ramp to the
   next step of ``experiment_ramp``, or promote when the next step is full traffic (at share 1
   there would be no control left to compare with: moving everyone is the promotion) or there is
   none; worse → roll back;
4. past ``experiment_max_days`` → stop with "no detectable difference";
5. otherwise continue.
"""

from __future__ import annotations

from dataclasses import dataclass

from recops.config import Settings
from recops.experiments.assignment import CONTROL
from recops.experiments.records import Experiment

MIN_GUARDRAIL_LISTS = 50  # lists per variant before a guardrail may roll back (a few early errors are noise)
MIN_LATENCY_LISTS = 500  # ... and before a p99 latency is more than its few slowest requests
ROLLBACK, HOLD, RAMP, PROMOTE, STOP, CONTINUE = "rollback", "hold", "ramp", "promote", "stop", "continue"


@dataclass(frozen=True)
class Decision:
    """What to do, the share to set (ramp), and why in one sentence."""

    action: str
    reason: str
    share: float | None = None


def decide(exp: Experiment, figures: dict, settings: Settings, now: float) -> Decision:
    """The policy's decision for one evaluation.

    Args:
        exp: the running experiment.
        figures: ``analysis.summarize``'s output.
        settings: the ramp, alpha, guardrail margins and maximum duration.
        now: the evaluation's time (epoch seconds).

    Returns:
        The decision.
    """
    arms = list(figures["variants"])
    ctrl, chal = figures["variants"][CONTROL], figures["variants"][arms[1]]
    breach = _guardrail(exp, ctrl, chal, settings)
    if breach:
        return Decision(ROLLBACK, f"guardrail breached: {breach}", 0.0)
    if figures["srm"]:
        return Decision(HOLD, f"sample ratio mismatch (p = {figures['srm_p_value']:.2g} < 0.001): users per variant "
                              f"{ctrl['users']} / {chal['users']} do not match the split {1 - exp.share:.2f} / "
                              f"{exp.share:.2f}; no decision until the assignment is fixed")
    p, lift = figures["p_value"], figures["lift"]
    if p is not None and lift is not None and p < settings.experiment_alpha:
        what = f"{exp.metric} lift {lift:+.1%} (always-valid p = {p:.3g} < {settings.experiment_alpha})"
        if lift < 0:
            return Decision(ROLLBACK, f"challenger significantly worse: {what}", 0.0)
        nxt = [s for s in settings.experiment_ramp if s > exp.share + 1e-9]
        if nxt and nxt[0] < 1.0:  # full traffic leaves no control to compare with: that step is the promotion
            return Decision(RAMP, f"challenger significantly better: {what}; ramp {exp.share:.2f} → {nxt[0]:.2f}",
                            nxt[0])
        return Decision(PROMOTE, f"challenger significantly better at full traffic: {what}; promote")
    days = (now - exp.started_at) / 86400
    if days >= settings.experiment_max_days:
        return Decision(STOP, f"no detectable difference after {days:.1f} days (always-valid p = "
                              f"{_fmt(p)}, lift {_fmt(lift, '+.1%')})")
    return Decision(CONTINUE, f"no decision yet: {exp.metric} lift {_fmt(lift, '+.1%')}, always-valid p = {_fmt(p)}"
                              f" after {days:.2f} days")


def _guardrail(exp: Experiment, ctrl: dict, chal: dict, settings: Settings) -> str | None:
    if min(ctrl["impressions"] + ctrl["fallback_impressions"], chal["impressions"] + chal["fallback_impressions"]) \
            < MIN_GUARDRAIL_LISTS:
        return None
    lists = min(ctrl["impressions"] + ctrl["fallback_impressions"], chal["impressions"] + chal["fallback_impressions"])
    for g in exp.guardrails:
        a, b = ctrl.get(g), chal.get(g)
        if a is None or b is None:
            continue
        # an interleaved list asks both models, so it takes about twice as long by design
        if g == "p99_latency_ms" and (exp.method == "interleave" or lists < MIN_LATENCY_LISTS):
            continue
        if g == "p99_latency_ms" and b > a * settings.experiment_latency_margin:
            return (f"p99 latency {b:.0f} ms against control's {a:.0f} ms "
                    f"(more than {settings.experiment_latency_margin}x)")
        if g in ("error_rate", "fallback_rate") and b - a > settings.experiment_guardrail_margin:
            return (f"{g.replace('_', ' ')} {b:.1%} against control's {a:.1%} "
                    f"(margin {settings.experiment_guardrail_margin:.0%})")
    return None


def _fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)
