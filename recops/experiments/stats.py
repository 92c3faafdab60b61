"""The statistics of online experiments, as plain functions over per-user arrays.

The unit of analysis is the user (or the anonymous session): every metric is a per-user sum, and
a variant's metric is a ratio of sums (CTR = clicks / impressions) or a per-user mean (conversion,
revenue). Ratios of sums get the delta method; the relative lift's interval is Welch-style (each
variant's own variance). Checking a running experiment every hour needs an always-valid test:
``msprt`` is the mixture sequential probability ratio test (Johari et al., "Always valid inference",
2017), whose p-value may be read after every batch without inflating false positives.

scipy.stats does the distributions and the fixed-horizon tests; this module does the algebra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

SRM_ALPHA = 0.001  # a sample-ratio mismatch below this p-value stops every decision


@dataclass(frozen=True)
class Estimate:
    """A variant's metric with the variance of that estimate."""

    value: float
    variance: float
    users: int


@dataclass(frozen=True)
class Lift:
    """The challenger's relative lift over control (``challenger / control - 1``) and its interval."""

    lift: float
    low: float
    high: float
    p_value: float  # two-sided, fixed horizon (normal approximation)
    se: float = float("nan")  # the lift's standard error (what ``msprt`` takes, squared, as the variance)


def ratio_estimate(num: np.ndarray, den: np.ndarray) -> Estimate:
    """A ratio of per-user sums (e.g. clicks / impressions) with its delta-method variance.

    Args:
        num: per user, the numerator (clicks).
        den: per user, the denominator (impressions); users with none carry no information.

    Returns:
        ``sum(num) / sum(den)`` and ``Var`` of it by the delta method over users:
        ``(var_y - 2 r cov_xy + r^2 var_x) / (n mean_x^2)``.
    """
    y, x = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    n = len(x)
    if n < 2 or x.sum() <= 0:
        return Estimate(float("nan"), float("nan"), n)
    r = y.sum() / x.sum()
    cov = np.cov(y, x, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * x.mean() ** 2)
    return Estimate(float(r), float(max(var, 0.0)), n)


def mean_estimate(values: np.ndarray) -> Estimate:
    """A per-user mean (conversion, revenue per user) with the variance of the mean.

    Args:
        values: one value per user.

    Returns:
        The mean and ``var / n`` (sample variance, ddof 1).
    """
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return Estimate(float("nan"), float("nan"), len(v))
    return Estimate(float(v.mean()), float(v.var(ddof=1) / len(v)), len(v))


def relative_lift(control: Estimate, challenger: Estimate, alpha: float = 0.05) -> Lift:
    """The challenger's relative lift over control with a delta-method interval.

    Args:
        control: control's metric.
        challenger: the challenger's metric.
        alpha: 1 - the interval's coverage.

    Returns:
        ``challenger / control - 1`` with ``Var ≈ ratio^2 (var_b / b^2 + var_a / a^2)`` (each
        variant's own variance: Welch), its interval and a two-sided p-value for "no lift".
    """
    a, b = control.value, challenger.value
    if not (a > 0) or math.isnan(b):
        return Lift(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"))
    ratio = b / a
    se = math.sqrt(challenger.variance / a**2 + b**2 * control.variance / a**4)  # = ratio * sqrt(vb/b^2 + va/a^2)
    z = stats.norm.ppf(1 - alpha / 2)
    p = 2 * stats.norm.sf(abs(ratio - 1) / se) if se > 0 else float("nan")  # no variance: no evidence
    return Lift(ratio - 1, ratio - 1 - z * se, ratio - 1 + z * se, float(p), se)


def welch(control: np.ndarray, challenger: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """Welch's unequal-variance test of the difference in per-user means.

    Args:
        control: control's per-user values.
        challenger: the challenger's per-user values.
        alpha: 1 - the interval's coverage.

    Returns:
        (difference challenger - control, interval low, interval high, two-sided p-value), with
        the Welch-Satterthwaite degrees of freedom.
    """
    a, b = mean_estimate(control), mean_estimate(challenger)
    diff, se = b.value - a.value, math.sqrt(a.variance + b.variance)
    if not se > 0:  # both constant (or too few users): no test
        return diff, float("nan"), float("nan"), float("nan")
    df = (a.variance + b.variance) ** 2 / (a.variance**2 / (a.users - 1) + b.variance**2 / (b.users - 1))
    t = stats.t.ppf(1 - alpha / 2, df)
    return diff, diff - t * se, diff + t * se, float(2 * stats.t.sf(abs(diff / se), df))


def msprt(diffs: np.ndarray, variances: np.ndarray, tau2: float) -> np.ndarray:
    """Always-valid p-values of a difference in means, read after every look.

    The mixture likelihood ratio of H1 (difference ~ N(0, tau2)) against H0 (no difference), for a
    difference estimate ``d`` with variance ``V`` at one look, is
    ``sqrt(V / (V + tau2)) * exp(tau2 d^2 / (2 V (V + tau2)))``; the p-value after look t is
    ``min(1, 1 / max over looks <= t of that ratio)``, so it never rises.

    Args:
        diffs: the difference (challenger - control) at each look, in time order.
        variances: its variance at each look (for a difference of means, ``Estimate.variance`` summed
            over both variants; for a relative lift, ``Lift.se`` squared).
        tau2: the mixing variance: the squared size of a lift worth finding, on the metric's scale.

    Returns:
        One always-valid p-value per look.
    """
    d, v = np.asarray(diffs, dtype=float), np.asarray(variances, dtype=float)
    v = np.where(np.isfinite(d), v, 0.0)  # a look without an estimate adds no evidence (and no NaN)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))
    log_lr = np.where(v > 0, log_lr, 0.0)
    return np.minimum(1.0, np.exp(-np.maximum.accumulate(log_lr)))


def confidence_sequence(diff: float, variance: float, tau2: float, alpha: float = 0.05) -> tuple[float, float]:
    """The always-valid interval that matches ``msprt``: it holds the true difference at every look
    with probability 1 - alpha.

    Args:
        diff: the difference at this look.
        variance: its variance.
        tau2: the mixing variance used by ``msprt``.
        alpha: 1 - the coverage.

    Returns:
        (low, high).
    """
    if variance <= 0:
        return diff, diff
    spread = math.log((variance + tau2) / variance) - 2 * math.log(alpha)
    half = math.sqrt(variance * (variance + tau2) / tau2 * spread)
    return diff - half, diff + half


def cuped(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """CUPED: per-user outcomes with the part a pre-experiment covariate predicts taken out.

    Args:
        y: per user, the outcome during the experiment (both variants together).
        x: per user, the same metric before the experiment (activity), aligned with ``y``.

    Returns:
        ``y - theta (x - mean(x))`` with ``theta = cov(y, x) / var(x)``: the same mean, a smaller
        variance when ``x`` predicts ``y``; ``y`` itself when ``x`` does not vary.
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    vx = x.var(ddof=1) if len(x) > 1 else 0.0
    if vx <= 0:
        return y
    theta = np.cov(y, x, ddof=1)[0, 1] / vx
    return y - theta * (x - x.mean())


def srm_p_value(counts: list[int] | np.ndarray, shares: list[float] | np.ndarray) -> float:
    """Sample-ratio mismatch: do the variants hold the users the traffic split promised?

    Args:
        counts: users per variant.
        shares: each variant's expected share (summing to 1).

    Returns:
        The chi-square goodness-of-fit p-value (1.0 with fewer than two variants expecting users,
        0.0 when a variant of share 0 holds any); below ``SRM_ALPHA`` the assignment is broken and
        no decision may be taken.
    """
    c, s = np.asarray(counts, dtype=float), np.asarray(shares, dtype=float)
    keep = s > 0
    if c[~keep].sum() > 0:  # users in a variant that should hold none: the assignment is broken
        return 0.0
    if keep.sum() < 2 or c.sum() == 0:
        return 1.0
    return float(stats.chisquare(c[keep], c.sum() * s[keep] / s[keep].sum()).pvalue)


def interleaving_preference(control_credit: np.ndarray, challenger_credit: np.ndarray) -> tuple[float, float, int]:
    """Which team users preferred in interleaved lists.

    Args:
        control_credit: per user, the credit (clicks, conversions) control's items earned.
        challenger_credit: per user, the challenger's, aligned.

    Returns:
        (the challenger's share of the users who preferred one team, the two-sided binomial test's
        p-value against 1/2, the number of those users); ties are excluded.
    """
    a, b = np.asarray(control_credit, dtype=float), np.asarray(challenger_credit, dtype=float)
    wins, losses = int((b > a).sum()), int((a > b).sum())
    n = wins + losses
    if n == 0:
        return float("nan"), 1.0, 0
    return wins / n, float(stats.binomtest(wins, n, 0.5).pvalue), n
