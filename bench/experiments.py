"""Online experiments, simulated: the always-valid test against peeking, its power, and interleaving.

A click model on the synthetic generator's planted tastes (``truth["taste"]``) decides who clicks:
an item shown at position p (1-based) is clicked with probability ``min(CLICK_CAP, propensity *
position_bias(p) * attractiveness)``, ``position_bias(p) = 1 / log2(p + 1)`` (1 at the top, 0.29 at
10) and ``attractiveness = FLOOR + (PEAK - FLOOR) * taste[user, category] / max(taste[user])``: 0.30
for the user's favourite category, 0.02 for one they do not care for. A list that follows the user's
latent tastes therefore truly earns more clicks. ``propensity`` is the user's own keenness to click,
lognormal with ``sigma = PROPENSITY_SIGMA = 1`` and mean 1: users' engagement is heavy-tailed in real
logs (here the keenest tenth of the users make 39% of the clicks, and the least keen tenth click at
under a sixth of the average rate). The generator plants the same lognormal(0, 1) law for its users'
``activity``, but its truth does not return it, so the propensity is drawn afresh, independent of the
tastes and of how often the user returns. ``CLICK_CAP = 0.95``: no position is clicked for sure.
``--propensity-sigma 0`` is the homogeneous model (every user equally keen, the model before the
propensity), which part 3 also prints for contrast.

Traffic: ``--users-per-day`` new users arrive every day of a ``--days``-day experiment (the day drawn
at random), each returns on each later day with their own probability (Beta(1, 3): a quarter on
average); every visit shows one list of ``K`` items (``K`` impressions). A user's variant is
``recops.experiments.assignment.variant`` (the product's hash). In parts 1-2 a simulated user is a
test user of part 3's first world (their full-model list) with a freshly drawn propensity; their
per-impression click probability is their click model's mean over that list, and a day's clicks are
drawn as one binomial of it (the challenger's multiplied by 1 + lift, at most 1).

1. A/A: both arms alike; after every day the product's rule (CTR per variant by ``ratio_estimate``,
   ``relative_lift``, mSPRT over the looks so far with ``tau2 = experiment_min_lift**2``, a decision
   once its p-value < ``experiment_alpha``) next to the fixed-horizon tests read daily (the lift's
   p-value, and Welch's t-test on per-user CTR), each stopping at its first rejection.
2. Power and median days to a decision of that rule for planted CTR lifts of 5% and 10%.
3. Users needed for 95% power (two-sided alpha 0.05) to tell two real trained models apart — the full
   model (challenger) and a popularity-only one (control, ``generators=["popularity"]``, still with the
   ranker), each trained by ``train_on_split`` on synthetic events, top-``K`` lists per test user (the
   users with a test item after the pipeline split's cut) by ``recommend_at_cuts`` — by an A/B test of
   CTR (per arm the per-user variance s2 of the linearised CTR, as ``ratio_estimate`` has it:
   ``n = 2 (z_.975 + z_.95)^2 (s2_a + s2_b) / d^2`` over both arms) and by team-draft interleaving (win
   share w among the users who preferred a team: ``m = ((z_.975 / 2 + z_.95 sqrt(w (1 - w))) / (w -
   1/2))^2`` of them, divided by the non-tied share). Users visit as in 1-2. The moments are exact
   expectations over the test users (the propensity by Gauss-Hermite quadrature, clicks, visits, and
   every coin pattern of ``team_draft``), so a small difference is not lost in Monte Carlo noise. What
   is left is sampling: of the test users (their tastes and lists; the 95% intervals are a bootstrap
   over them, ``--bootstrap`` replicates), and of the two models, which differ in kind from one data
   set to the next (how much of the full model's gain shows in the interleaved list varies), so it is
   all done in ``--worlds`` synthetic worlds (data sets of ``--events`` events from generator seeds
   ``seed + 7, seed + 8, ...``, each with its own models) and the headline, the ratio A/B /
   interleaving, is their median, with every world's. Both click models are shown: heterogeneous
   propensity (the JSON line's ``interleave_advantage``) and homogeneous (``homogeneous_...``). A
   simulation with the product's functions (``ratio_estimate``, ``team_draft``, ``team_credit``,
   ``interleaving_preference``) over about ``--check-users`` copies of the first world's test users
   checks its heterogeneous moments. The bare popularity list (no ranker) against the full model is
   shown too, for reference.

Prints the figures and ends with one JSON line of all of them. Run from the repository root:
`python bench/experiments.py` (`--aa-sims`, `--power-sims`, `--users-per-day`, `--events`, ... for sizes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from scipy import stats as sps

from recops.config import Settings, load_settings
from recops.experiments.assignment import CHALLENGER, CONTROL, variant
from recops.experiments.interleave import team_credit, team_draft
from recops.experiments.stats import interleaving_preference, msprt, ratio_estimate, relative_lift, srm_p_value
from recops.generate import CATEGORY_NAMES, generate
from recops.models.popularity import Popularity
from recops.models.rules import BusinessRules
from recops.schema import normalize_events, normalize_items, normalize_users
from recops.training import inner_windows, pipeline_split, recommend_at_cuts, train_on_split

K = 10  # items per list: one visit, K impressions
PEAK, FLOOR = 0.30, 0.02  # attractiveness of the user's favourite category, and of one they do not care for
# A user's click propensity ~ lognormal(-sigma^2 / 2, sigma), mean 1, multiplying all their click probabilities:
# users' engagement is heavy-tailed in real logs (sigma 1: the keenest tenth make 39% of the clicks), and the
# generator plants the same lognormal(0, 1) law for its users' activity.
PROPENSITY_SIGMA = 1.0
CLICK_CAP = 0.95  # however keen the user, no position is clicked for sure
PROPENSITY_NODES = 40  # Gauss-Hermite nodes of the exact expectation over the propensity (part 3)
RETURN_BETA = (1.0, 3.0)  # a user's daily return probability ~ Beta(a, b)
Z_ALPHA, Z_POWER = sps.norm.ppf(0.975), sps.norm.ppf(0.95)  # two-sided alpha 0.05, power 95%


# -- the click model -------------------------------------------------------------------------------
def position_bias(k: int = K) -> np.ndarray:
    """The examination probability of positions 1..k: ``1 / log2(p + 1)``."""
    return 1.0 / np.log2(np.arange(1, k + 1) + 1.0)


def attractiveness(taste: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """Per item, the click probability once examined, of a user of propensity 1: grows from FLOOR to
    PEAK with the user's taste for its category relative to their favourite one.

    Args:
        taste: the user's category tastes (``truth["taste"]``).
        cats: the items' category indexes (into ``CATEGORY_NAMES``).

    Returns:
        One probability per item.
    """
    return FLOOR + (PEAK - FLOOR) * taste[cats] / taste.max()


def click_probs(lists: list[list[str]], tastes: np.ndarray, cat_of: dict[str, int]) -> np.ndarray:
    """The click probability of every position of every user's list at propensity 1 (0 past a short
    list's end); ``keen`` turns them into a given propensity's.

    Args:
        lists: per user, the item ids shown, best first.
        tastes: per user (aligned), the category tastes.
        cat_of: item id -> category index.

    Returns:
        (users, K) probabilities.
    """
    out = np.zeros((len(lists), K))
    bias = position_bias()
    for r, (items, taste) in enumerate(zip(lists, tastes)):
        cats = np.array([cat_of[i] for i in items[:K]], dtype=int)
        out[r, : len(cats)] = bias[: len(cats)] * attractiveness(taste, cats)
    return out


def keen(probs: np.ndarray, propensity: np.ndarray | float) -> np.ndarray:
    """Click probabilities at propensity 1 scaled by a user's propensity (broadcast), capped at CLICK_CAP."""
    return np.minimum(probs * propensity, CLICK_CAP)


def draw_propensity(rng: np.random.Generator, n: int, sigma: float = PROPENSITY_SIGMA) -> np.ndarray:
    """``n`` users' click propensities: lognormal(-sigma^2 / 2, sigma), mean 1 (all 1 for sigma 0)."""
    return rng.lognormal(-sigma**2 / 2, sigma, n) if sigma > 0 else np.ones(n)


def propensity_law(sigma: float, nodes: int = PROPENSITY_NODES) -> tuple[np.ndarray, np.ndarray]:
    """The propensity's law as quadrature nodes: ``E[g(propensity)] ~ sum(weights * g(values))``
    (Gauss-Hermite in the log; one node at 1 for sigma 0).

    Returns:
        ``(values, weights)``, the weights summing to 1.
    """
    if sigma <= 0:
        return np.ones(1), np.ones(1)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    return np.exp(sigma * z - sigma**2 / 2), w / w.sum()


def visits(rng: np.random.Generator, n: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrival day and daily visits of ``n`` users over ``days`` days: one visit on the arrival day,
    then each later day with the user's own return probability.

    Returns:
        ``(arrival, seen)``: arrival day per user, and (users, days) visit indicators.
    """
    arrival = rng.integers(0, days, n)
    back = rng.beta(*RETURN_BETA, n)
    day = np.arange(days)
    seen = (day[None, :] == arrival[:, None]) | ((day[None, :] > arrival[:, None])
                                                   & (rng.random((n, days)) < back[:, None]))
    return arrival, seen.astype(np.int64)


# -- the simulated experiment ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Outcome:
    """The first day (1-based) each rule rejected "no difference" (0: never), and the lift then."""

    msprt_day: int
    msprt_lift: float
    naive_day: int
    welch_day: int


def run_experiment(rng: np.random.Generator, probs: np.ndarray, is_challenger: np.ndarray, days: int,
                   users_per_day: int, lift: float, settings: Settings, with_welch: bool,
                   sigma: float = PROPENSITY_SIGMA) -> Outcome:
    """One simulated experiment, looked at after every day.

    Args:
        rng: the random generator.
        probs: the population's per-position click probabilities at propensity 1 (users are drawn from
            it, each with a fresh propensity).
        is_challenger: the assignment of user ids ``u0, u1, ...`` (at least ``days * users_per_day``).
        days: the experiment's length.
        users_per_day: new users per day (on average).
        lift: the challenger's relative CTR lift (0: A/A).
        settings: ``experiment_min_lift`` and ``experiment_alpha``.
        with_welch: also read Welch's test on per-user CTR every day.
        sigma: the propensity's log standard deviation (0: every user equally keen).

    Returns:
        The days of the first rejection of each rule.
    """
    n = days * users_per_day
    arrival, seen = visits(rng, n, days)
    order = np.argsort(arrival, kind="stable")  # users who arrived by day t are a prefix
    arrival, seen, arm = arrival[order], seen[order], is_challenger[:n]  # ids are handed out in arrival order
    ctr = keen(probs[rng.integers(0, len(probs), n)], draw_propensity(rng, n, sigma)[:, None]).mean(axis=1)
    p = np.minimum(ctr * np.where(arm, 1.0 + lift, 1.0), 1.0)
    imps = np.cumsum(seen * K, axis=1)
    clicks = np.cumsum(rng.binomial(seen * K, p[:, None]), axis=1)
    arrived = np.searchsorted(arrival, np.arange(days), side="right")
    diffs, variances = [], []
    tau2, alpha = settings.experiment_min_lift**2, settings.experiment_alpha
    out = {"msprt_day": 0, "msprt_lift": float("nan"), "naive_day": 0, "welch_day": 0}
    for t in range(days):
        m = arrived[t]
        a, b = ~arm[:m], arm[:m]
        c_est = ratio_estimate(clicks[:m, t][a], imps[:m, t][a])
        h_est = ratio_estimate(clicks[:m, t][b], imps[:m, t][b])
        est = relative_lift(c_est, h_est)
        diffs.append(est.lift)
        variances.append(est.se**2)
        if not out["msprt_day"] and msprt(diffs, variances, tau2)[-1] < alpha:
            out["msprt_day"], out["msprt_lift"] = t + 1, est.lift
        if not out["naive_day"] and est.p_value < 0.05:
            out["naive_day"] = t + 1
        if with_welch and not out["welch_day"]:
            u_ctr = clicks[:m, t] / imps[:m, t]
            if sps.ttest_ind(u_ctr[a], u_ctr[b], equal_var=False).pvalue < 0.05:
                out["welch_day"] = t + 1
        if out["msprt_day"] and out["naive_day"] and (out["welch_day"] or not with_welch):
            break
    return Outcome(**out)


def simulate(rng: np.random.Generator, probs: np.ndarray, is_challenger: np.ndarray, sims: int, days: int,
             users_per_day: int, lift: float, settings: Settings, with_welch: bool = False,
             sigma: float = PROPENSITY_SIGMA) -> list[Outcome]:
    """``sims`` independent experiments (see ``run_experiment``)."""
    return [run_experiment(rng, probs, is_challenger, days, users_per_day, lift, settings, with_welch, sigma)
            for _ in range(sims)]


# -- two real models -------------------------------------------------------------------------------
def trained_lists(n_events: int, seed: int, home: Path) -> dict:
    """Train the full model and a popularity-only one on synthetic events (the pipeline's split, with
    ``DirectFeatures``), and list each one's top-K for the evaluation split's test users as of the cut;
    the bare popularity generator's lists (no ranker, the same for everyone) too, for reference.

    Returns:
        ``users`` (test user ids); ``full``, ``popularity`` and ``bare`` (lists aligned with them);
        ``tastes`` ((users, categories) planted tastes), ``cat_of`` (item id -> category index) and
        ``fit_s`` (training seconds per model).
    """
    data = generate(n_events=n_events, seed=seed, end="2026-11-01")
    events, items, users = normalize_events(data.events), normalize_items(data.items), normalize_users(data.users)
    base = load_settings(home=home)
    outer = pipeline_split(events, base)
    out = {"users": outer.users, "fit_s": {}}
    for name, gens in (("full", list(base.generators)), ("popularity", ["popularity"])):
        t = time.perf_counter()
        s = dataclasses.replace(base, generators=gens)
        inner = inner_windows(outer.train, lambda e, s=s: pipeline_split(e, s), s.ranker_windows, s.ranker_max_users)
        model = train_on_split(outer.train, items, users, s, inner)
        recs = recommend_at_cuts(model, outer, items, K, BusinessRules.from_settings(s))
        out[name] = [recs[u] for u in outer.users]
        out["fit_s"][name] = round(time.perf_counter() - t, 1)
    pop, excl = Popularity(weights=base.event_types).fit(outer.train), outer.excluded()
    out["bare"] = [[i for i, _ in pop.recommend(u, K, exclude=excl.get(u, set()))] for u in outer.users]
    cat_index = {c: i for i, c in enumerate(CATEGORY_NAMES)}
    out["cat_of"] = dict(zip(data.items["item_id"], (cat_index[c] for c in data.items["category"])))
    out["tastes"] = np.vstack([data.truth["taste"][u] for u in outer.users])
    return out


def visit_pmf(days: int) -> np.ndarray:
    """``P(a user makes v visits)``, v = 0..days, under ``visits``: 1 + BetaBinomial(days left, RETURN_BETA)."""
    pmf = np.zeros(days + 1)
    for a in range(days):
        pmf[1:days - a + 1] += sps.betabinom.pmf(np.arange(days - a), days - 1 - a, *RETURN_BETA) / days
    return pmf


def coin_seeds(flips: int = K // 2) -> list[int]:
    """One ``team_draft`` seed per pattern of its first ``flips`` coins (it flips one on each tied
    round: at most K / 2 for a list of K), so averaging over them is the exact expectation over coins."""
    found: dict[tuple, int] = {}
    seed = 0
    while len(found) < 2**flips:
        coins = random.Random(str(seed))
        found.setdefault(tuple(coins.random() < 0.5 for _ in range(flips)), seed)
        seed += 1
    return list(found.values())


def ab_moments(lists: list[list[str]], m: dict, laws: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Per user, one visit's clicks on their list (K positions): mean s, its square, and variance q,
    each averaged over the propensity's law.

    Args:
        lists: one arm's lists, aligned with ``m["users"]``.
        m: ``tastes`` and ``cat_of`` (see ``trained_lists``).
        laws: propensity laws (``propensity_law``).

    Returns:
        Per law, ``s``, ``s2`` and ``q``: arrays over the users.
    """
    p0 = click_probs(lists, m["tastes"], m["cat_of"])
    out = []
    for values, weights in laws:
        p = keen(p0[:, None, :], values[None, :, None])  # (users, nodes, K)
        s, q = p.sum(axis=2), (p * (1 - p)).sum(axis=2)
        out.append({"s": s @ weights, "s2": (s * s) @ weights, "q": q @ weights})
    return out


def interleave_moments(ctrl: list[list[str]], chal: list[list[str]], m: dict, pv: np.ndarray,
                       laws: list[tuple[np.ndarray, np.ndarray]], chunk: int = 16) -> list[dict]:
    """Per user, the probabilities that the challenger's team earns more credit than control's over
    their visits, and less: exact over every coin pattern (``coin_seeds``), the clicks, the visits
    (``pv``) and each propensity law. One visit's credit difference has a distribution over -K..K
    (built position by position); its sum over v visits is the v-fold convolution, done in Fourier
    space over a circle of 2 K v_max + 1 values (no wrap-around).

    Args:
        ctrl: control's lists, aligned with ``m["users"]``.
        chal: the challenger's lists.
        m: ``tastes`` and ``cat_of`` (see ``trained_lists``).
        pv: the distribution of visits per user (``visit_pmf``).
        laws: propensity laws (``propensity_law``).
        chunk: users at a time.

    Returns:
        Per law, ``win`` and ``loss``: arrays over the users.
    """
    bias, seeds = position_bias(), coin_seeds()
    values = np.concatenate([v for v, _ in laws])  # every law's nodes at once
    cuts = np.cumsum([0] + [len(v) for v, _ in laws])
    n, vmax = len(ctrl), len(pv) - 1
    circle = 2 * K * vmax + 1
    out = [{"win": np.zeros(n), "loss": np.zeros(n)} for _ in laws]
    for lo in range(0, n, chunk):
        users = range(lo, min(n, lo + chunk))
        p0 = np.zeros((len(users), len(seeds), K))  # click probability at propensity 1, per coin pattern
        up = np.zeros((len(users), len(seeds), K), dtype=bool)  # the position is the challenger's
        for r, u in enumerate(users):
            for j, seed in enumerate(seeds):
                shown = team_draft(ctrl[u], chal[u], K, seed=seed)
                cats = np.array([m["cat_of"][i] for i, _ in shown], dtype=int)
                p0[r, j, : len(shown)] = bias[: len(shown)] * attractiveness(m["tastes"][u], cats)
                up[r, j, : len(shown)] = [team == CHALLENGER for _, team in shown]
        f = np.zeros((len(users), len(seeds), len(values), 2 * K + 1))
        f[..., K] = 1.0
        for pos in range(K):
            q = keen(p0[:, :, pos, None], values)[..., None]  # (users, seeds, nodes, 1)
            q_up = q * up[:, :, pos, None, None]  # a click on the challenger's item: credit + 1, else - 1
            g = f * (1 - q)
            g[..., 1:] += q_up * f[..., :-1]
            g[..., :-1] += (q - q_up) * f[..., 1:]
            f = g
        f = f.mean(axis=1)  # over the coin patterns: (users, nodes, 2 K + 1)
        ring = np.zeros((len(users), len(values), circle))
        ring[..., : K + 1], ring[..., circle - K:] = f[..., K:], f[..., :K]  # credit d at index d mod circle
        one = np.fft.rfft(ring, axis=-1)
        power, total = np.ones_like(one), np.zeros_like(one)
        for v in range(1, vmax + 1):
            power = power * one
            total += pv[v] * power
        for law, (_, weights), a, b in zip(out, laws, cuts[:-1], cuts[1:]):
            dist = np.fft.irfft(np.einsum("unf,n->uf", total[:, a:b], weights), n=circle, axis=-1)
            law["win"][lo:lo + len(users)] = dist[:, 1: K * vmax + 1].sum(axis=1)
            law["loss"][lo:lo + len(users)] = dist[:, K * vmax + 1:].sum(axis=1)
    return out


def user_moments(ctrl: list[list[str]], chal: list[list[str]], m: dict, pv: np.ndarray,
                 sigmas: list[float]) -> list[dict[str, np.ndarray]]:
    """Per propensity sigma, the per-user moments both sample sizes are built from (``sample_sizes``):
    ``s_control``, ``s2_control``, ``q_control``, the same of the challenger (``ab_moments``), ``win``
    and ``loss`` (``interleave_moments``)."""
    laws = [propensity_law(s) for s in sigmas]
    out = [{} for _ in sigmas]
    for arm, lists in ((CONTROL, ctrl), (CHALLENGER, chal)):
        for d, mo in zip(out, ab_moments(lists, m, laws)):
            d.update({f"{k}_{arm}": v for k, v in mo.items()})
    for d, mo in zip(out, interleave_moments(ctrl, chal, m, pv, laws)):
        d.update(mo)
    return out


def sample_sizes(mo: dict[str, np.ndarray], pv: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """Users needed for 95% power (two-sided 0.05) by A/B on CTR and by interleaving, for the population
    of the users weighted by ``weights`` (rows of user weights summing to 1: e.g. bootstrap replicates;
    None: the test users as they are). A/B: clicks over v visits have mean v s and variance v q, so the
    linearised CTR's per-user variance is ``(E v E q + E v^2 (E s^2 - (K ctr)^2)) / (K E v)^2``.

    Args:
        mo: per-user moments (``user_moments``).
        pv: the distribution of visits per user.
        weights: (replicates, users) weights; None: one row of equal weights.

    Returns:
        Arrays over the replicates: ``users_needed_ab``, ``users_needed_interleave``,
        ``interleave_advantage`` (their ratio), ``ctr_control``, ``ctr_challenger``, ``ab_relative_lift``,
        ``ab_user_var_control``, ``ab_user_var_challenger``, ``interleave_win_share`` and
        ``interleave_non_tied_share``.
    """
    n_users = len(mo["win"])
    weights = np.full((1, n_users), 1.0 / n_users) if weights is None else weights
    mean = {k: weights @ v for k, v in mo.items()}
    v = np.arange(len(pv))
    ev, ev2 = pv @ v, pv @ v**2
    out = {}
    for arm in (CONTROL, CHALLENGER):
        ctr = mean[f"s_{arm}"] / K
        out[f"ctr_{arm}"] = ctr
        out[f"ab_user_var_{arm}"] = (ev * mean[f"q_{arm}"] + ev2 * (mean[f"s2_{arm}"] - (K * ctr) ** 2)) / (K * ev) ** 2
    delta = out[f"ctr_{CHALLENGER}"] - out[f"ctr_{CONTROL}"]
    out["ab_relative_lift"] = delta / out[f"ctr_{CONTROL}"]
    var = out[f"ab_user_var_{CONTROL}"] + out[f"ab_user_var_{CHALLENGER}"]
    out["users_needed_ab"] = 2 * (Z_ALPHA + Z_POWER) ** 2 * var / delta**2
    non_tied = mean["win"] + mean["loss"]
    w = mean["win"] / non_tied
    out["users_needed_interleave"] = ((Z_ALPHA * 0.5 + Z_POWER * np.sqrt(w * (1 - w))) / (w - 0.5)) ** 2 / non_tied
    out["interleave_win_share"], out["interleave_non_tied_share"] = w, non_tied
    out["interleave_advantage"] = out["users_needed_ab"] / out["users_needed_interleave"]
    return out


def power_figures(ctrl: list[list[str]], chal: list[list[str]], m: dict, days: int, sigmas: list[float],
                  boot: np.ndarray | None = None) -> list[dict]:
    """Users needed to tell ``ctrl`` from ``chal`` by A/B and by interleaving (``sample_sizes``), users
    visiting as in a ``days``-day experiment, under each propensity sigma.

    Args:
        ctrl: control's lists, aligned with ``m["users"]``.
        chal: the challenger's lists.
        m: ``tastes`` and ``cat_of`` (see ``trained_lists``).
        days: the experiment's length.
        sigmas: the propensity sigmas.
        boot: (replicates, users) bootstrap weights of the test users, for 95% intervals; None: none.

    Returns:
        Per sigma, the figures of ``sample_sizes`` (floats) with, given ``boot``, ``{name}_low`` and
        ``{name}_high`` (the bootstrap's 2.5% and 97.5% quantiles) of the sample sizes, their ratio, the
        lift and the win share; ``propensity_sigma``, the relative lift's standard error as a sample of
        users, the mean visits per user and the lists' overlap (share of items in common).
    """
    pv = visit_pmf(days)
    out = []
    for sigma, mo in zip(sigmas, user_moments(ctrl, chal, m, pv, sigmas)):
        fig = {k: float(v[0]) for k, v in sample_sizes(mo, pv).items()}
        per_user = (mo[f"s_{CHALLENGER}"] - mo[f"s_{CONTROL}"]) / K
        fig["ab_relative_lift_se"] = float(per_user.std(ddof=1) / np.sqrt(len(per_user)) / fig[f"ctr_{CONTROL}"])
        if boot is not None:
            rep = sample_sizes(mo, pv, boot)
            for k in ("users_needed_ab", "users_needed_interleave", "interleave_advantage", "ab_relative_lift",
                      "interleave_win_share"):
                fig[f"{k}_low"], fig[f"{k}_high"] = (float(x) for x in np.quantile(rep[k], [0.025, 0.975]))
        out.append({"propensity_sigma": sigma, **fig, "visits_per_user": float(pv @ np.arange(days + 1)),
                    "list_overlap": float(np.mean([len(set(x) & set(y)) / K for x, y in zip(ctrl, chal)]))})
    return out


def simulated_check(ctrl: list[list[str]], chal: list[list[str]], m: dict, rng: np.random.Generator, days: int,
                    replicas: int, sigma: float = PROPENSITY_SIGMA) -> dict:
    """The same moments by simulation with the product's functions: the test users ``replicas`` times,
    each with drawn visits and propensity; per arm clicks and ``ratio_estimate``; per visit a
    ``team_draft`` list (seeded per visit), drawn clicks, ``team_credit``, and ``interleaving_preference``
    over users.

    Returns:
        Both arms' per-user variance of the linearised CTR, the win share (with its binomial 95%
        interval), the non-tied share, the mean visits and the simulated users.
    """
    who = np.tile(np.arange(len(ctrl)), replicas)
    _, seen = visits(rng, len(who), days)
    nv = seen.sum(axis=1)
    keenness = draw_propensity(rng, len(who), sigma)
    var = {}
    for arm, lists in ((CONTROL, ctrl), (CHALLENGER, chal)):
        p = keen(click_probs(lists, m["tastes"], m["cat_of"])[who], keenness[:, None])
        est = ratio_estimate(rng.binomial(nv[:, None], p).sum(axis=1), nv * K)
        var[arm] = est.variance * est.users
    bias = position_bias()
    credit = np.zeros((len(who), 2))
    for r, (u, n) in enumerate(zip(who, nv)):
        for j in range(n):
            shown = team_draft(ctrl[u], chal[u], K, seed=f"{r}-{m['users'][u]}-{j}")
            cats = np.array([m["cat_of"][i] for i, _ in shown], dtype=int)
            hit = rng.random(len(shown)) < keen(bias[: len(shown)] * attractiveness(m["tastes"][u], cats), keenness[r])
            got = team_credit(shown, {i for (i, _), h in zip(shown, hit) if h})
            credit[r] += got[CONTROL], got[CHALLENGER]
    w, _, non_tied = interleaving_preference(credit[:, 0], credit[:, 1])
    half = Z_ALPHA * np.sqrt(w * (1 - w) / non_tied)
    return {"ab_user_var_control": var[CONTROL], "ab_user_var_challenger": var[CHALLENGER],
            "interleave_win_share": w, "interleave_win_share_low": w - half, "interleave_win_share_high": w + half,
            "interleave_non_tied_share": non_tied / len(who), "visits_per_user": float(nv.mean()),
            "simulated_users": len(who), "propensity_sigma": sigma}


# -- figures ---------------------------------------------------------------------------------------
def rate(outcomes: list[Outcome], field: str) -> float:
    """The share of experiments whose rule ``field`` rejected on some day."""
    return float(np.mean([getattr(o, field) > 0 for o in outcomes]))


def aa_part(rng: np.random.Generator, probs: np.ndarray, is_chal: np.ndarray, args: argparse.Namespace,
            settings: Settings) -> dict:
    """Part 1: the false-positive rate of each rule read daily in A/A experiments (printed)."""
    t = time.perf_counter()
    aa = simulate(rng, probs, is_chal, args.aa_sims, args.days, args.users_per_day, 0.0, settings, with_welch=True,
                  sigma=args.propensity_sigma)
    fpr = {"aa_fpr_msprt": rate(aa, "msprt_day"), "aa_fpr_naive": rate(aa, "naive_day"),
           "aa_fpr_naive_welch": rate(aa, "welch_day")}
    half = Z_ALPHA * np.sqrt(0.05 * 0.95 / args.aa_sims)
    print(f"\n1. A/A false positives over {args.aa_sims} experiments, read after every day "
          f"({time.perf_counter() - t:.0f} s; a true 5% would read 5% +- {half:.1%})")
    print(f"   mSPRT, the product's rule                       {fpr['aa_fpr_msprt']:6.1%}   (target <= 5%)")
    print(f"   naive: lift p-value < 0.05 on any day           {fpr['aa_fpr_naive']:6.1%}")
    print(f"   naive: Welch t-test on per-user CTR, any day    {fpr['aa_fpr_naive_welch']:6.1%}")
    return fpr


def power_part(rng: np.random.Generator, probs: np.ndarray, is_chal: np.ndarray, args: argparse.Namespace,
               settings: Settings) -> dict:
    """Part 2: power and median days to a decision of the mSPRT rule for planted lifts (printed)."""
    t = time.perf_counter()
    out, rows = {}, []
    for lift in (0.05, 0.10):
        res = simulate(rng, probs, is_chal, args.power_sims, args.days, args.users_per_day, lift, settings,
                       sigma=args.propensity_sigma)
        right = [o.msprt_day for o in res if o.msprt_day and o.msprt_lift > 0]
        tag = f"{round(lift * 100)}pct"
        out[f"power_{tag}"] = len(right) / len(res)
        out[f"median_days_{tag}"] = float(np.median(right)) if right else float("nan")
        out[f"wrong_sign_{tag}"] = sum(bool(o.msprt_day) and o.msprt_lift < 0 for o in res)
        out[f"naive_power_{tag}"] = rate(res, "naive_day")
        rows.append((lift, out[f"power_{tag}"], out[f"median_days_{tag}"], out[f"wrong_sign_{tag}"]))
    print(f"\n2. the mSPRT rule with a planted CTR lift, {args.power_sims} experiments each "
          f"({time.perf_counter() - t:.0f} s)")
    print(f"   {'CTR lift':<10}{'power':>8}{'median days to decide':>24}{'wrong-sign decisions':>23}")
    for lift, pw, days, wrong in rows:
        print(f"   {lift:<10.0%}{pw:8.1%}{days:24.1f}{wrong:23d}")
    return out


def interval(fig: dict, key: str, fmt: str = ",.0f") -> str:
    """``value [low, high]`` of a figure with a bootstrap interval."""
    return f"{fig[key]:{fmt}} [{fig[key + '_low']:{fmt}}, {fig[key + '_high']:{fmt}}]"


def world_figures(rng: np.random.Generator, m: dict, args: argparse.Namespace) -> dict:
    """Part 3 in one world: users needed by A/B and by interleaving, full model vs popularity-only,
    under the heterogeneous and the homogeneous click models with bootstrap intervals over the world's
    test users, and the bare popularity list for reference (printed).

    Returns:
        The heterogeneous figures (``power_figures``) with ``homogeneous``, ``bare_popularity`` (itself
        with ``homogeneous``), ``seed``, ``test_users`` and ``fit_s``.
    """
    n = len(m["users"])
    boot = rng.multinomial(n, np.full(n, 1.0 / n), size=args.bootstrap) / n
    het, hom = power_figures(m["popularity"], m["full"], m, args.days, [args.propensity_sigma, 0.0], boot)
    bare_het, bare_hom = power_figures(m["bare"], m["full"], m, args.days, [args.propensity_sigma, 0.0])
    print(f"   world {m['seed']}: {n} test users, the lists share {het['list_overlap']:.0%} of their items "
          f"(models fitted in {m['fit_s']['full']} s and {m['fit_s']['popularity']} s)")
    for name, fig in (("heterogeneous", het), ("homogeneous", hom)):
        print(f"     {name:<15}A/B: CTR {fig['ctr_control']:.4f} vs {fig['ctr_challenger']:.4f} "
              f"({interval(fig, 'ab_relative_lift', '+.2%')}), per-user variance {fig['ab_user_var_control']:.5f} / "
              f"{fig['ab_user_var_challenger']:.5f}: {interval(fig, 'users_needed_ab')} users over both arms")
        print(f"     {'':<15}interleaving: the full model wins {interval(fig, 'interleave_win_share', '.2%')} of the "
              f"{fig['interleave_non_tied_share']:.0%} who prefer a team: "
              f"{interval(fig, 'users_needed_interleave')} users")
        print(f"     {'':<15}A/B / interleaving = {interval(fig, 'interleave_advantage', '.1f')}x")
    if (het["ab_relative_lift"] > 0) != (het["interleave_win_share"] > 0.5):
        print("     (A/B and interleaving disagree on which model is better here)")
    print(f"     heterogeneity multiplies A/B's users by {het['users_needed_ab'] / hom['users_needed_ab']:.1f}, "
          f"interleaving's by {het['users_needed_interleave'] / hom['users_needed_interleave']:.2f}; vs the bare "
          f"popularity list (no ranker; CTR {bare_het['ctr_control']:.4f}, lists share "
          f"{bare_het['list_overlap']:.0%}): "
          f"A/B {bare_het['users_needed_ab']:,.0f}, interleaving {bare_het['users_needed_interleave']:,.0f} users "
          f"({bare_het['interleave_advantage']:.1f}x; homogeneous {bare_hom['interleave_advantage']:.1f}x)")
    return {**het, "homogeneous": hom, "bare_popularity": {**bare_het, "homogeneous": bare_hom}, "seed": m["seed"],
            "test_users": n, "fit_s": m["fit_s"]}


def pooled(figs: list[dict], key: str = "interleave_advantage") -> dict:
    """The worlds' ratios pooled by a random-effects model on the log scale (DerSimonian-Laird): each
    world's log ratio has its bootstrap variance (from its 95% interval, ``((log high - log low) / 3.92)^2``:
    a world whose ratio is barely determined weighs little) plus a between-world variance ``tau^2``
    estimated from the worlds' spread (the two models differ in kind from one world to the next).

    Args:
        figs: per world, ``key`` with ``{key}_low`` and ``{key}_high`` (``power_figures`` with bootstrap).
        key: the ratio.

    Returns:
        ``estimate`` with its 95% interval ``low`` .. ``high``, and ``tau`` (the between-world standard
        deviation of the log ratio).
    """
    with np.errstate(divide="ignore"):
        y = np.log([f[key] for f in figs])
        v = ((np.log([f[f"{key}_high"] for f in figs]) - np.log([f[f"{key}_low"] for f in figs])) / (2 * Z_ALPHA)) ** 2
    w = 1 / v
    fixed = w @ y / w.sum()
    q = w @ (y - fixed) ** 2
    tau2 = max(0.0, (q - (len(y) - 1)) / (w.sum() - (w**2).sum() / w.sum())) if len(y) > 1 else 0.0
    w = 1 / (v + tau2)
    mu, se = w @ y / w.sum(), 1 / np.sqrt(w.sum())
    return {"estimate": float(np.exp(mu)), "low": float(np.exp(mu - Z_ALPHA * se)),
            "high": float(np.exp(mu + Z_ALPHA * se)), "tau": float(np.sqrt(tau2))}


def users_part(rng: np.random.Generator, worlds: list[dict], args: argparse.Namespace) -> dict:
    """Part 3: ``world_figures`` in every world, the ratio A/B / interleaving over the worlds (``pooled``),
    and the simulated check in the first world (printed)."""
    t = time.perf_counter()
    print(f"\n3. users to tell the full model (challenger) from the popularity-only one (control) at 95% power, "
          f"two-sided 0.05, in {len(worlds)} synthetic worlds of {args.events:,} events (each its own data and "
          f"models); users visit {visit_pmf(args.days) @ np.arange(args.days + 1):.2f} times on average; "
          f"[95% bootstrap interval over the world's test users, {args.bootstrap} replicates]; heterogeneous: "
          f"propensity sigma {args.propensity_sigma:g}, homogeneous: every user alike")
    figs = [world_figures(rng, m, args) for m in worlds]
    m = worlds[0]
    replicas = max(1, round(args.check_users / len(m["users"])))
    check = simulated_check(m["popularity"], m["full"], m, rng, args.days, replicas, args.propensity_sigma)
    het = figs[0]
    print(f"   simulated check, world {m['seed']}, heterogeneous ({check['simulated_users']} users): per-user CTR "
          f"variance {check['ab_user_var_control']:.5f} / {check['ab_user_var_challenger']:.5f} (exact "
          f"{het['ab_user_var_control']:.5f} / {het['ab_user_var_challenger']:.5f}), win share "
          f"{check['interleave_win_share']:.2%} [{check['interleave_win_share_low']:.2%}, "
          f"{check['interleave_win_share_high']:.2%}] (exact {het['interleave_win_share']:.2%}), non-tied "
          f"{check['interleave_non_tied_share']:.1%} (exact {het['interleave_non_tied_share']:.1%})")
    out = {}
    for prefix, get in (("", lambda f: f), ("homogeneous_", lambda f: f["homogeneous"])):
        fig = pooled([get(f) for f in figs])
        out[f"{prefix}interleave_advantage"] = fig["estimate"]
        out[f"{prefix}interleave_advantage_low"], out[f"{prefix}interleave_advantage_high"] = fig["low"], fig["high"]
        out[f"{prefix}interleave_advantage_tau"] = fig["tau"]
        out[f"{prefix}interleave_advantage_worlds"] = [get(f)["interleave_advantage"] for f in figs]
        out[f"{prefix}interleave_advantage_median"] = float(np.median(out[f"{prefix}interleave_advantage_worlds"]))
    print("   A/B / interleaving over the worlds (random effects on the log ratio; [95% interval], between-world "
          "sd of the log ratio, median of the worlds):")
    for prefix, name in (("", "heterogeneous"), ("homogeneous_", "homogeneous")):
        fig = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
        print(f"     {name:<15}{fig['interleave_advantage']:.1f}x [{fig['interleave_advantage_low']:.1f}, "
              f"{fig['interleave_advantage_high']:.1f}], sd {fig['interleave_advantage_tau']:.2f}, median "
              f"{fig['interleave_advantage_median']:.1f}x (worlds "
              f"{', '.join(f'{r:.1f}' for r in fig['interleave_advantage_worlds'])}); product promise: >= 10x")
    print(f"   ({time.perf_counter() - t:.0f} s)")
    return {**out, "worlds": figs, "check": check, "check_replicas": replicas}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aa-sims", type=int, default=500, help="A/A experiments")
    ap.add_argument("--power-sims", type=int, default=200, help="experiments per planted lift")
    ap.add_argument("--days", type=int, default=14, help="length of every experiment, one look a day")
    ap.add_argument("--users-per-day", type=int, default=1000, help="new users a day (parts 1 and 2)")
    ap.add_argument("--events", type=int, default=200_000, help="synthetic events of each world (part 3)")
    ap.add_argument("--worlds", type=int, default=3, help="synthetic data sets, each with its own models (part 3)")
    ap.add_argument("--propensity-sigma", type=float, default=PROPENSITY_SIGMA,
                    help="log standard deviation of the users' click propensity (0: homogeneous)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates of part 3's test users")
    ap.add_argument("--check-users", type=int, default=100_000,
                    help="simulated users (copies of the test users) of part 3's simulated check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t_all = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    settings = load_settings()
    worlds = []
    for i in range(args.worlds):
        root = Path(tempfile.mkdtemp(prefix="recops-bench-experiments-"))
        try:
            worlds.append({**trained_lists(args.events, args.seed + 7 + i, root / "home"), "seed": args.seed + 7 + i})
        finally:
            shutil.rmtree(root, ignore_errors=True)
    m = worlds[0]
    probs = click_probs(m["full"], m["tastes"], m["cat_of"])  # the population's click probabilities at propensity 1
    sample = np.random.default_rng(args.seed + 1)
    ctr = keen(probs[sample.integers(0, len(probs), 100_000)],
               draw_propensity(sample, 100_000, args.propensity_sigma)[:, None]).mean(axis=1)
    flat = probs.mean(axis=1)
    print(f"{args.worlds} worlds of {args.events:,} synthetic events trained ({time.perf_counter() - t_all:.0f} s); "
          f"parts 1-2 draw from world {m['seed']}'s {len(probs)} test users; per-impression CTR of its full model's "
          f"lists: mean {ctr.mean():.3f}, p10 {np.percentile(ctr, 10):.3f}, p90 {np.percentile(ctr, 90):.3f} with "
          f"propensity sigma {args.propensity_sigma:g} (homogeneous: mean {flat.mean():.3f}, p10 "
          f"{np.percentile(flat, 10):.3f}, p90 {np.percentile(flat, 90):.3f})")
    n_ids = args.days * args.users_per_day
    is_chal = np.array([variant("bench-experiments", f"u{i}", 0.5) == CHALLENGER for i in range(n_ids)])
    srm = srm_p_value([int((~is_chal).sum()), int(is_chal.sum())], [0.5, 0.5])
    print(f"traffic: {args.users_per_day} new users a day for {args.days} days, {n_ids:,} users, "
          f"{is_chal.mean():.2%} in the challenger by variant() (SRM p = {srm:.2f}); rule: mSPRT, tau = "
          f"experiment_min_lift = {settings.experiment_min_lift}, decide at p < {settings.experiment_alpha}")
    fpr = aa_part(rng, probs, is_chal, args, settings)
    power = power_part(rng, probs, is_chal, args, settings)
    need = users_part(rng, worlds, args)
    total = time.perf_counter() - t_all
    print(f"\ntotal {total:.0f} s")
    print(json.dumps({"bench": "experiments", **fpr, **power, **need, "aa_sims": args.aa_sims,
                      "power_sims": args.power_sims, "days": args.days, "users_per_day": args.users_per_day,
                      "events": args.events, "propensity_sigma": args.propensity_sigma, "click_cap": CLICK_CAP,
                      "bootstrap": args.bootstrap, "min_lift": settings.experiment_min_lift,
                      "alpha": settings.experiment_alpha, "seconds": round(total, 1)}, default=float))


if __name__ == "__main__":
    main()
