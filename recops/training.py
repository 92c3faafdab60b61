"""Training and holdout evaluation of the recops model on a temporal split.

Time line (all cuts at midnight, so point-in-time feature lookups are exact):

    ... history ... | t1 .. ranker labels .. | cut .. evaluation holdout .. | end

1. generators fit on events < t1; the ranker learns which candidates users touched in [t1, cut),
   from features as of t1 (Feast point-in-time retrieval);
2. generators refit on events < cut; the model is scored on [cut, end] against popularity;
3. generators refit on every event; that model (same ranker) is the one packaged for serving.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recops.config import Settings
from recops.features import derive_user
from recops.models.covisit import CoVisitation
from recops.models.metrics import bootstrap_ci, per_user_metrics, summarize
from recops.models.popularity import Popularity
from recops.models.rules import BusinessRules
from recops.models.recommender import ItemTable, RecopsModel, feature_matrix, rank_order, train_ranker, user_vector
from recops.ratings import implicit_ratings

HISTORY_LEN = 20


@dataclass
class Split:
    t1: pd.Timestamp
    cut: pd.Timestamp
    end: pd.Timestamp


def make_split(events: pd.DataFrame, holdout_days: float) -> Split:
    end = events["timestamp"].max()
    cut = (end - pd.Timedelta(days=holdout_days)).floor("D")
    t1 = (cut - pd.Timedelta(days=holdout_days)).floor("D")
    if t1 <= events["timestamp"].min():
        raise ValueError(
            f"not enough history for a {holdout_days}-day holdout: events span "
            f"{events['timestamp'].min()} .. {end}; lower holdout_days"
        )
    return Split(t1=t1, cut=cut, end=end)


def user_states(events: pd.DataFrame, until: pd.Timestamp, n: int = HISTORY_LEN,
                exclude_types=BusinessRules.exclude_event_types) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """Per user before ``until``: recent distinct items (newest first) and items to exclude."""
    ev = events[(events["timestamp"] < until) & events["user_id"].notna()]
    last = ev.groupby(["user_id", "item_id"], sort=False)["timestamp"].max().reset_index()
    last = last.sort_values(["user_id", "timestamp", "item_id"], ascending=[True, False, True], kind="stable")
    hist = last.groupby("user_id", sort=False).head(n).groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
    ex = ev[ev["event_type"].isin(list(exclude_types))]
    excl = ex.groupby("user_id", sort=False)["item_id"].agg(set).to_dict()
    return hist, excl


def relevance_labels(events: pd.DataFrame, start, end, weights: dict[str, float]) -> dict[str, dict[str, int]]:
    """Graded relevance (1-5) of what each user touched in [start, end): the ceiling of the rating."""
    win = events[(events["timestamp"] >= start) & (events["timestamp"] < end) & events["user_id"].notna()]
    if win.empty:
        return {}
    r = implicit_ratings(win, weights, half_life_days=1e9, as_of=end)
    r = r[r["rating"] > 0]
    r["rel"] = np.ceil(r["rating"]).astype(int).clip(1, 5)
    out: dict[str, dict[str, int]] = {}
    for u, i, rel in zip(r["user_id"], r["item_id"], r["rel"]):
        out.setdefault(u, {})[i] = int(rel)
    return out


def fit_generators(events: pd.DataFrame, settings: Settings, template: dict | None = None) -> dict:
    """Fit the candidate generators (fresh copies of ``template``'s when given)."""
    gens = template or {
        "popularity": Popularity(half_life_days=7.0, weights=settings.event_types),
        "covisit": CoVisitation(weights=settings.event_types),
    }
    return {name: copy.deepcopy(g).fit(events) for name, g in gens.items()}


def item_table_at(fs, items: pd.DataFrame, events: pd.DataFrame, t: pd.Timestamp) -> ItemTable:
    ids = pd.unique(pd.concat([items["item_id"], events["item_id"]], ignore_index=True).astype(str))
    feats = fs.historical(pd.DataFrame({"item_id": ids, "event_timestamp": t}), "item")
    return ItemTable.build(feats, items)


def user_features_at(fs, user_ids: list[str], t: pd.Timestamp) -> dict[str, dict]:
    if not user_ids:
        return {}
    feats = fs.historical(pd.DataFrame({"user_id": user_ids, "event_timestamp": t}), "user")
    feats = derive_user(feats, t.timestamp())
    known = feats[feats["u_last_event_ts"].notna()]
    return {u: row for u, row in zip(known["user_id"], known.to_dict("records"))}


def _candidates(model: RecopsModel, users: list[str], hist: dict, excl: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's candidates (item indexes, generator features), their excluded items removed."""
    out = []
    for u in users:
        idx, gen, _ = model.candidates(hist.get(u, []), u)
        if excl.get(u) and len(idx):
            keep = ~np.isin(model.items.ids[idx], list(excl[u]))
            idx, gen = idx[keep], gen[keep]
        out.append((idx, gen))
    return out


def _assemble(model: RecopsModel, users: list[str], cand: list, hist: dict, ufeats: dict, nows: list[float],
              item_stored: np.ndarray | None = None):
    """Stack every user's feature block: (X, per-user row slices, item indexes)."""
    blocks, slices, idx_all, start = [], [], [], 0
    for u, now, (idx, gen) in zip(users, nows, cand):
        n = len(idx)
        uvec, aff, top = user_vector(ufeats.get(u))
        hs = set(hist.get(u, []))
        in_hist = np.fromiter((i in hs for i in model.items.ids[idx]), dtype=bool, count=n)
        stored = item_stored[start:start + n] if item_stored is not None else None
        blocks.append(feature_matrix(gen, idx, uvec, aff, top, in_hist, model.items, now, item_stored=stored))
        slices.append((start, start + n))
        idx_all.append(idx)
        start += n
    x = np.vstack(blocks) if blocks else np.zeros((0, len(model.feature_names)))
    return x, slices, idx_all


def _top_lists(model: RecopsModel, users: list[str], x: np.ndarray, slices, idx_all, k: int,
               rules: BusinessRules | None = None) -> dict[str, list[str]]:
    """Each user's top-``k`` item ids from their block of rows, under the business rules."""
    scores = model.score_matrix(x) if len(x) else np.zeros(0)
    return {u: [str(model.items.ids[idx[o]]) for o in rank_order(model, x[a:b], scores[a:b], idx, k, rules)]
            for u, (a, b), idx in zip(users, slices, idx_all)}


def rank_rows(model: RecopsModel, users: list[str], hist: dict, excl: dict, ufeats: dict, now: float):
    """Candidate rows for many users at one time ``now``: (X, per-user slices, item indexes)."""
    return _assemble(model, users, _candidates(model, users, hist, excl), hist, ufeats, [now] * len(users))


def recommend_batch(model: RecopsModel, users: list[str], hist: dict, excl: dict, ufeats: dict, now: float, k: int,
                    rules: BusinessRules | None = None) -> dict[str, list[str]]:
    x, slices, idx_all = rank_rows(model, users, hist, excl, ufeats, now)
    return _top_lists(model, users, x, slices, idx_all, k, rules)


def _hash_frac(u: str) -> float:
    return zlib.crc32(u.encode()) / 2**32


def fit_ranker(model: RecopsModel, events: pd.DataFrame, split: Split, fs, settings: Settings, neg_per_user: int = 50):
    labels = relevance_labels(events, split.t1, split.cut, settings.event_types)
    hist, excl = user_states(events, split.t1, exclude_types=tuple(settings.exclude_event_types))
    users = sorted(u for u in labels if u in hist)
    if not users:
        raise ValueError("no user has both history before and activity in the ranker's label window")
    ufeats = user_features_at(fs, users, split.t1)
    rows = rank_rows(model, users, hist, excl, ufeats, split.t1.timestamp())
    return _fit_on_rows(model, users, rows, lambda u, ids: [labels[u].get(i, 0) for i in ids],
                        lambda u: _hash_frac(u) < 0.2, settings, neg_per_user)


def _fit_on_rows(model: RecopsModel, users: list[str], rows, label, is_valid, settings: Settings, neg_per_user: int):
    """LambdaRank on users' candidate rows: ``label(user, item_ids)`` grades them, ``is_valid(user)``
    puts a user's group in the early-stopping slice. Users whose candidates hold no positive are
    skipped (no ranking signal); negatives are sampled from the candidates."""
    x, slices, idx_all = rows
    rng = np.random.default_rng(settings.random_state)
    parts = {"train": ([], [], []), "valid": ([], [], [])}
    for u, (a, b), idx in zip(users, slices, idx_all):
        y = np.asarray(label(u, model.items.ids[idx]), dtype=float)
        if y.max(initial=0) <= 0:
            continue
        sel = np.arange(a, b)
        neg = np.flatnonzero(y == 0)
        if len(neg) > neg_per_user:
            keep = np.sort(np.concatenate([np.flatnonzero(y > 0), rng.choice(neg, neg_per_user, replace=False)]))
            sel, y = sel[keep], y[keep]
        xs, ys, gs = parts["valid" if is_valid(u) else "train"]
        xs.append(x[sel]); ys.append(y); gs.append(len(sel))
    if not parts["train"][0]:
        raise ValueError("the candidates never contain a labelled item: nothing to learn a ranking from")
    stack = lambda p: (np.vstack(p[0]), np.concatenate(p[1]), np.array(p[2])) if p[0] else (None, None, np.array([]))  # noqa: E731
    (xt, yt, gt), (xv, yv, gv) = stack(parts["train"]), stack(parts["valid"])
    booster = train_ranker(xt, yt, gt, model.feature_names, xv, yv, gv, num_threads=settings.num_threads, seed=settings.random_state)
    stats = {"ranker_train_groups": int(len(gt)), "ranker_valid_groups": int(len(gv)), "ranker_train_rows": int(len(yt)),
             "ranker_best_iteration": int(booster.best_iteration or booster.current_iteration())}
    return booster, stats


def evaluate_on_holdout(model: RecopsModel, events: pd.DataFrame, split: Split, fs, items: pd.DataFrame,
                        settings: Settings, k: int | None = None, with_baseline: bool = True) -> dict:
    """Refit ``model``'s generators on events < cut, rank for users active in [cut, end], score.

    Returns summary metrics for the model (and the popularity baseline on the same users), plus
    per-user NDCG arrays for paired comparisons.
    """
    k = k or settings.k
    before = events[events["timestamp"] < split.cut]
    gens = fit_generators(before, settings, template=model.generators)
    table = item_table_at(fs, items, events, split.cut)
    m = RecopsModel(gens, model.ranker, table, model.candidates_per_source)
    truth_grades = relevance_labels(events, split.cut, split.end + pd.Timedelta(seconds=1), settings.event_types)
    rules = BusinessRules.from_settings(settings)
    hist, excl = user_states(events, split.cut, exclude_types=rules.exclude_event_types)
    truth = {u: set(items_) - excl.get(u, set()) for u, items_ in truth_grades.items()}
    users = sorted(u for u, t in truth.items() if t)
    truth = {u: truth[u] for u in users}  # per-user arrays below follow this order
    ufeats = user_features_at(fs, users, split.cut)
    if rules.in_stock_only:  # what serving would not show
        gone = set(table.ids[~table.in_stock])
        excl = {u: excl.get(u, set()) | gone for u in users} if gone else excl
    ks = sorted({1, 5, k, 20})
    recs = recommend_batch(m, users, hist, excl, ufeats, split.cut.timestamp(), max(ks), rules)
    n_items = before[before["user_id"].isin(set(users))].groupby("user_id")["item_id"].nunique()
    sizes = n_items.reindex(users).fillna(0).to_numpy()
    pu = per_user_metrics(recs, truth, k)
    out = {"model": summarize(pu, recs, len(table.ids), k), "per_user_ndcg": pu["ndcg"], "users": users,
           "curve": _curve(recs, truth, ks, len(table.ids)), "segments": _segments(pu["ndcg"], sizes, k)}
    out["model"]["ndcg_ci_low"], out["model"]["ndcg_ci_high"] = bootstrap_ci(pu["ndcg"])
    if with_baseline:
        pop = gens["popularity"] if "popularity" in gens else Popularity(weights=settings.event_types).fit(before)
        base_recs = {u: [i for i, _ in pop.recommend(u, max(ks), exclude=excl.get(u))] for u in users}
        bpu = per_user_metrics(base_recs, truth, k)
        out["baseline"] = summarize(bpu, base_recs, len(table.ids), k)
        out["baseline_curve"] = _curve(base_recs, truth, ks, len(table.ids))
        out["baseline_segments"] = _segments(bpu["ndcg"], sizes, k)
    return out


def _curve(recs: dict, truth: dict, ks: list[int], n_items: int) -> dict[int, dict[str, float]]:
    """Metrics at each K (lists are prefix-consistent, so one top-max(K) list serves every K)."""
    return {kk: summarize(per_user_metrics(recs, truth, kk), recs, n_items, kk) for kk in ks}


def _segments(ndcg: np.ndarray, sizes: np.ndarray, k: int) -> dict[str, float]:
    """NDCG@k and user counts per segment (new, light, heavy: distinct items before the cut)."""
    from recops.evaluation import SEGMENTS

    out = {}
    for seg, lo, hi in SEGMENTS:
        mask = (sizes >= lo) & (sizes <= hi)
        out[f"ndcg_at_{k}_{seg}"] = float(ndcg[mask].mean()) if mask.any() else 0.0
        out[f"users_{seg}"] = float(mask.sum())
    return out


def train_model(events: pd.DataFrame, items: pd.DataFrame, fs, settings: Settings) -> tuple[RecopsModel, dict]:
    """The whole training procedure; returns the model to serve and a report of params and metrics."""
    events = events[events["user_id"].notna()] if events["user_id"].notna().any() else events
    split = make_split(events, settings.holdout_days)
    gens1 = fit_generators(events[events["timestamp"] < split.t1], settings)
    m1 = RecopsModel(gens1, None, item_table_at(fs, items, events, split.t1), settings.candidates_per_source)
    ranker, stats = fit_ranker(m1, events, split, fs, settings)
    trained = RecopsModel(gens1, ranker, m1.items, settings.candidates_per_source)
    ev = evaluate_on_holdout(trained, events, split, fs, items, settings)
    final = RecopsModel(fit_generators(events, settings, template=gens1), ranker,
                        item_table_at(fs, items, events, split.end), settings.candidates_per_source,
                        meta={"split": {k: str(v) for k, v in vars(split).items()}, "trained_on_events": int(len(events))})
    report = {"split": split, "ranker": stats, "eval": ev}
    return final, report


# -- training and scoring on any split (per-user cut times) -------------------------------------
def rows_at_cuts(model: RecopsModel, users: list[str], cuts: dict, hist: dict, excl: dict,
                 events: pd.DataFrame, items: pd.DataFrame):
    """Candidate rows for ``users`` with user and item features as of each user's own cut.

    Features come from ``recops.features`` (the function whose snapshots Feast stores), evaluated
    directly at each cut: no lookup can see an event after the user's cut.
    """
    from recops.features import item_features, user_features
    from recops.models.recommender import stored_item_matrix

    cand = _candidates(model, users, hist, excl)
    cut_of = [pd.Timestamp(cuts[u]) for u in users]
    lens = [len(c[0]) for c in cand]
    pts = pd.DataFrame({"item_id": model.items.ids[np.concatenate([c[0] for c in cand])] if cand else [],
                        "as_of": pd.DatetimeIndex(cut_of).repeat(lens) if cand else pd.DatetimeIndex([], tz="UTC")})
    stored = stored_item_matrix(item_features(events, pts)) if len(pts) else np.zeros((0, 1))
    uev = events[events["user_id"].notna()]
    uf = user_features(uev, pd.DataFrame({"user_id": users, "as_of": cut_of}), items)
    uf = derive_user(uf, np.array([c.timestamp() for c in cut_of]))
    return _assemble(model, users, cand, hist, dict(zip(users, uf.to_dict("records"))),
                     [c.timestamp() for c in cut_of], item_stored=stored)


def fit_ranker_on_split(model: RecopsModel, split, items: pd.DataFrame, settings: Settings, neg_per_user: int = 50):
    """LambdaRank on the candidates of ``split``'s users, labelled by their held-out items.

    Early stopping uses a temporal validation slice: the users whose cut is latest.
    """
    users = split.users
    rows = rows_at_cuts(model, users, split.cut, split.histories(), split.seen(), split.train, items)
    latest = pd.Series({u: pd.Timestamp(split.cut[u]) for u in users}).rank(method="first", pct=True)
    booster, _ = _fit_on_rows(model, users, rows, lambda u, ids: [i in split.test[u] for i in ids],
                              lambda u: latest[u] > 0.8, settings, neg_per_user)
    return booster


def recommend_at_cuts(model: RecopsModel, split, items: pd.DataFrame, k: int,
                      rules: BusinessRules | None = None) -> dict[str, list[str]]:
    users = split.users
    x, slices, idx_all = rows_at_cuts(model, users, split.cut, split.histories(), split.seen(), split.train, items)
    return _top_lists(model, users, x, slices, idx_all, k, rules)


def train_on_split(train: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None, settings: Settings,
                   inner_split, generators: dict) -> RecopsModel:
    """Fit generators on ``inner_split.train``, the ranker on its held-out items, then refit the
    generators on all of ``train``: the model to score the outer split with."""
    table = ItemTable.build(pd.DataFrame({"item_id": pd.unique(train["item_id"])}), items)
    inner_gens = {n: copy.deepcopy(g).fit(inner_split.train, items, users) for n, g in generators.items()}
    inner = RecopsModel(inner_gens, None, table, settings.candidates_per_source)
    ranker = fit_ranker_on_split(inner, inner_split, items, settings)
    gens = {n: copy.deepcopy(g).fit(train, items, users) for n, g in generators.items()}
    return RecopsModel(gens, ranker, table, settings.candidates_per_source)
