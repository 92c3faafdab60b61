"""Figures logged with every training run, so runs compare side by side in the MLflow UI:
metrics vs K (model and popularity), NDCG per user segment, and the ranker's feature importance."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen: render to files

import matplotlib.pyplot as plt
import numpy as np

METRICS = {"ndcg": "NDCG", "recall": "Recall", "hitrate": "HitRate", "map": "MAP"}


def metric_vs_k(curve: dict, baseline: dict | None = None):
    """One panel per metric of METRICS: its value at each K, the model's next to the baseline's.

    Args:
        curve: K -> the model's metrics at K, keyed ``{metric}_at_{K}`` (e.g. ``ndcg_at_10``).
        baseline: the same for the popularity baseline; None: the model only.

    Returns:
        The matplotlib figure (free it with ``close``).
    """
    ks = sorted(curve)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for ax, m in zip(axes, METRICS):
        ax.plot(ks, [curve[k][f"{m}_at_{k}"] for k in ks], marker="o", label="recops")
        if baseline:
            ax.plot(ks, [baseline[k][f"{m}_at_{k}"] for k in ks], marker="s", linestyle="--", label="popularity")
        ax.set_title(f"{METRICS[m]}@K")
        ax.set_xlabel("K")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return fig


def per_segment(segments: dict, baseline: dict | None, k: int):
    """NDCG@k per user segment as bars, the model's next to the baseline's.

    Args:
        segments: the model's ``ndcg_at_{k}_{segment}`` and ``users_{segment}`` (user count) values.
        baseline: the popularity baseline's ``ndcg_at_{k}_{segment}`` values; None: the model only.
        k: the cutoff in the keys.

    Returns:
        The matplotlib figure.
    """
    names = [key.rsplit("_", 1)[1] for key in segments if key.startswith(f"ndcg_at_{k}_")]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.38 if baseline else 0.6
    ax.bar(x - (width / 2 if baseline else 0), [segments[f"ndcg_at_{k}_{n}"] for n in names], width, label="recops")
    if baseline:
        ax.bar(x + width / 2, [baseline[f"ndcg_at_{k}_{n}"] for n in names], width, label="popularity")
    ax.set_xticks(x, [f"{n}\n({int(segments[f'users_{n}'])} users)" for n in names])
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title("NDCG by user segment (distinct items before the cut)")
    ax.legend()
    fig.tight_layout()
    return fig


def feature_importance(names: list[str], gains: np.ndarray, top: int = 25):
    """The ranker's features with the largest total gain as horizontal bars, the largest on top.

    Args:
        names: the feature names.
        gains: each feature's total gain, aligned with ``names``.
        top: how many features are shown.

    Returns:
        The matplotlib figure.
    """
    order = np.argsort(gains)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(order) + 1.2))
    ax.barh([names[i] for i in order], gains[order])
    ax.set_xlabel("total gain")
    ax.set_title(f"Ranker feature importance (top {len(order)})")
    fig.tight_layout()
    return fig


def training_figures(model, evaluation: dict, k: int) -> dict:
    """``{artifact file name: figure}`` for one training run.

    Args:
        model: the trained ``RecopsModel``; without a ranker there is no feature importance figure.
        evaluation: the training evaluation; its ``curve``/``baseline_curve`` (see metric_vs_k) and
            ``segments``/``baseline_segments`` (see per_segment) are plotted when present.
        k: the cutoff of the segment figure.

    Returns:
        The figures by artifact path (``plots/*.png``); free them with ``close`` once logged.
    """
    figs = {}
    if "curve" in evaluation:
        figs["plots/metric_vs_k.png"] = metric_vs_k(evaluation["curve"], evaluation.get("baseline_curve"))
    if "segments" in evaluation:
        figs["plots/ndcg_by_segment.png"] = per_segment(evaluation["segments"], evaluation.get("baseline_segments"), k)
    if model.ranker is not None:
        figs["plots/feature_importance.png"] = feature_importance(model.feature_names,
                                                                  model.ranker.feature_importance("gain"))
    return figs


def close(figs: dict) -> None:
    """Close the figures, which pyplot otherwise keeps in memory.

    Args:
        figs: artifact name -> figure, as from training_figures.
    """
    for f in figs.values():
        plt.close(f)
