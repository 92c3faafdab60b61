"""Training and evaluation of the recops model on temporal splits: one procedure for every caller
(the pipeline's train and evaluate steps, ``recops train --events``, ``bench/quality.py``).

    outer split:   train ............................. | test   (evaluation)
    inner split:   inner train ........ | inner test |          (carved out of the outer train alike)

1. the generators fit on the inner train (EASE's regularisation is tuned there); the ranker learns
   which of their candidates each user touched in the inner test, from features as of the user's
   cut; negatives are sampled from the candidates; early stopping uses the users whose cut is latest;
2. the generators refit on the outer train and the model is scored on the outer test;
3. the generators refit on every event: the model packaged for serving (same ranker).

Features come from a provider: ``FeastFeatures`` (point-in-time retrieval from the Feast offline
store, used by the pipeline, whose cuts fall on snapshot midnights) or ``DirectFeatures`` (the same
``recops.features`` functions evaluated at each cut: exact at any time, for per-user cuts).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from recops.config import Settings
from recops.evaluation import SEGMENTS, EvalSplit, generator_recommender, global_split, recommend_all
from recops.features import derive_user, item_features, user_features
from recops.models.base import Recommender
from recops.models.metrics import bootstrap_ci, per_user_metrics, summarize
from recops.models.popularity import Popularity
from recops.models.recommender import (ItemTable, RecopsModel, feature_matrix, rank_order, stored_item_matrix,
                                       train_ranker, user_vector)
from recops.models.rules import BusinessRules

HISTORY_LEN = 20


# -- generators -----------------------------------------------------------------------------------
def make_generator(name: str, settings: Settings, **overrides) -> Recommender:
    from recops.models.content import ContentSimilarity
    from recops.models.covisit import CoVisitation
    from recops.models.demographic import DemographicPopularity
    from recops.models.ease import EASE
    from recops.models.itemknn import ItemKNN
    from recops.models.session import SessionKNN

    w = settings.event_types
    makers = {
        "popularity": lambda: Popularity(half_life_days=7.0, weights=w),
        "covisit": lambda: CoVisitation(weights=w),
        "itemknn": lambda: ItemKNN(half_life_days=1e9, weights=w),
        "ease": lambda: EASE(l2=settings.ease_l2[len(settings.ease_l2) // 2], weights=w),
        "session": lambda: SessionKNN(),
        "content": lambda: ContentSimilarity(),
        "demographic": lambda: DemographicPopularity(weights=w),
    }
    if name not in makers:
        raise ValueError(f"unknown generator {name!r}; choose from {sorted(makers)}")
    gen = makers[name]()
    for k, v in overrides.items():
        setattr(gen, k, v)
    return gen


def default_generators(settings: Settings) -> dict[str, Recommender]:
    """The candidate generators the settings name (unfitted)."""
    return {name: make_generator(name, settings) for name in settings.generators}


def tune_generators(generators: dict, split: EvalSplit, items: pd.DataFrame, users: pd.DataFrame | None,
                    settings: Settings) -> tuple[dict, dict]:
    """Pick EASE's regularisation by its own NDCG on ``split`` (a slice carved out of train)."""
    from recops.evaluation import evaluate

    chosen = {}
    if "ease" in generators and len(settings.ease_l2) > 1:
        best, best_score = None, -1.0
        for l2 in settings.ease_l2:
            g = copy.deepcopy(generators["ease"])
            g.l2 = float(l2)
            recs = recommend_all(generator_recommender(g.fit(split.train, items, users)), split, settings.k)
            score = evaluate(recs, split, items, ks=(settings.k,))[f"ndcg@{settings.k}"]
            if score > best_score:
                best, best_score = float(l2), score
        generators = {**generators, "ease": copy.deepcopy(generators["ease"])}
        generators["ease"].l2 = best
        chosen["ease_l2"] = best
    return generators, chosen


def fit_generators(generators: dict, events: pd.DataFrame, items: pd.DataFrame | None,
                   users: pd.DataFrame | None) -> dict:
    """Fresh fitted copies of ``generators``."""
    return {n: copy.deepcopy(g).fit(events, items, users) for n, g in generators.items()}


# -- feature providers ---------------------------------------------------------------------------
class DirectFeatures:
    """User and item features as of any time, from the events, by the functions Feast's tables are
    built with (``recops.features``): exact at every cut."""

    def __init__(self, events: pd.DataFrame, items: pd.DataFrame):
        self.events, self.items = events, items

    def user_rows(self, users: list[str], cuts: list[pd.Timestamp]) -> list[dict | None]:
        uev = self.events[self.events["user_id"].notna()]
        uf = user_features(uev, pd.DataFrame({"user_id": users, "as_of": cuts}), self.items)
        return _user_records(uf, cuts)

    def item_rows(self, item_ids: np.ndarray, cuts: pd.DatetimeIndex) -> np.ndarray:
        pts = pd.DataFrame({"item_id": item_ids, "as_of": cuts})
        return stored_item_matrix(item_features(self.events, pts)) if len(pts) else np.zeros((0, 1))


class FeastFeatures:
    """Point-in-time retrieval from the Feast offline store (the pipeline's source of training data)."""

    def __init__(self, fs):
        self.fs = fs

    def user_rows(self, users: list[str], cuts: list[pd.Timestamp]) -> list[dict | None]:
        if not users:
            return []
        feats = self.fs.historical(pd.DataFrame({"user_id": users, "event_timestamp": cuts}), "user")
        return _user_records(feats, cuts)

    def item_rows(self, item_ids: np.ndarray, cuts: pd.DatetimeIndex) -> np.ndarray:
        if not len(item_ids):
            return np.zeros((0, 1))
        ents = pd.DataFrame({"item_id": item_ids, "event_timestamp": cuts})
        uniq = ents.drop_duplicates(ignore_index=True)  # one lookup per (item, cut), mapped back per row
        got = self.fs.historical(uniq, "item")
        got["event_timestamp"] = uniq["event_timestamp"].to_numpy()
        return stored_item_matrix(ents.merge(got, on=["item_id", "event_timestamp"], how="left"))


def _user_records(feats: pd.DataFrame, cuts: list[pd.Timestamp]) -> list[dict | None]:
    """Derived per-user records in input order; None for users with no event before their cut."""
    feats = derive_user(feats.reset_index(drop=True), np.array([pd.Timestamp(c).timestamp() for c in cuts]))
    return [None if pd.isna(r["u_last_event_ts"]) else r for r in feats.to_dict("records")]


def item_table_at(fs, items: pd.DataFrame, events: pd.DataFrame, t: pd.Timestamp) -> ItemTable:
    """The serving item table: every known item with its stored features as of ``t`` (from Feast)."""
    ids = pd.unique(pd.concat([items["item_id"], events["item_id"]], ignore_index=True).astype(str))
    feats = fs.historical(pd.DataFrame({"item_id": ids, "event_timestamp": t}), "item")
    return ItemTable.build(feats, items)


# -- candidate rows --------------------------------------------------------------------------------
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


def rows_at_cuts(model: RecopsModel, users: list[str], cuts: dict, hist: dict, excl: dict, provider):
    """Every user's candidate rows with user and item features as of the user's own cut:
    (X, per-user row slices, item indexes). No lookup sees an event after the user's cut."""
    cand = _candidates(model, users, hist, excl)
    cut_of = [pd.Timestamp(cuts[u]) for u in users]
    lens = [len(c[0]) for c in cand]
    ids = model.items.ids[np.concatenate([c[0] for c in cand])] if cand else np.array([], dtype=object)
    stored = provider.item_rows(ids, pd.DatetimeIndex(cut_of).repeat(lens) if cand else pd.DatetimeIndex([], tz="UTC"))
    ufeats = dict(zip(users, provider.user_rows(users, cut_of)))
    blocks, slices, start = [], [], 0
    for u, cut, (idx, gen) in zip(users, cut_of, cand):
        n = len(idx)
        uvec, aff, top = user_vector(ufeats.get(u))
        hs = set(hist.get(u, []))
        in_hist = np.fromiter((i in hs for i in model.items.ids[idx]), dtype=bool, count=n)
        blocks.append(feature_matrix(gen, idx, uvec, aff, top, in_hist, model.items, cut.timestamp(),
                                     item_stored=stored[start:start + n]))
        slices.append((start, start + n))
        start += n
    x = np.vstack(blocks) if blocks else np.zeros((0, len(model.feature_names)))
    return x, slices, [c[0] for c in cand]


def recommend_at_cuts(model: RecopsModel, split: EvalSplit, items: pd.DataFrame, k: int,
                      rules: BusinessRules | None = None, provider=None) -> dict[str, list[str]]:
    """Top-``k`` for every test user of ``split`` as of their cut, under the business rules
    (None: none, the research protocol that peers are measured under too)."""
    rules = rules or BusinessRules(in_stock_only=False)
    provider = provider or DirectFeatures(split.train, items)
    users = split.users
    excl = split.excluded()
    if rules.in_stock_only and not model.items.in_stock.all():  # what serving would not show
        gone = set(model.items.ids[~model.items.in_stock])
        excl = {u: excl.get(u, set()) | gone for u in users}
    x, slices, idx_all = rows_at_cuts(model, users, split.cut, split.histories(HISTORY_LEN), excl, provider)
    scores = model.score_matrix(x) if len(x) else np.zeros(0)
    return {u: [str(model.items.ids[idx[o]]) for o in rank_order(model, x[a:b], scores[a:b], idx, k, rules)]
            for u, (a, b), idx in zip(users, slices, idx_all)}


# -- the ranker ------------------------------------------------------------------------------------
def fit_ranker_on_split(model: RecopsModel, split: EvalSplit, provider, settings: Settings, neg_per_user: int = 50):
    """LambdaRank on the candidates of ``split``'s users, labelled by their test items (graded when
    the split has grades). Users whose candidates hold no positive are skipped (no ranking signal);
    negatives are sampled from the candidates; early stopping uses the users whose cut is latest."""
    users = split.users
    x, slices, idx_all = rows_at_cuts(model, users, split.cut, split.histories(HISTORY_LEN), split.excluded(), provider)
    latest = pd.Series({u: pd.Timestamp(split.cut[u]) for u in users}).rank(method="first", pct=True)
    grades = split.grades
    rng = np.random.default_rng(settings.random_state)
    parts = {"train": ([], [], []), "valid": ([], [], [])}
    for u, (a, b), idx in zip(users, slices, idx_all):
        ids = model.items.ids[idx]
        if grades is not None:
            g = grades.get(u, {})
            y = np.array([g.get(i, 0) for i in ids], dtype=float)
        else:
            y = np.isin(ids, list(split.test[u])).astype(float)
        if y.max(initial=0) <= 0:
            continue
        sel = np.arange(a, b)
        neg = np.flatnonzero(y == 0)
        if len(neg) > neg_per_user:
            keep = np.sort(np.concatenate([np.flatnonzero(y > 0), rng.choice(neg, neg_per_user, replace=False)]))
            sel, y = sel[keep], y[keep]
        xs, ys, gs = parts["valid" if latest[u] > 0.8 else "train"]
        xs.append(x[sel]); ys.append(y); gs.append(len(sel))
    if not parts["train"][0]:
        raise ValueError("the candidates never contain a labelled item: nothing to learn a ranking from")
    stack = lambda p: (np.vstack(p[0]), np.concatenate(p[1]), np.array(p[2])) if p[0] else (None, None, np.array([]))  # noqa: E731
    (xt, yt, gt), (xv, yv, gv) = stack(parts["train"]), stack(parts["valid"])
    booster = train_ranker(xt, yt, gt, model.feature_names, xv, yv, gv, num_threads=settings.num_threads, seed=settings.random_state)
    stats = {"ranker_train_groups": int(len(gt)), "ranker_valid_groups": int(len(gv)), "ranker_train_rows": int(len(yt)),
             "ranker_best_iteration": int(booster.best_iteration or booster.current_iteration())}
    return booster, stats


def train_on_split(train: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None, settings: Settings,
                   inner: EvalSplit, generators: dict | None = None, provider=None) -> RecopsModel:
    """Tune and fit the generators on ``inner.train``, the ranker on ``inner``'s test items, then
    refit the generators on all of ``train``: the model to score the outer split with.

    ``provider`` (default: ``DirectFeatures`` on ``inner.train``) gives features as of the inner cuts;
    it must not see events the split holds out (a per-user split holds out other users' later
    items too), or training features would differ from the ones the model is evaluated with."""
    generators = generators if generators is not None else default_generators(settings)
    provider = provider or DirectFeatures(inner.train, items)  # features from the events the split keeps
    generators, tuned = tune_generators(generators, inner, items, users, settings)
    table = ItemTable.build(pd.DataFrame({"item_id": pd.unique(train["item_id"])}), items)
    inner_model = RecopsModel(fit_generators(generators, inner.train, items, users), None, table, settings.candidates_per_source)
    ranker, stats = fit_ranker_on_split(inner_model, inner, provider, settings)
    return RecopsModel(fit_generators(generators, train, items, users), ranker, table, settings.candidates_per_source,
                       meta={"ranker": stats, "tuned": tuned})


# -- evaluation ------------------------------------------------------------------------------------
def evaluate_model(model: RecopsModel, split: EvalSplit, items: pd.DataFrame, users: pd.DataFrame | None,
                   settings: Settings, provider=None, with_baseline: bool = True) -> dict:
    """Refit ``model``'s generators on ``split.train``, rank for the test users as of their cuts
    under the business rules, and score: metrics at K (1, 5, k, 20), per segment, bootstrap CI, and
    the popularity baseline on the same users. Per-user NDCG (in ``users`` order) for paired tests."""
    k = settings.k
    rules = BusinessRules.from_settings(settings)
    provider = provider or DirectFeatures(split.train, items)
    table = ItemTable.build(pd.DataFrame({"item_id": pd.unique(split.train["item_id"])}), items)
    m = RecopsModel(fit_generators(model.generators, split.train, items, users), model.ranker, table,
                    model.candidates_per_source)
    ks = sorted({1, 5, k, 20})
    recs = recommend_at_cuts(m, split, items, max(ks), rules, provider)
    test_users = split.users
    truth = {u: split.test[u] for u in test_users}  # per-user arrays follow this order
    n_items = split.train[split.train["user_id"].isin(set(test_users))].groupby("user_id")["item_id"].nunique()
    sizes = n_items.reindex(test_users).fillna(0).to_numpy()
    pu = per_user_metrics(recs, truth, k)
    out = {"model": summarize(pu, recs, len(table.ids), k), "per_user_ndcg": pu["ndcg"], "users": test_users,
           "curve": _curve(recs, truth, ks, len(table.ids)), "segments": _segments(pu["ndcg"], sizes, k)}
    out["model"]["ndcg_ci_low"], out["model"]["ndcg_ci_high"] = bootstrap_ci(pu["ndcg"])
    if with_baseline:
        pop = Popularity(half_life_days=7.0, weights=settings.event_types).fit(split.train)
        excl = split.excluded()
        gone = set(table.ids[~table.in_stock]) if rules.in_stock_only else set()
        base = {u: [i for i, _ in pop.recommend(u, max(ks), exclude=excl.get(u, set()) | gone)] for u in test_users}
        bpu = per_user_metrics(base, truth, k)
        out["baseline"] = summarize(bpu, base, len(table.ids), k)
        out["baseline_curve"] = _curve(base, truth, ks, len(table.ids))
        out["baseline_segments"] = _segments(bpu["ndcg"], sizes, k)
    return out


def _curve(recs: dict, truth: dict, ks: list[int], n_items: int) -> dict[int, dict[str, float]]:
    """Metrics at each K (lists are prefix-consistent, so one top-max(K) list serves every K)."""
    return {kk: summarize(per_user_metrics(recs, truth, kk), recs, n_items, kk) for kk in ks}


def _segments(ndcg: np.ndarray, sizes: np.ndarray, k: int) -> dict[str, float]:
    """NDCG@k and user counts per segment (new, light, heavy: distinct items before the cut)."""
    out = {}
    for seg, lo, hi in SEGMENTS:
        mask = (sizes >= lo) & (sizes <= hi)
        out[f"ndcg_at_{k}_{seg}"] = float(ndcg[mask].mean()) if mask.any() else 0.0
        out[f"users_{seg}"] = float(mask.sum())
    return out


# -- the pipeline's procedure ----------------------------------------------------------------------
def pipeline_split(events: pd.DataFrame, settings: Settings) -> EvalSplit:
    """The pipeline's evaluation split: a global cut ``holdout_days`` before the newest event, under
    the serving protocol (business-rule exclusions, graded relevance)."""
    return global_split(events, settings.holdout_days, exclude_types=tuple(settings.exclude_event_types),
                        weights=settings.event_types)


def train_model(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None, fs,
                settings: Settings) -> tuple[RecopsModel, dict]:
    """The whole training procedure on point-in-time features from Feast; returns the model to
    serve (generators refit on every event) and a report of the split, ranker and evaluation."""
    outer = pipeline_split(events, settings)
    inner = pipeline_split(outer.train, settings)
    provider = FeastFeatures(fs)
    model = train_on_split(outer.train, items, users, settings, inner, default_generators(settings), provider)
    ev = evaluate_model(model, outer, items, users, settings, provider)
    end = events["timestamp"].max()
    cut = next(iter(outer.cut.values()))
    split = {"inner_cut": str(next(iter(inner.cut.values()))), "cut": str(cut), "end": str(end)}
    final = RecopsModel(fit_generators(model.generators, events, items, users), model.ranker,
                        item_table_at(fs, items, events, end), settings.candidates_per_source,
                        meta={"split": split, "trained_on_events": int(len(events)), **model.meta})
    return final, {"split": split, "ranker": model.meta["ranker"], "tuned": model.meta["tuned"], "eval": ev}
