"""Ranking metrics over full-catalog recommendations (no sampled negatives), per user and averaged."""

from __future__ import annotations

import numpy as np


def per_user_metrics(recs: dict[str, list[str]], truth: dict[str, set[str]], k: int) -> dict[str, np.ndarray]:
    """Recall, NDCG, MAP, hit rate and MRR @k for each user that has holdout items (binary relevance).

    Args:
        recs: user -> recommended item ids, best first (only the first ``k`` count; a missing user scores 0).
        truth: user -> held-out items; users with none are left out.
        k: the cutoff.

    Returns:
        Metric name ("recall", "ndcg", "map", "hitrate", "mrr") -> one value per evaluated user, in the
        order of ``truth``; recall and MAP are divided by min(holdout size, ``k``).
    """
    users = [u for u in truth if truth[u]]
    out = {name: np.zeros(len(users)) for name in ("recall", "ndcg", "map", "hitrate", "mrr")}
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for n, u in enumerate(users):
        rel = truth[u]
        got = recs.get(u, [])[:k]
        hits = np.array([i in rel for i in got], dtype=float)
        if hits.size == 0:
            continue
        n_rel = len(rel)
        out["recall"][n] = hits.sum() / min(n_rel, k)
        ideal = discounts[: min(n_rel, k)].sum()
        out["ndcg"][n] = (hits * discounts[: len(hits)]).sum() / ideal
        prec_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        out["map"][n] = (prec_at * hits).sum() / min(n_rel, k)
        out["hitrate"][n] = float(hits.any())
        first = np.flatnonzero(hits)
        out["mrr"][n] = 1.0 / (first[0] + 1) if first.size else 0.0
    return out


def summarize(per_user: dict[str, np.ndarray], recs: dict[str, list[str]], catalog_size: int,
              k: int) -> dict[str, float]:
    """The per-user metrics averaged, plus catalog coverage and the number of evaluated users.

    Args:
        per_user: from ``per_user_metrics``.
        recs: user -> recommended item ids, best first (coverage counts the first ``k`` of every list).
        catalog_size: how many items the catalog has (0: coverage 0).
        k: the cutoff, for the metric names.

    Returns:
        "<metric>_at_<k>" -> mean over users (0 when none), "coverage_at_<k>" -> share of the catalog in
        some top ``k``, and "n_eval_users".
    """
    out = {f"{name}_at_{k}": float(v.mean()) if v.size else 0.0 for name, v in per_user.items()}
    shown = {i for items in recs.values() for i in items[:k]}
    out[f"coverage_at_{k}"] = len(shown) / catalog_size if catalog_size else 0.0
    out["n_eval_users"] = float(next(iter(per_user.values())).size)
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Args:
        values: the per-user values (1-D).
        n_boot: how many resamples.
        alpha: 1 - the confidence level (0.05: a 95% interval).
        seed: the resampling seed, so intervals are reproducible.

    Returns:
        (low, high); (0.0, 0.0) when ``values`` is empty.
    """
    if values.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
