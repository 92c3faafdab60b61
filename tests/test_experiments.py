"""Online-experiment building blocks: the statistics against independent computations (scipy, hand
algebra, simulation), assignment by hash, team-draft interleaving."""

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from recops.experiments import stats
from recops.experiments.assignment import BUCKETS, CHALLENGER, CONTROL, bucket, variant
from recops.experiments.interleave import team_credit, team_draft


# -- statistics -------------------------------------------------------------------------------------
def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.exponential(1.0, 300), rng.exponential(1.2, 200)
    diff, lo, hi, p = stats.welch(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_ratio_variance_is_the_linearised_one_and_matches_simulation():
    rng = np.random.default_rng(1)
    imps = rng.poisson(8, 2000) + 1
    clicks = rng.binomial(imps, rng.beta(2, 18, 2000))
    est = stats.ratio_estimate(clicks, imps)
    r = clicks.sum() / imps.sum()
    z = (clicks - r * imps) / imps.mean()  # the influence function of a ratio of means
    assert est.value == pytest.approx(r) and est.variance == pytest.approx(z.var(ddof=1) / len(z), rel=1e-9)
    # the sampling variance of the ratio over many user samples of the same size
    draws = []
    for _ in range(400):
        i = rng.integers(0, 2000, 2000)
        draws.append(clicks[i].sum() / imps[i].sum())
    assert np.var(draws) == pytest.approx(est.variance, rel=0.2)


def test_relative_lift_by_hand():
    a, b = stats.Estimate(0.10, 0.0001, 1000), stats.Estimate(0.12, 0.0001, 1000)
    lift = stats.relative_lift(a, b)
    se = math.sqrt(0.0001 / 0.1**2 + 0.12**2 * 0.0001 / 0.1**4)  # Var(b/a) by the delta method
    assert lift.lift == pytest.approx(0.2)
    assert (lift.low, lift.high) == pytest.approx((0.2 - 1.959964 * se, 0.2 + 1.959964 * se), rel=1e-5)
    assert lift.p_value == pytest.approx(2 * sps.norm.sf(0.2 / se))


def test_msprt_by_hand_and_never_rising():
    d, v, tau2 = 0.05, 0.0004, 0.01
    lr = math.sqrt(v / (v + tau2)) * math.exp(tau2 * d * d / (2 * v * (v + tau2)))
    p = stats.msprt(np.array([0.0, d, 0.0]), np.array([0.001, v, 0.0002]), tau2)
    assert p[0] == pytest.approx(1.0) and p[1] == pytest.approx(min(1.0, 1 / lr))
    assert p[2] == p[1]  # a later look with no difference does not take the evidence back
    # the confidence sequence excludes 0 exactly when the always-valid p-value is below alpha
    rng = np.random.default_rng(2)
    for d_, v_ in zip(rng.normal(0, 0.03, 200), rng.uniform(1e-5, 1e-3, 200)):
        lo, hi = stats.confidence_sequence(d_, v_, tau2, alpha=0.05)
        assert (lo > 0 or hi < 0) == (stats.msprt(np.array([d_]), np.array([v_]), tau2)[0] < 0.05)


def test_peeking_daily_keeps_the_false_positive_rate_only_for_the_sequential_test():
    rng = np.random.default_rng(3)
    sims, days, per_day = 300, 20, 50
    seq_fp = naive_fp = 0
    for _ in range(sims):
        a, b = rng.normal(0, 1, (days, per_day)), rng.normal(0, 1, (days, per_day))  # A/A
        n = per_day * np.arange(1, days + 1)
        ma, mb = np.cumsum(a.sum(1)) / n, np.cumsum(b.sum(1)) / n
        var = 2.0 / n
        seq_fp += stats.msprt(mb - ma, var, tau2=0.05).min() < 0.05
        naive_fp += (2 * sps.norm.sf(np.abs(mb - ma) / np.sqrt(var)) < 0.05).any()
    assert seq_fp / sims <= 0.06
    assert naive_fp / sims > 0.15  # looking every day at a fixed-horizon test finds "effects" in A/A


def test_cuped_keeps_the_mean_and_shrinks_the_variance():
    rng = np.random.default_rng(4)
    x = rng.gamma(2.0, 5.0, 5000)
    y = 0.8 * x + rng.normal(0, 2, 5000)
    adj = stats.cuped(y, x)
    slope = np.polyfit(x, y, 1)[0]  # theta is the least-squares slope of y on x
    assert adj.mean() == pytest.approx(y.mean())
    assert adj == pytest.approx(y - slope * (x - x.mean()), rel=1e-6)
    assert adj.var() < 0.2 * y.var()
    assert np.array_equal(stats.cuped(y, np.ones(5000)), y)


def test_srm_matches_scipy_and_flags_a_broken_split():
    assert stats.srm_p_value([5050, 4950], [0.5, 0.5]) == pytest.approx(sps.chisquare([5050, 4950]).pvalue)
    assert stats.srm_p_value([5200, 4800], [0.5, 0.5]) < stats.SRM_ALPHA
    assert stats.srm_p_value([8010, 1990], [0.8, 0.2]) > stats.SRM_ALPHA
    assert stats.srm_p_value([10, 0], [1.0, 0.0]) == 1.0


def test_interleaving_preference_excludes_ties_and_matches_scipy():
    control = np.array([1, 0, 2, 1, 0, 0, 3, 1])
    challenger = np.array([2, 0, 1, 3, 1, 0, 4, 1])
    share, p, n = stats.interleaving_preference(control, challenger)
    assert n == 5 and share == pytest.approx(4 / 5)  # three ties left out
    assert p == pytest.approx(sps.binomtest(4, 5, 0.5).pvalue)


# -- assignment -------------------------------------------------------------------------------------
def test_assignment_is_sticky_across_processes_and_ramps_monotonically():
    users = [f"u{i}" for i in range(10_000)]
    at10 = {u for u in users if variant("salt-1", u, 0.1) == CHALLENGER}
    at50 = {u for u in users if variant("salt-1", u, 0.5) == CHALLENGER}
    assert at10 <= at50 and len(at10) < len(at50)
    assert stats.srm_p_value([len(at10), len(users) - len(at10)], [0.1, 0.9]) > stats.SRM_ALPHA
    assert all(variant("salt-1", u, 0.0) == CONTROL and variant("salt-1", u, 1.0) == CHALLENGER for u in users[:100])
    code = "from recops.experiments.assignment import bucket; print([bucket('salt-1', f'u{i}') for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.strip() == str([bucket("salt-1", f"u{i}") for i in range(50)])  # no per-process hash seed
    assert {bucket("salt-2", u) for u in users[:50]} != {bucket("salt-1", u) for u in users[:50]}
    assert all(0 <= bucket("s", u) < BUCKETS for u in users[:100])
    with pytest.raises(ValueError, match="within"):
        variant("s", "u", 1.5)


# -- interleaving -----------------------------------------------------------------------------------
def test_team_draft_interleaves_without_duplicates_and_balances_the_teams():
    a = [f"i{n}" for n in range(20)]
    b = [f"i{n}" for n in (1, 0, 5, 7, 30, 31, 2, 32, 33, 34, 35, 36)]
    for seed in range(50):
        out = team_draft(a, b, 10, seed=f"req-{seed}")
        items = [i for i, _ in out]
        teams = [t for _, t in out]
        assert len(out) == 10 and len(set(items)) == 10
        assert {CONTROL, CHALLENGER} == set(teams) and abs(teams.count(CONTROL) - teams.count(CHALLENGER)) <= 1
        assert all(i in (a if t == CONTROL else b) for i, t in out)
        assert team_draft(a, b, 10, seed=f"req-{seed}") == out  # the request replays the same list
    short = team_draft(["x"], ["y", "z", "w"], 5, seed=1)
    assert sorted(i for i, _ in short) == ["w", "x", "y", "z"]  # a list that runs out lets the other pick
    assert team_credit(out, {items[0], items[1]}) == {t: teams[:2].count(t) for t in (CONTROL, CHALLENGER)}


def test_degenerate_inputs_give_no_evidence_rather_than_errors():
    assert stats.srm_p_value([1000, 50], [1.0, 0.0]) == 0.0  # users where none belong: broken assignment
    assert stats.srm_p_value([1000, 0], [1.0, 0.0]) == 1.0
    assert math.isnan(stats.welch(np.zeros(50), np.zeros(50))[3])
    assert math.isnan(stats.relative_lift(stats.Estimate(0.1, 0.0, 10), stats.Estimate(0.2, 0.0, 10)).p_value)
    p = stats.msprt(np.array([np.nan, 0.2, 0.2]), np.array([0.01, 0.001, 0.0005]), tau2=0.0025)
    assert p[0] == 1.0 and np.all(np.isfinite(p)) and p[2] < p[1] < 1.0
