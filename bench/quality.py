"""Recommendation quality of recops next to the strongest open-source baselines, on one split each.

Datasets: MovieLens 100K and the Online Retail sample (../shared/data) and synthetic events; splits:
global time cut and per-user temporal (last 20% of each user's distinct items). Peers: popularity,
ALS and item-kNN from `implicit` (small grids), EASE (regularisation grid); every grid is tuned on a
validation slice carved out of the training data the same way the test slice was carved out.

recops is measured on the path users take, with default settings in a fresh home per dataset and
split: the split's training events (and the items and users files where the data set has them) are
written to files and trained on with the code behind `recops train --events F --items F --users F`
(`recops.steps`: ingest, validate, features, train, in the order `flows.pipeline.train_file_flow`
chains them); the test users go to a file scored by the code behind `recops recommend` (the newest
version), and the CSV it writes is what gets evaluated. MovieLens' global cut is also trained on
the events file alone. Every method's lists go through one evaluation (`top_k`, then
`recops.evaluation.evaluate`): each user's training items are dropped and the first 10 count.

Prints one table (NDCG@10 with its 95% bootstrap interval), recops against the best peer (paired
bootstrap interval of the ratio) and ends with one JSON line per dataset, split and recops run.
Run: `make bench-quality` (installs the optional `bench` extra). `--quick` uses smaller grids;
`--datasets movielens-100k,online-retail,synthetic` and `--splits per_user,global` run a part.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.evaluation import EvalSplit, evaluate, generator_recommender, global_split, per_user_split, recommend_all
from recops.generate import generate
from recops.importers import Dataset, load_movielens, load_online_retail
from recops.models.ease import EASE
from recops.models.metrics import per_user_metrics
from recops.models.popularity import Popularity
from recops.schema import normalize_events, normalize_items, normalize_users

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
K = 10
MAX_K = 1000  # the most `recops recommend --k` takes
log = logging.getLogger("bench.quality")
EVENTS_ONLY = {("movielens-100k", "global")}  # also trained without --items/--users (side data can hurt)


def datasets(synthetic_events: int) -> dict:
    out = {}
    if (SHARED / "movielens-100k").exists():
        out["movielens-100k"] = (load_movielens(SHARED / "movielens-100k"), 30.0)
    if (SHARED / "online-retail").exists():
        out["online-retail"] = (load_online_retail(SHARED / "online-retail"), 30.0)
    d = generate(synthetic_events, end="2026-11-01", seed=1)
    out["synthetic"] = (Dataset(normalize_events(d.events), normalize_items(d.items), normalize_users(d.users)), 7.0)
    return out


def make_split(kind: str, events: pd.DataFrame, holdout_days: float) -> EvalSplit:
    return per_user_split(events) if kind == "per_user" else global_split(events, holdout_days=holdout_days)


def top_k(recs: dict[str, list[str]], split: EvalSplit, k: int = K) -> dict[str, list[str]]:
    """Every method's lists alike: each test user's training items dropped (the protocol), the first ``k`` kept."""
    excluded = split.excluded()
    return {u: [i for i in recs.get(u, []) if i not in excluded.get(u, ())][:k] for u in split.users}


def ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval (over users) of mean(a) / mean(b)."""
    idx = np.random.default_rng(seed).integers(0, a.size, (n_boot, a.size))
    den = b[idx].mean(axis=1)
    ratios = a[idx].mean(axis=1)[den > 0] / den[den > 0]
    return (float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))) if ratios.size else (np.nan, np.nan)


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
        score = evaluate(top_k(recs, val), val, items, ks=(K,))[f"ndcg@{K}"]
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


# -- recops, as its users run it ------------------------------------------------------------------
def fresh_settings(home: Path):
    """Default settings in a new home, exported the way the CLI does (``recops.cli.settings``)."""
    from recops.cli import prepare_env
    from recops.config import load_settings

    for name in [n for n in os.environ if n.startswith("RECOPS_")]:  # the previous run's exported settings
        del os.environ[name]
    settings = load_settings(home=home)
    settings.ensure_dirs()
    prepare_env(settings)
    return settings


def list_lengths(split: EvalSplit, settings) -> dict[int, list[str]]:
    """The test users by the ``--k`` that leaves them 10 items once their training items are dropped.

    Serving already leaves out the items of a user's ``exclude_event_types`` events; users with other
    training items (viewed, say) need 10 plus the most such items any of them has. Everyone else asks
    for 10: the list's top does not depend on ``k``, but a new user's demographic list must fill it.

    Returns:
        ``k`` -> the test users to ask with it (at most two groups; ``k`` capped at ``MAX_K``).
    """
    tr = split.train[split.train["user_id"].isin(set(split.test))]
    ruled_out = tr[tr["event_type"].isin(settings.exclude_event_types)][["user_id", "item_id"]].drop_duplicates()
    pairs = tr[["user_id", "item_id"]].drop_duplicates().merge(ruled_out, how="left", indicator=True)
    shown = pairs[pairs["_merge"] == "left_only"].groupby("user_id").size()
    groups = {K: [u for u in split.users if u not in shown.index]}
    if len(shown):
        groups[min(K + int(shown.max()), MAX_K)] = sorted(shown.index)
    return {k: users for k, users in groups.items() if users}


def run_recops(split: EvalSplit, ds: Dataset, side_data: bool, work: Path) -> tuple[dict, float, float, dict]:
    """`recops train --events` (with ``--items``/``--users`` when ``side_data``), then `recops recommend`
    for the test users, each through the functions those commands call, with default settings."""
    from recops import steps

    work.mkdir(parents=True)
    events, items, users = work / "events.parquet", work / "items.parquet", work / "users.parquet"
    split.train.to_parquet(events, index=False)
    side = {}
    if side_data and len(ds.items):
        ds.items.to_parquet(items, index=False)
        side["items_path"] = str(items)
    if side_data and len(ds.users):
        ds.users.to_parquet(users, index=False)
        side["users_path"] = str(users)
    settings = fresh_settings(work / "home")
    t = time.perf_counter()
    batch = steps.ingest(settings, source="file", path=str(events), **side)  # flows.pipeline.train_file_flow
    steps.validate(settings, batch["batch_id"])
    steps.build_features(settings)  # features_flow: the feature tables, then the user segments
    steps.segment_users(settings)
    trained = steps.train(settings)
    fit_s = time.perf_counter() - t
    groups = list_lengths(split, settings)
    recs, fallback = {}, 0
    t = time.perf_counter()
    for k, test_users in groups.items():  # `recops recommend --users FILE --out FILE --k K`, once per group
        users_file, out = work / f"test_users_k{k}.csv", work / f"recommendations_k{k}.csv"
        pd.DataFrame({"user_id": test_users}).to_csv(users_file, index=False)
        res = steps.recommend_users(settings, str(users_file), str(out), k=k, version=None, alias=None)
        fallback += res["fallback_users"]
        lists = pd.read_csv(out, dtype={"user_id": str, "item_id": str}).sort_values(["user_id", "rank"],
                                                                                     kind="stable")
        recs.update(lists.groupby("user_id", sort=False)["item_id"].agg(list).to_dict())
    info = {"version": res["version"], "k": {k: len(u) for k, u in groups.items()}, "fallback_users": fallback,
            "side_data": sorted(side), "holdout_cut": trained["split_cut"]}
    return recs, fit_s, time.perf_counter() - t, info


# -- the run --------------------------------------------------------------------------------------
def fmt_ci(ci) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--synthetic-events", type=int, default=200_000)
    ap.add_argument("--datasets", default="", help="comma-separated data set names (default: all)")
    ap.add_argument("--splits", default="per_user,global", help="comma-separated: per_user, global")
    ap.add_argument("--work", default="", help="keep recops' files and homes here (default: a temp dir, removed)")
    args = ap.parse_args()
    try:
        grids = peer_grid(args.quick)
    except ImportError:
        sys.exit("bench/quality.py needs the optional peers: `make bench-quality` (uv sync --extra bench)")
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="recops-quality-")
    work = Path(args.work or tmp.name)
    t_all = time.perf_counter()
    rows, summary, lines = [], [], []
    for ds_name, (ds, holdout_days) in datasets(args.synthetic_events).items():
        if args.datasets and ds_name not in args.datasets.split(","):
            continue
        for kind in (k for k in ("per_user", "global") if k in args.splits.split(",")):
            split = make_split(kind, ds.events, holdout_days)
            scored = {}  # method -> (metrics, per-user NDCG@10)
            peers = {"popularity": (Popularity(half_life_days=7.0), 0.0)}
            for grid in grids.values():
                t = time.perf_counter()
                chosen, make = tune(grid, split.train, kind, holdout_days, ds.items)
                peers[chosen] = (make(), time.perf_counter() - t)  # with the time its grid took
            for name, (model, tune_s) in peers.items():
                recs, fit_s, rec_s = run(model, split, ds.items, ds.users)
                recs = top_k(recs, split)
                m = evaluate(recs, split, ds.items, ks=(K,))
                scored[name] = (m, per_user_metrics(recs, split.test, K)["ndcg"])
                rows.append((ds_name, kind, name, m, tune_s, fit_s, rec_s, None))
            best_peer = max(scored, key=lambda n: scored[n][0][f"ndcg@{K}"])
            best, best_pu = scored[best_peer][0][f"ndcg@{K}"], scored[best_peer][1]
            variants = [("recops", True)] + ([("recops (events only)", False)] if (ds_name, kind) in EVENTS_ONLY
                                              else [])
            for name, side_data in variants:
                line = {"dataset": ds_name, "split": kind, "method": name, "side_data": side_data,
                        "best_peer": best_peer, "best_peer_ndcg@10": round(best, 5), "users": len(split.test)}
                try:
                    recs, fit_s, rec_s, info = run_recops(split, ds, side_data,
                                                          work / f"{ds_name}-{kind}-{'side' if side_data else 'ev'}")
                except Exception as exc:  # a failure is a result: report it and go on
                    log.exception("recops failed on %s, %s split", ds_name, kind)
                    err = f"{type(exc).__name__}: {exc}"
                    rows.append((ds_name, kind, name, None, None, None, None, err))
                    summary.append((ds_name, kind, name, None, None, best_peer, best, None, None, err))
                    lines.append({**line, "error": err})
                    continue
                recs = top_k(recs, split)
                m = evaluate(recs, split, ds.items, ks=(K,))
                pu = per_user_metrics(recs, split.test, K)["ndcg"]
                ratio = m[f"ndcg@{K}"] / best if best else None
                rci = ratio_ci(pu, best_pu) if best else None
                print(f"  {ds_name} {kind} {name}: {info}", file=sys.stderr)
                rows.append((ds_name, kind, name, m, None, fit_s, rec_s, None))
                summary.append((ds_name, kind, name, m[f"ndcg@{K}"], m[f"ndcg@{K}_ci"], best_peer, best,
                                ratio, rci, None))
                lines.append({**line, "recops_ndcg@10": round(m[f"ndcg@{K}"], 5),
                              "recops_ndcg@10_ci": [round(x, 5) for x in m[f"ndcg@{K}_ci"]],
                              "ratio": round(ratio, 3) if ratio is not None else None,
                              "ratio_ci": [round(x, 3) for x in rci] if rci else None,
                              "fit_s": round(fit_s, 1), "rec_s": round(rec_s, 1), "k_requested": info["k"],
                              "fallback_users": info["fallback_users"]})
    if tmp is not None:
        tmp.cleanup()
    print(f"\n{'dataset':<16}{'split':<10}{'method':<22}{'Recall@10':>10}{'NDCG@10':>9}  {'NDCG@10 95% CI':<18}"
          f"{'tune s':>8}{'fit s':>8}{'rec s':>8}")
    for ds_name, kind, name, m, tune_s, fit_s, rec_s, err in rows:
        if err:
            print(f"{ds_name:<16}{kind:<10}{name:<22}FAILED: {err}")
            continue
        tuned = f"{tune_s:8.1f}" if tune_s is not None else f"{'-':>8}"
        print(f"{ds_name:<16}{kind:<10}{name:<22}{m[f'recall@{K}']:10.4f}{m[f'ndcg@{K}']:9.4f}  "
              f"{fmt_ci(m[f'ndcg@{K}_ci']):<18}{tuned}{fit_s:8.1f}{rec_s:8.1f}")
    print(f"\n{'dataset':<16}{'split':<10}{'recops run':<22}{'NDCG@10':>9}  {'best peer':<20}{'NDCG@10':>9}"
          f"{'ratio':>8}  ratio 95% CI")
    for ds_name, kind, name, ndcg, ci, best_peer, best, ratio, rci, err in summary:
        if err:
            print(f"{ds_name:<16}{kind:<10}{name:<22}{'FAILED':>9}  {best_peer:<20}{best:9.4f}{'-':>8}  {err}")
            continue
        r = f"{ratio:8.3f}" if ratio is not None else f"{'-':>8}"
        print(f"{ds_name:<16}{kind:<10}{name:<22}{ndcg:9.4f}  {best_peer:<20}{best:9.4f}{r}  "
              + (f"[{rci[0]:.3f}, {rci[1]:.3f}]" if rci else "-"))
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
