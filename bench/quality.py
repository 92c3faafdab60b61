"""Recommendation quality of recops next to the strongest open-source baselines, on one split each.

Datasets: MovieLens 100K and the Online Retail sample (../shared/data) and synthetic events; splits:
global time cut and per-user temporal (last 20% of each user's distinct items). Peers: popularity,
ALS and item-kNN from `implicit` (small grids), EASE (regularisation grid); every grid is tuned on a
validation slice carved out of the training data the same way the test slice was carved out.

Prints one table and ends with one JSON line per dataset and split. Run: `make bench-quality`
(installs the optional `bench` extra). `--quick` uses smaller grids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.config import load_settings
from recops.evaluation import EvalSplit, evaluate, generator_recommender, global_split, per_user_split, recommend_all
from recops.generate import generate
from recops.importers import load_movielens, load_online_retail
from recops.models.ease import EASE
from recops.models.popularity import Popularity
from recops.schema import normalize_events, normalize_items, normalize_users
from recops.training import inner_windows, recommend_at_cuts, train_on_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
K = 10


def datasets(synthetic_events: int) -> dict:
    out = {}
    if (SHARED / "movielens-100k").exists():
        out["movielens-100k"] = (load_movielens(SHARED / "movielens-100k"), 30.0)
    if (SHARED / "online-retail").exists():
        out["online-retail"] = (load_online_retail(SHARED / "online-retail"), 30.0)
    d = generate(synthetic_events, end="2026-11-01", seed=1)
    from recops.importers import Dataset

    out["synthetic"] = (Dataset(normalize_events(d.events), normalize_items(d.items), normalize_users(d.users)), 7.0)
    return out


def make_split(kind: str, events: pd.DataFrame, holdout_days: float) -> EvalSplit:
    return per_user_split(events) if kind == "per_user" else global_split(events, holdout_days=holdout_days)


# -- peers ----------------------------------------------------------------------------------------
class ImplicitPeer:
    """An `implicit` model on the binary user-item matrix, recommending with seen items filtered."""

    def __init__(self, factory, name: str):
        self.factory, self.name = factory, name

    def fit(self, train: pd.DataFrame):
        tr = train[train["user_id"].notna()]
        self.users = pd.Index(pd.unique(tr["user_id"]))
        self.items = pd.Index(pd.unique(tr["item_id"]))
        pairs = tr[["user_id", "item_id"]].drop_duplicates()
        self.ui = sp.csr_matrix((np.ones(len(pairs), dtype=np.float32),
                                 (self.users.get_indexer(pairs["user_id"]), self.items.get_indexer(pairs["item_id"]))),
                                shape=(len(self.users), len(self.items)))
        self.model = self.factory()
        self.model.fit(self.ui, show_progress=False)
        return self

    def recommend_all(self, split: EvalSplit, k: int) -> dict[str, list[str]]:
        users = [u for u in split.users if u in self.users]
        out = {u: [] for u in split.users}
        if users:
            idx = self.users.get_indexer(users)
            ids, _ = self.model.recommend(idx, self.ui[idx], N=k, filter_already_liked_items=True)
            for u, row in zip(users, ids):
                out[u] = [self.items[i] for i in row if i >= 0]
        return out


def tune(candidates: dict, train: pd.DataFrame, kind: str, holdout_days: float, items) -> tuple[str, object]:
    """Pick the candidate with the best NDCG@10 on a validation slice carved out of ``train``."""
    val = make_split(kind, train, holdout_days)
    best, best_score = None, -1.0
    for name, make in candidates.items():
        recs = run(make(), val, items)[0]
        score = evaluate(recs, val, items, ks=(K,))[f"ndcg@{K}"]
        if score > best_score:
            best, best_score = name, score
    return best, candidates[best]


def run(model, split: EvalSplit, items, users=None) -> tuple[dict, float, float]:
    t = time.perf_counter()
    if isinstance(model, ImplicitPeer):
        model.fit(split.train)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        recs = model.recommend_all(split, K)
    else:
        model.fit(split.train, items, users)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        recs = recommend_all(generator_recommender(model), split, K)
    return recs, fit_s, time.perf_counter() - t


def peer_grid(quick: bool) -> dict[str, dict]:
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import CosineRecommender

    factors = (32, 64) if quick else (32, 64, 128)
    regs = (0.05,) if quick else (0.01, 0.05, 0.2)
    return {
        "als": {f"als(f={f},reg={r})": (lambda f=f, r=r: ImplicitPeer(lambda: AlternatingLeastSquares(
            factors=f, regularization=r, iterations=15, random_state=0, num_threads=1), "als"))
            for f in factors for r in regs},
        "itemknn": {f"itemknn(K={k})": (lambda k=k: ImplicitPeer(lambda: CosineRecommender(K=k, num_threads=1),
                                                                   "itemknn"))
                    for k in ((50, 200) if quick else (25, 50, 100, 200))},
        "ease": {f"ease(l2={l2})": (lambda l2=l2: EASE(l2=l2))
                 for l2 in ((100, 500) if quick else (50, 100, 250, 500, 1000))},
    }


def run_recops(split: EvalSplit, kind: str, holdout_days: float, ds) -> tuple[dict, float, float]:
    """recops as `recops train` builds it (default settings): its generators (EASE's regularisation
    and SVD's factors tuned by recops itself) + LambdaRank trained on labelled windows carved out of
    train alike, with the per-segment scorer chosen on the newest window."""
    t = time.perf_counter()
    settings = load_settings()
    inner = inner_windows(split.train, lambda e: make_split(kind, e, holdout_days), settings.ranker_windows,
                          settings.ranker_max_users)
    model = train_on_split(split.train, ds.items, ds.users, settings, inner)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    recs = recommend_at_cuts(model, split, ds.items, K)
    print(f"  recops on {kind}: tuned {model.meta['tuned']}, scorer {model.scorer}, ranker {model.meta['ranker']}",
          file=sys.stderr)
    return recs, fit_s, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--synthetic-events", type=int, default=200_000)
    ap.add_argument("--datasets", default="")
    args = ap.parse_args()
    try:
        grids = peer_grid(args.quick)
    except ImportError:
        sys.exit("bench/quality.py needs the optional peers: `make bench-quality` (uv sync --extra bench)")
    rows, lines = [], []
    for ds_name, (ds, holdout_days) in datasets(args.synthetic_events).items():
        if args.datasets and ds_name not in args.datasets.split(","):
            continue
        for kind in ("per_user", "global"):
            split = make_split(kind, ds.events, holdout_days)
            results = {}
            results["popularity"] = (Popularity(half_life_days=7.0),)
            for grid in grids.values():
                chosen, make = tune(grid, split.train, kind, holdout_days, ds.items)
                results[chosen] = (make(),)
            scored = {}
            for name, (model,) in results.items():
                recs, fit_s, rec_s = run(model, split, ds.items, ds.users)
                m = evaluate(recs, split, ds.items, ks=(K,))
                scored[name] = m
                rows.append((ds_name, kind, name, m[f"recall@{K}"], m[f"ndcg@{K}"], fit_s, rec_s))
            peers = dict(scored)
            best_peer = max(peers, key=lambda n: peers[n][f"ndcg@{K}"])
            recs, fit_s, rec_s = run_recops(split, kind, holdout_days, ds)
            m = evaluate(recs, split, ds.items, ks=(K,))
            rows.append((ds_name, kind, "recops", m[f"recall@{K}"], m[f"ndcg@{K}"], fit_s, rec_s))
            best = peers[best_peer][f"ndcg@{K}"]
            lines.append({"dataset": ds_name, "split": kind, "recops_ndcg@10": round(m[f"ndcg@{K}"], 5),
                          "best_peer": best_peer, "best_peer_ndcg@10": round(best, 5),
                          "ratio": round(m[f"ndcg@{K}"] / best, 3) if best else None, "users": len(split.test)})
    print(f"\n{'dataset':<16}{'split':<10}{'method':<26}{'Recall@10':>10}{'NDCG@10':>10}{'fit s':>8}{'rec s':>8}")
    for ds_name, kind, name, rec, ndcg, fit_s, rec_s in rows:
        print(f"{ds_name:<16}{kind:<10}{name:<26}{rec:10.4f}{ndcg:10.4f}{fit_s:8.2f}{rec_s:8.2f}")
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
