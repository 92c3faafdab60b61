"""Figures logged with every training run, so runs compare side by side in the MLflow UI:
metrics vs K (model and popularity), NDCG per user segment, and the ranker's feature importance."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen: render to files

import matplotlib.pyplot as plt
import numpy as np

METRICS = {"ndcg": "NDCG", "recall": "Recall", "hitrate": "HitRate", "map": "MAP"}


def metric_vs_k(curve: dict, baseline: dict | None = None):
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
    order = np.argsort(gains)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(order) + 1.2))
    ax.barh([names[i] for i in order], gains[order])
    ax.set_xlabel("total gain")
    ax.set_title(f"Ranker feature importance (top {len(order)})")
    fig.tight_layout()
    return fig


def training_figures(model, evaluation: dict, k: int) -> dict:
    """``{artifact file name: figure}`` for one training run."""
    figs = {}
    if "curve" in evaluation:
        figs["plots/metric_vs_k.png"] = metric_vs_k(evaluation["curve"], evaluation.get("baseline_curve"))
    if "segments" in evaluation:
        figs["plots/ndcg_by_segment.png"] = per_segment(evaluation["segments"], evaluation.get("baseline_segments"), k)
    if model.ranker is not None:
        figs["plots/feature_importance.png"] = feature_importance(model.feature_names, model.ranker.feature_importance("gain"))
    return figs


def close(figs: dict) -> None:
    for f in figs.values():
        plt.close(f)
