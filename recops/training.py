"""Training and evaluation of the recops model on temporal splits: one procedure for every caller
(the pipeline's train and evaluate steps, ``recops train --events``, ``bench/quality.py``).

    outer split:   train ............................. | test   (evaluation)
    inner split:   inner train ........ | inner test |          (carved out of the outer train alike)

1. the inner windows: two halves of the returning users (each user with 5+ items has their last
   fifth held out at their own cut) and up to ``ranker_windows`` global cuts; the generators fit on
   each window's train (their hyper-parameters are tuned on the first one); the ranker learns which
   of their candidates each user touched in the windows' tests, from features as of the user's cut;
   negatives are sampled from the candidates; validation rotates over the windows (each held out
   once, the fit on the others stopping early on it) and the final fit on every window runs the
   folds' mean number of rounds, weighed by their users; new users with demographics get the
   demographic model only if it beats trending on the global windows' new users;
2. the generators refit on the outer train and the model is scored on the outer test;
3. the generators refit on every event: the model packaged for serving (same ranker).

Features come from a provider: ``FeastFeatures`` (point-in-time retrieval from the Feast offline
store, used by the pipeline, whose cuts fall on snapshot midnights) or ``DirectFeatures`` (the same
``recops.features`` functions evaluated at each cut: exact at any time, for per-user cuts).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from recops.config import Settings
from recops.evaluation import (
    SEGMENTS,
    EvalSplit,
    generator_recommender,
    global_split,
    per_user_split,
    recommend_all,
)
from recops.features import derive_user, item_features, user_features
from recops.models.base import Recommender
from recops.models.metrics import bootstrap_ci, per_user_metrics, summarize
from recops.models.popularity import Popularity
from recops.models.recommender import (
    ItemTable,
    RecopsModel,
    feature_matrix,
    rank_order,
    segment_of,
    stored_item_matrix,
    train_ranker,
    user_vector,
)
from recops.models.rules import BusinessRules
from recops.nextitem import choose_next_item
from recops.vocabulary import GENERATORS, HISTORY_LEN


# -- generators -----------------------------------------------------------------------------------
def grid_default(grid: list):
    """A tuning grid's untuned value: its middle one (the later of the two middle ones for an even count).

    Args:
        grid: the candidate values, in the settings' order (at least one).

    Returns:
        The value a generator gets before tuning, and keeps where no other value wins clearly.
    """
    return grid[len(grid) // 2]


def make_generator(name: str, settings: Settings, **overrides) -> Recommender:
    """A fresh, unfitted candidate generator by name.

    Args:
        name: one of popularity, covisit, itemknn, ease, svd, session, content, demographic.
        settings: the event-type weights, and the middle value of each tuning grid (``ease_l2``,
            ``svd_factors``, ``itemknn_neighbors``, ``covisit_half_life_days``) as the untuned default.
        **overrides: attributes set on the generator after construction.

    Returns:
        The generator.

    Raises:
        ValueError: unknown ``name``.
    """
    from recops.models.content import ContentSimilarity
    from recops.models.covisit import CoVisitation
    from recops.models.demographic import DemographicPopularity
    from recops.models.ease import EASE
    from recops.models.itemknn import ItemKNN
    from recops.models.session import SessionKNN
    from recops.models.svd import PureSVD
    w = settings.event_types
    makers = {
        "popularity": lambda: Popularity(weights=w),
        "covisit": lambda: CoVisitation(
            half_life_days=grid_default(settings.covisit_half_life_days), weights=w),
        "itemknn": lambda: ItemKNN(neighbors=int(grid_default(settings.itemknn_neighbors)),
                                   half_life_days=1e9, weights=w),
        "ease": lambda: EASE(l2=grid_default(settings.ease_l2), weights=w),
        "session": lambda: SessionKNN(),
        "svd": lambda: PureSVD(factors=int(grid_default(settings.svd_factors)), weights=w),
        "content": lambda: ContentSimilarity(),
        "demographic": lambda: DemographicPopularity(weights=w),
    }
    assert set(makers) == set(GENERATORS), "recops.vocabulary.GENERATORS names every generator"
    if name not in makers:
        raise ValueError(f"unknown generator {name!r}; choose from {sorted(makers)}")
    gen = makers[name]()
    for k, v in overrides.items():
        setattr(gen, k, v)
    return gen


def default_generators(settings: Settings) -> dict[str, Recommender]:
    """The candidate generators the settings name (unfitted).

    Args:
        settings: ``generators`` names them; see ``make_generator``.

    Returns:
        Name -> unfitted generator, in the order of ``settings.generators``.
    """
    return {name: make_generator(name, settings) for name in settings.generators}


def tunable(settings: Settings) -> dict[str, tuple[str, list]]:
    """Generator hyper-parameters recops tunes itself: generator -> (parameter, settings' grid).

    Args:
        settings: the grids ``ease_l2``, ``svd_factors``, ``itemknn_neighbors`` and ``covisit_half_life_days``.

    Returns:
        Generator name -> (attribute name, candidate values; ints for factors and neighbors).
    """
    return {"ease": ("l2", list(settings.ease_l2)), "svd": ("factors", [int(f) for f in settings.svd_factors]),
            "itemknn": ("neighbors", [int(f) for f in settings.itemknn_neighbors]),
            "covisit": ("half_life_days", list(settings.covisit_half_life_days))}


def tune_generators(generators: dict, split: EvalSplit, items: pd.DataFrame, users: pd.DataFrame | None,
                    settings: Settings) -> tuple[dict, dict, dict]:
    """Pick each tunable generator's parameter by the generator's own NDCG on ``split`` (a slice
    carved out of train); returns the generators with their choices and the choices. A value other
    than the generator's own (the grid's middle one if its own is not in the grid) is taken only when
    it beats that one by more than one standard error of the paired per-user difference, as the
    scorers are chosen: on a slice where the values tie, the choice would be noise.

    Args:
        generators: name -> unfitted generator (not modified); generators absent from ``tunable`` or
            with a grid of fewer than two values keep their parameter.
        split: the tuning split: fitted on its train, scored on its test users.
        items: the catalog.
        users: user attributes, or None.
        settings: ``k`` (NDCG@k) and the grids.

    Returns:
        ``(generators, chosen, fitted)``: the generators with the chosen values set (tuned ones are
        copies), ``"<generator>_<parameter>"`` -> chosen value, and the tuned generators as fitted on
        ``split.train`` with their chosen values (``fit_generators`` reuses them for that train).
    """
    generators, chosen, fitted = dict(generators), {}, {}
    truth = {u: split.test[u] for u in split.users}  # per-user arrays follow this order
    for name, (param, grid) in tunable(settings).items():
        if name not in generators or len(grid) < 2:
            continue
        ndcg, fits = {}, {}
        for value in grid:
            g = copy.deepcopy(generators[name])
            setattr(g, param, value)
            fits[value] = g.fit(split.train, items, users)
            recs = recommend_all(generator_recommender(g), split, settings.k)
            ndcg[value] = per_user_metrics(recs, truth, settings.k)["ndcg"]
        top = max(grid, key=lambda v: ndcg[v].mean())  # the first of equals
        current = getattr(generators[name], param)
        default = current if current in ndcg else grid_default(grid)
        diff = ndcg[top] - ndcg[default]
        se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else np.inf
        best = top if diff.mean() > se else default  # noise does not move a parameter off its default
        generators[name] = copy.deepcopy(generators[name])
        setattr(generators[name], param, best)
        chosen[f"{name}_{param}"] = best
        fitted[name] = fits[best]
    return generators, chosen, fitted


def fit_generators(generators: dict, events: pd.DataFrame, items: pd.DataFrame | None,
                   users: pd.DataFrame | None, fitted: dict | None = None) -> dict:
    """Fresh fitted copies of ``generators``.

    Args:
        generators: name -> generator (not modified).
        events: the training events.
        items: the catalog, or None.
        users: user attributes, or None.
        fitted: name -> a generator already fitted on ``events`` with the same settings (tuning's);
            taken as it is instead of fitting again.

    Returns:
        Name -> fitted deep copy (or the given fit), in ``generators``' order.
    """
    fitted = fitted or {}
    return {n: fitted[n] if n in fitted else copy.deepcopy(g).fit(events, items, users) for n, g in generators.items()}


# -- feature providers ---------------------------------------------------------------------------
class FeatureProvider(Protocol):
    """Where training reads user and item features as of each user's cut (``DirectFeatures``,
    ``FeastFeatures``): one interface, so a split can be ranked from either."""

    def user_rows(self, users: list[str], cuts: list[pd.Timestamp]) -> list[dict | None]:
        """Each user's features as of their cut.

        Args:
            users: user ids.
            cuts: each user's as-of time, aligned with ``users``.

        Returns:
            Per user, in input order: the stored features plus the derived ``u_recency_hours`` and
            ``u_tenure_days``, or None when nothing is known about the user by the cut.
        """
        ...

    def item_rows(self, item_ids: np.ndarray, cuts: pd.DatetimeIndex) -> np.ndarray:
        """Stored item features as of each row's cut.

        Args:
            item_ids: one item per row (repeats allowed).
            cuts: each row's as-of time, aligned with ``item_ids``.

        Returns:
            One row per input row, columns in model order (``stored_item_matrix``); shape (0, 1) when empty.
        """
        ...


class DirectFeatures:
    """User and item features as of any time, from the events, by the functions Feast's tables are
    built with (``recops.features``): exact at every cut."""

    def __init__(self, events: pd.DataFrame, items: pd.DataFrame):
        self.events, self.items = events, items

    def user_rows(self, users: list[str], cuts: list[pd.Timestamp]) -> list[dict | None]:
        """``FeatureProvider.user_rows``, computed from the events (None: no event up to the cut)."""
        uev = self.events[self.events["user_id"].notna()]
        uf = user_features(uev, pd.DataFrame({"user_id": users, "as_of": cuts}), self.items)
        return _user_records(uf, cuts)

    def item_rows(self, item_ids: np.ndarray, cuts: pd.DatetimeIndex) -> np.ndarray:
        """``FeatureProvider.item_rows``, computed from the events."""
        pts = pd.DataFrame({"item_id": item_ids, "as_of": cuts})
        return stored_item_matrix(item_features(self.events, pts)) if len(pts) else np.zeros((0, 1))


class FeastFeatures:
    """Point-in-time retrieval from the Feast offline store (the pipeline's source of training data)."""

    def __init__(self, fs):
        self.fs = fs

    def user_rows(self, users: list[str], cuts: list[pd.Timestamp]) -> list[dict | None]:
        """``FeatureProvider.user_rows``, by point-in-time lookup in Feast (None: nothing stored by the cut)."""
        if not users:
            return []
        feats = self.fs.historical(pd.DataFrame({"user_id": users, "event_timestamp": cuts}), "user")
        return _user_records(feats, cuts)

    def item_rows(self, item_ids: np.ndarray, cuts: pd.DatetimeIndex) -> np.ndarray:
        """``FeatureProvider.item_rows``, by point-in-time lookup in Feast (each distinct (item, cut)
        once). Users cut at their own times (returning users) look their candidates up as of the
        midnight before their cut, the items' daily snapshot: one lookup per item and day instead of
        one per candidate row, and never a later event."""
        if not len(item_ids):
            return np.zeros((0, 1))
        if cuts.nunique() > 1:
            cuts = cuts.floor("D")
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
    """The serving item table: every known item with its stored features as of ``t`` (from Feast).

    Args:
        fs: the ``FeatureStoreClient``.
        items: the catalog.
        events: events whose items are included too (items missing from the catalog).
        t: the as-of time of the features (tz-aware).

    Returns:
        The table of the catalog's and the events' items.
    """
    ids = pd.unique(pd.concat([items["item_id"], events["item_id"]], ignore_index=True).astype(str))
    feats = fs.historical(pd.DataFrame({"item_id": ids, "event_timestamp": t}), "item")
    return ItemTable.build(feats, items)


# -- candidate rows --------------------------------------------------------------------------------
def _candidates(model: RecopsModel, users: list[str], hist: dict, excl: dict,
                cuts: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's candidates (item indexes, generator features) as of their cut, excluded items removed."""
    out = []
    answers = model.candidates_many([hist.get(u, []) for u in users], list(users),
                                    [cuts[u] if cuts else None for u in users])
    for u, (idx, gen, _) in zip(users, answers):
        if excl.get(u) and len(idx):
            keep = ~np.isin(idx, model.items.positions(list(excl[u])))
            idx, gen = idx[keep], gen[keep]
        out.append((idx, gen))
    return out


def rows_at_cuts(model: RecopsModel, users: list[str], cuts: dict, hist: dict, excl: dict, provider: FeatureProvider):
    """Every user's candidate rows with user and item features as of the user's own cut:
    (X, per-user row slices, item indexes). No lookup sees an event after the user's cut.

    Args:
        model: the model whose generators (fitted) propose the candidates; its ranker is not used.
        users: the user ids.
        cuts: user -> as-of time.
        hist: user -> recent items, newest first.
        excl: user -> items removed from the user's candidates.
        provider: the feature provider (``DirectFeatures`` or ``FeastFeatures``).

    Returns:
        ``(x, slices, idx)``: the rows (columns ``model.feature_names``), each user's ``(start, end)``
        rows of ``x`` in ``users`` order, and each user's candidate positions in ``model.items``.
    """
    cand = _candidates(model, users, hist, excl, cuts)
    cut_of = [pd.Timestamp(cuts[u]) for u in users]
    lens = [len(c[0]) for c in cand]
    ids = model.items.ids[np.concatenate([c[0] for c in cand])] if cand else np.array([], dtype=object)
    stored = provider.item_rows(ids, pd.DatetimeIndex(cut_of).repeat(lens) if cand
                                else pd.DatetimeIndex([], tz="UTC"))
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
    (None: none, the research protocol that peers are measured under too).

    Args:
        model: the fitted model.
        split: its test users, their cuts, histories and exclusions.
        items: the catalog (for the default provider).
        k: items per user.
        rules: the business rules; None: none (not even in-stock only).
        provider: the feature provider; None: ``DirectFeatures`` on ``split.train``.

    Returns:
        Test user -> up to ``k`` item ids, best first.
    """
    rules = rules or BusinessRules(in_stock_only=False)
    provider = provider or DirectFeatures(split.train, items)
    users = split.users
    excl = split.excluded()
    if rules.in_stock_only and not model.items.in_stock.all():  # what serving would not show
        gone = model.items.out_of_stock()
        excl = {u: excl.get(u, set()) | gone for u in users}
    hist = split.histories(HISTORY_LEN)
    x, slices, idx_all = rows_at_cuts(model, users, split.cut, hist, excl, provider)
    # the ranker's scores of every row in one call (a call per user cost 2 ms each)
    ranked = model.ranker.predict(x, num_threads=0) if model.ranker is not None and len(x) else None  # every core
    out = {}
    for u, (a, b), idx in zip(users, slices, idx_all):
        scores = (model.score_matrix(x[a:b], segment_of(hist.get(u, [])), None if ranked is None else ranked[a:b])
                  if b > a else np.zeros(0))
        out[u] = [str(model.items.ids[idx[o]]) for o in rank_order(model, x[a:b], scores, idx, k, rules)]
    return out


# -- the ranker ------------------------------------------------------------------------------------
def labelled_rows(model: RecopsModel, split: EvalSplit, provider: FeatureProvider):
    """Candidate rows of ``split``'s users with their labels (graded when the split has grades):
    (X, per-user slices, labels per user, histories).

    Args:
        model: the model fitted on ``split.train`` (generators; its ranker is not used).
        split: the labelled window: test users, cuts, test items (and grades), exclusions.
        provider: the feature provider.

    Returns:
        ``(x, slices, labels, hist)``: the rows and per-user ``(start, end)`` slices as in ``rows_at_cuts``,
        user -> label per candidate row (the grade, or 1.0 for a test item; 0.0 otherwise), and user ->
        recent items, newest first.
    """
    hist = split.histories(HISTORY_LEN)
    x, slices, idx_all = rows_at_cuts(model, split.users, split.cut, hist, split.excluded(), provider)
    labels = {}
    for u, idx in zip(split.users, idx_all):
        ids = model.items.ids[idx]
        if split.grades is not None:
            g = split.grades.get(u, {})
            labels[u] = np.array([g.get(i, 0) for i in ids], dtype=float)
        else:
            labels[u] = np.isin(ids, list(split.test[u])).astype(float)
    return x, slices, labels, hist


def fit_ranker(windows: list[tuple[RecopsModel, EvalSplit, object]], settings: Settings, neg_per_user: int = 50):
    """LambdaRank on the labelled candidates of every window ``(model fitted on the window's train,
    window split, feature provider)``, newest first. Users whose candidates hold no positive are
    skipped (no ranking signal); negatives are sampled from the candidates.

    Validation rotates over the windows: each is held out once while a fit on the others stops
    early on it, and its users' out-of-fold NDCG (full candidate lists) feeds the per-segment scorer
    choice (``choose_scorers``). The final fit uses every window for the folds' mean number of
    rounds, weighed by their validation users. With a single window, its 20% of users with the
    latest cuts are the validation slice.

    Args:
        windows: ``(model, split, provider)`` per window, newest first; the first model's feature
            names and generators are used.
        settings: ``random_state``, ``num_threads`` and ``k`` (the validation NDCG@k).
        neg_per_user: the most negatives sampled per user for training (all positives are kept).

    Returns:
        ``(booster, scorer, stats, calibration)``: the LightGBM ranker fitted on every window, segment ->
        scorer name (``choose_scorers``), counts and validation scores for MLflow, and the score-gap
        calibration (``calibrate``).

    Raises:
        ValueError: no training user's candidates hold a labelled item.
    """
    rng = np.random.default_rng(settings.random_state)
    data = []  # per window: rows, slices, labels, histories, split, labelled groups (negatives sampled)
    for model, split, provider in windows:
        x, slices, labels, hist = labelled_rows(model, split, provider)
        grp = []
        for u, (a, b) in zip(split.users, slices):
            y = labels[u]
            if y.max(initial=0) <= 0:
                continue
            sel = np.arange(a, b)
            neg = np.flatnonzero(y == 0)
            if len(neg) > neg_per_user:
                keep = np.sort(np.concatenate([np.flatnonzero(y > 0), rng.choice(neg, neg_per_user, replace=False)]))
                sel, y = sel[keep], y[keep]
            grp.append((u, x[sel], y))
        data.append((x, slices, labels, hist, split, grp))
    model = windows[0][0]
    stack = lambda gs: (np.vstack([g[1] for g in gs]), np.concatenate([g[2] for g in gs]),
                        np.array([len(g[2]) for g in gs])) if gs else (None, None, np.array([]))
    params = {"num_threads": settings.num_threads, "seed": settings.random_state}
    folds, rounds = [], []
    if len(data) > 1:
        for w, (x, slices, labels, hist, split, grp) in enumerate(data):
            train = [g for j, d in enumerate(data) if j != w for g in d[5]]
            if not train or not grp:
                continue
            (xt, yt, gt), (xv, yv, gv) = stack(train), stack(grp)
            fit = train_ranker(xt, yt, gt, model.feature_names, xv, yv, gv, **params)
            rounds.append((int(fit.best_iteration or fit.current_iteration()), len(grp)))
            valid = [(u, sl, len(split.test[u])) for u, sl in zip(split.users, slices)]
            folds.append((_predict(fit, x, settings), x, valid, labels, hist))
    if not folds:  # one window: its users with the latest cuts validate
        x, slices, labels, hist, split, grp = data[0]
        latest = pd.Series({u: pd.Timestamp(split.cut[u]) for u in split.users}).rank(method="first", pct=True)
        train = [g for g in grp if latest[g[0]] <= 0.8]
        if not train:
            raise ValueError("the candidates never contain a labelled item: nothing to learn a ranking from")
        (xt, yt, gt), (xv, yv, gv) = stack(train), stack([g for g in grp if latest[g[0]] > 0.8])
        fit = train_ranker(xt, yt, gt, model.feature_names, xv, yv, gv, **params)
        rounds.append((int(fit.best_iteration or fit.current_iteration()), 1))
        valid = [(u, sl, len(split.test[u])) for u, sl in zip(split.users, slices) if latest[u] > 0.8]
        folds.append((_predict(fit, x, settings), x, valid, labels, hist))
    # each fold's best round count, weighed by its validation users: a fold of few users stops early on noise
    n_rounds = max(round(np.average([r for r, _ in rounds], weights=[n for _, n in rounds])), 1)
    scorer, scores = choose_scorers(list(model.generators), folds, settings.k)
    xa, ya, ga = stack([g for d in data for g in d[5]])
    booster = train_ranker(xa, ya, ga, model.feature_names, params={"num_boost_round": n_rounds},
                           **params)
    stats = {"ranker_windows": len(windows), "ranker_train_groups": len(ga), "ranker_train_rows": len(ya),
             "ranker_best_iteration": n_rounds, **scores}
    return booster, scorer, stats, calibrate(folds)


def _predict(booster, x: np.ndarray, settings: Settings) -> np.ndarray:
    """A fold's out-of-fold scores of all its rows, in one call (calibration and the scorers' choice share them)."""
    return booster.predict(x, num_threads=settings.num_threads) if len(x) else np.zeros(0)


def calibrate(folds: list) -> IsotonicRegression:
    """P(the user interacts with the item in the holdout | its ranker score's gap to the user's best
    candidate), fitted on the out-of-fold candidate lists. LambdaRank scores only order one user's
    list; the gap to that list's top is comparable across users (and across refits), the raw score
    is not. Monotone (isotonic): a smaller gap never gets a lower probability.

    Args:
        folds: ``(out-of-fold ranker scores of the rows, rows, [(user, slice, n relevant)], labels,
            histories)`` per held-out window (see ``choose_scorers``).

    Returns:
        The fitted isotonic regression: gap (score minus the list's top score, <= 0) -> probability in [0, 1].
    """
    gaps, hits = [], []
    for pred, _, users, labels, _ in folds:
        for u, (a, b), _ in users:
            if b <= a:  # a user without candidates says nothing about calibration
                continue
            s = pred[a:b]
            gaps.append(s - s.max())
            hits.append(labels[u] > 0)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    return iso.fit(np.concatenate(gaps), np.concatenate(hits).astype(float))


def choose_scorers(generators: list[str], folds: list, k: int) -> tuple[dict[str, str], dict[str, float]]:
    """Per user segment (new / known): the ranker, unless it does not beat the generator whose own
    order ranks the validation users' candidates best (NDCG@k over full candidate lists, pooled
    over the out-of-fold windows) by more than one standard error of the paired difference; then
    that generator. Small or odd data can leave the ranker little to learn; this keeps recops as
    good as its best source there. ``folds``: (out-of-fold ranker scores of the rows, rows,
    [(user, slice, n relevant)], labels, histories).

    Args:
        generators: the generator names, in the order of the model's generator feature columns.
        folds: per held-out window: the scores of its rows by the ranker fitted without it, the rows,
            ``(user, (start, end), number of relevant items)`` per validation user, user -> labels per
            row, user -> history.
        k: the list length NDCG is measured at.

    Returns:
        ``(scorer, scores)``: segment -> ``"ranker"`` or a generator name, and the validation scores
        (``valid_ndcg_<segment>_<scorer>`` and ``valid_users_<segment>``).
    """
    names = ["ranker", *generators]
    g = 2 * len(generators)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    per: dict[str, dict[str, list[float]]] = {}
    for pred, x, valid, labels, hist in folds:
        for u, (a, b), n_rel in valid:
            if b <= a:
                continue
            rel = labels[u] > 0
            best_rank = x[a:b, 1:g:2].min(axis=1)
            seg = segment_of(hist.get(u, []))
            ideal = disc[: min(n_rel, k)].sum()
            for n, name in enumerate(names):
                s = pred[a:b] if name == "ranker" else -x[a:b, 2 * (n - 1) + 1]
                top = np.lexsort((best_rank, -s))[:k]
                per.setdefault(seg, {}).setdefault(name, []).append(float((rel[top] * disc[: len(top)]).sum() / ideal))
    scorer, scores = {}, {}
    for seg, by in per.items():
        means = {n: float(np.mean(v)) for n, v in by.items()}
        gen = max(names[1:], key=lambda n: means[n])
        diff = np.array(by["ranker"]) - np.array(by[gen])
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
        # one-standard-error rule: the ranker must beat the best generator by more than the noise
        scorer[seg] = "ranker" if diff.mean() > se else gen
        scores.update({f"valid_ndcg_{seg}_{n}": m for n, m in means.items()})
        scores[f"valid_users_{seg}"] = float(len(by["ranker"]))
    return scorer, scores


def train_on_split(train: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None, settings: Settings,
                   inner: EvalSplit | list[EvalSplit], generators: dict | None = None, provider=None) -> RecopsModel:
    """Tune and fit the generators on each inner split's train, the ranker on the inner splits'
    test items, then refit the generators on all of ``train``: the model to score the outer split.

    ``inner``: one split carved out of ``train``, or several, newest first, each carved out of the
    previous one's train (``inner_windows``): more labelled users for the ranker on small data.
    ``provider`` gives features as of the cuts (default: ``DirectFeatures`` on each inner split's
    train). It must not see events a split holds out (a per-user split holds out other users' later
    items too), or training features would differ from the ones the model is evaluated with.

    Args:
        train: the outer split's training events.
        items: the catalog.
        users: user attributes, or None.
        settings: the training settings (sample sizes, candidates per source, ranker, grids).
        inner: the inner split(s), see above.
        generators: name -> unfitted generator; None: ``default_generators(settings)``.
        provider: the feature provider, see above.

    Returns:
        The model: generators fitted on ``train``, the ranker, per-segment scorers, calibration, and
        ``meta`` with the ranker's stats and the tuned parameters.
    """
    generators = generators if generators is not None else default_generators(settings)
    windows = [w.sample(settings.ranker_max_users, settings.random_state)
               for w in (inner if isinstance(inner, list) else [inner])]
    tune_on = windows[0].sample(settings.tuning_users, settings.random_state)
    generators, tuned, tuning_fits = tune_generators(generators, tune_on, items, users, settings)
    table = ItemTable.build(pd.DataFrame({"item_id": pd.unique(train["item_id"])}), items)
    fits: dict[int, dict] = {}  # windows that share their training events share one fit
    for w in windows:
        if id(w.train) not in fits:  # the first window's train is tuning's: its tuned fits are reused
            fits[id(w.train)] = fit_generators(generators, w.train, items, users,
                                               tuning_fits if w.train is tune_on.train else None)
    fitted = [(RecopsModel(fits[id(w.train)], None, table, settings.candidates_per_source),
               w, provider or DirectFeatures(w.train, items)) for w in windows]
    ranker, scorer, stats, calibration = fit_ranker(fitted, settings)
    return RecopsModel(fit_generators(generators, train, items, users), ranker, table, settings.candidates_per_source,
                       meta={"ranker": stats, "tuned": tuned, "scorer": scorer}, scorer=scorer, calibration=calibration)


def inner_windows(train: pd.DataFrame, carve, n: int, enough_users: int | None = None) -> list[EvalSplit]:
    """Up to ``n`` inner splits, newest first, each carved by ``carve`` out of the previous one's
    train; stops early when the history runs out or the windows hold ``enough_users`` test users
    (older windows only help when labelled users are scarce).

    Args:
        train: the events to carve the first window out of.
        carve: events -> ``EvalSplit``; raises ``ValueError`` when the events cannot be split.
        n: the most windows.
        enough_users: stop once the windows hold this many test users together; None: no limit.

    Returns:
        The windows, newest first (at least one).

    Raises:
        ValueError: ``carve`` cannot split ``train`` itself.
    """
    out = [carve(train)]
    while len(out) < n and (enough_users is None or sum(len(w.test) for w in out) < enough_users):
        try:
            nxt = carve(out[-1].train)
        except ValueError:
            break
        if not nxt.test:
            break
        out.append(nxt)
    return out


def returning_windows(train: pd.DataFrame, settings: Settings, min_items: int = 5,
                      max_users: int | None = None) -> list[EvalSplit]:
    """Labelled windows of users coming back: each user with ``min_items`` distinct items or more has
    the last fifth held out at their own cut (``per_user_split``, serving protocol), in two halves
    of at most ``max_users`` users in all (None: ``ranker_max_users``). A global cut's test users
    are whoever is active after it; where users come and go (a film site) few of them have a
    history, so the known users' scorer would be chosen on users unlike the ones it serves. The halves share their
    training events (one generator fit); each validates the ranker fitted without it. (Holding out
    the fifth before as well, for twice the labelled users, was measured on MovieLens: no better,
    and training took 1.8x as long.)

    Args:
        train: the events to carve the windows out of.
        settings: ``ranker_max_users``, ``random_state``, ``exclude_event_types`` and the event-type
            weights (grades).
        min_items: the least distinct items a user needs to be held out.
        max_users: the most users in both halves.

    Returns:
        Two windows, or none when fewer than two users qualify.
    """
    split = per_user_split(train, 0.2, min_items, exclude_types=tuple(settings.exclude_event_types),
                           weights=settings.event_types).sample(max_users or settings.ranker_max_users,
                                                                settings.random_state)
    users = np.asarray(split.users)
    if len(users) < 2:
        return []
    order = np.random.default_rng(settings.random_state).permutation(len(users))
    return [split.subset(set(users[order[h::2]])) for h in (0, 1)]


TRENDING_HALF_LIVES = (7.0, 1.0, 3.0, 14.0, 30.0)  # days; the default first (it wins ties)


def choose_cold_start(windows: list[EvalSplit], items: pd.DataFrame, users: pd.DataFrame | None,
                      settings: Settings) -> tuple[float, bool, dict]:
    """What new users get, chosen on the windows' new users (test users without a training event):

    - the trending list's half-life (``TRENDING_HALF_LIVES``), by NDCG@k: how fast tastes move
      differs from a shop's season to a film site's weekly releases;
    - their segment's favourites (the demographic model, same half-life) instead of trending, for
      those with a users row, only when those lists beat trending by more than one standard error of
      the paired difference (as the scorers are chosen). Segment lists are thinner than the global
      trend: where tastes follow the moment more than the person, a users file would make new
      users' lists worse.

    Args:
        windows: global-cut windows.
        items: the catalog.
        users: user attributes, or None.
        settings: ``k`` and the event-type weights.

    Returns:
        ``(half_life_days, use_demographic, report)``; the report holds ``trending_half_life_days``,
        ``cold_start`` (``"demographic"`` or ``"trending"``), ``cold_start_why`` and the validation
        figures (``valid_ndcg_trending_hl<days>``, ``valid_ndcg_cold_demographic``,
        ``valid_ndcg_cold_trending``, ``valid_users_new``, ``valid_users_cold``).
    """
    k, w = settings.k, settings.event_types
    new = []  # (window, its new users)
    for win in windows:
        seen = set(win.train["user_id"].dropna().astype(str))
        users_new = [u for u in win.users if u not in seen]
        if users_new:
            new.append((win, users_new))
    report: dict = {}
    half_life = TRENDING_HALF_LIVES[0]
    trends: dict[tuple[int, float], list[str]] = {}  # (window, half-life) -> its trending list
    if new:
        per = {}
        for hl in TRENDING_HALF_LIVES:
            parts = []
            for n, (win, us) in enumerate(new):
                trends[n, hl] = trend = [str(i) for i in Popularity(hl, w).fit(win.train).score([], k)[0]]
                parts.append(per_user_metrics({u: trend for u in us}, {u: win.test[u] for u in us}, k)["ndcg"])
            per[hl] = np.concatenate(parts)
            report[f"valid_ndcg_trending_hl{hl:g}"] = float(per[hl].mean())
        half_life = max(TRENDING_HALF_LIVES, key=lambda hl: per[hl].mean())
        report["valid_users_new"] = float(len(per[half_life]))
    report["trending_half_life_days"] = half_life
    if users is None or users.empty:
        return half_life, False, {**report, "cold_start": "trending", "cold_start_why": "no users file"}
    rows = users.assign(user_id=users["user_id"].astype(str)).set_index("user_id")
    cols = [c for c in ("age", "gender", "region") if c in rows]
    demo_ndcg, pop_ndcg = [], []
    for n, (win, us) in enumerate(new):
        us = [u for u in us if u in rows.index]
        if not us:
            continue
        demo = make_generator("demographic", settings, half_life_days=half_life).fit(win.train, items, users)
        trend = trends[n, half_life]
        profile = lambda u: {c: rows.at[u, c] if c in cols and pd.notna(rows.at[u, c]) else None
                             for c in ("age", "gender", "region")}  # as serving passes the users row
        recs = {u: [str(i) for i in demo.score_profile(profile(u), k)[0]] for u in us}
        truth = {u: win.test[u] for u in us}
        demo_ndcg.append(per_user_metrics(recs, truth, k)["ndcg"])
        pop_ndcg.append(per_user_metrics({u: trend for u in us}, truth, k)["ndcg"])
    if not demo_ndcg:
        return half_life, False, {**report, "cold_start": "trending",
                                  "cold_start_why": "no new user with demographics to validate on"}
    d, p = np.concatenate(demo_ndcg), np.concatenate(pop_ndcg)
    diff = d - p
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
    use = bool(diff.mean() > se)
    report.update({"valid_ndcg_cold_demographic": float(d.mean()), "valid_ndcg_cold_trending": float(p.mean()),
                   "valid_users_cold": float(len(d)), "cold_start": "demographic" if use else "trending",
                   "cold_start_why": (f"demographic lists {'beat' if use else 'did not beat'} trending on "
                                      f"{len(d)} new users by more than one standard error "
                                      f"(NDCG@{k} {d.mean():.4f} against {p.mean():.4f})")})
    return half_life, use, report


# -- evaluation ------------------------------------------------------------------------------------
def evaluate_model(model: RecopsModel, split: EvalSplit, items: pd.DataFrame, users: pd.DataFrame | None,
                   settings: Settings, provider=None, with_baseline: bool = True, refit: bool = True) -> dict:
    """Refit ``model``'s generators on ``split.train``, rank for the test users as of their cuts
    under the business rules, and score: metrics at K (1, 5, k, 20), per segment, bootstrap CI, and
    the popularity baseline on the same users. Per-user NDCG (in ``users`` order) for paired tests.

    Args:
        model: the trained model; its generators are refit, its ranker and scorers reused.
        split: the evaluation split.
        items: the catalog.
        users: user attributes, or None.
        settings: ``k``, the business rules and the event-type weights (baseline).
        provider: the feature provider; None: ``DirectFeatures`` on ``split.train``.
        with_baseline: also score the popularity baseline.
        refit: refit the generators on ``split.train``; False: ``model``'s generators are already fitted
            on exactly those events (training's model on its own outer split) and are used as they are.

    Returns:
        ``model`` (metrics at k, with ``ndcg_ci_low``/``ndcg_ci_high``), ``per_user_ndcg`` (array aligned
        with ``users``, the sorted test users), ``curve`` (K -> metrics), ``segments`` (NDCG@k and users
        per segment) and, with the baseline, ``baseline``, ``baseline_curve`` and ``baseline_segments``.
    """
    k = settings.k
    rules = BusinessRules.from_settings(settings)
    provider = provider or DirectFeatures(split.train, items)
    table = ItemTable.build(pd.DataFrame({"item_id": pd.unique(split.train["item_id"])}), items)
    m = RecopsModel(fit_generators(model.generators, split.train, items, users) if refit else model.generators,
                    model.ranker, table, model.candidates_per_source, scorer=model.scorer)
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
        pop = Popularity(weights=settings.event_types).fit(split.train)
        excl = split.excluded()
        gone = table.out_of_stock() if rules.in_stock_only else set()
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
    """The pipeline's evaluation split: a global cut (``holdout_days`` before the newest event, or,
    by default, chosen from the data: ``recops.evaluation.holdout_cut``), under the serving protocol
    (business-rule exclusions, graded relevance).

    Args:
        events: the events.
        settings: ``holdout_days``, ``exclude_event_types`` and the event-type weights (grades).

    Returns:
        The ``"global"`` split (``recops.evaluation.global_split``).

    Raises:
        ValueError: no event has a user_id, the cut is not after the first identified event, or no user
            has a test item.
    """
    return global_split(events, settings.holdout_days, exclude_types=tuple(settings.exclude_event_types),
                        weights=settings.event_types)


def holdout_fingerprint(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
                        settings: Settings) -> str:
    """What the pipeline's holdout evaluation depends on, as one digest: the events (ids, users after
    identity stitching, times), the catalog (stock changes the business rules' exclusions), the users
    file and every setting. Training keeps its evaluation under this digest, so the evaluate step that
    follows on the same data reuses it instead of computing it again.

    Args:
        events: the events (with actors).
        items: the catalog.
        users: user attributes, or None.
        settings: the settings.

    Returns:
        A hex digest; equal inputs give equal digests, in any process.
    """
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(events[["event_id", "user_id", "timestamp"]], index=False).to_numpy())
    for frame in (items, users):
        if frame is not None:
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy())
        h.update(b"|")
    h.update(json.dumps(settings.to_env(), sort_keys=True).encode())
    return h.hexdigest()


def train_model(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None, fs,
                settings: Settings) -> tuple[RecopsModel, dict]:
    """The whole training procedure on point-in-time features from Feast; returns the model to
    serve (generators refit on every event) and a report of the split, ranker and evaluation.

    Args:
        events: every event (the outer split is carved out of them).
        items: the catalog.
        users: user attributes, or None.
        fs: the ``FeatureStoreClient`` holding the point-in-time features.
        settings: the training settings.

    Returns:
        ``(model, report)``: the model to serve (with cold-start and next-item models), and ``split``
        (``inner_cuts``, ``cut``, ``end`` as strings), ``ranker`` (stats), ``tuned`` (chosen
        parameters) and ``eval`` (``evaluate_model`` on the outer split).

    Raises:
        ValueError: the events cannot be split, or the ranker has nothing to learn from.
    """
    # work that needs nothing from what runs beside it goes to a second thread, on the other core while
    # this one waits on pandas, Feast or Python
    pool = ThreadPoolExecutor(1, thread_name_prefix="recops-train")
    try:
        return _train_model(events, items, users, fs, settings, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _train_model(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None, fs, settings: Settings,
                 pool: ThreadPoolExecutor) -> tuple[RecopsModel, dict]:
    """``train_model``'s procedure, with independent work on ``pool``'s thread."""
    # the live session's model: what tends to come next after its items (directional, /next-items), its
    # settings chosen on the newest sessions. Its ranker gets half the cores: the rest of training runs
    # beside it (on 2 cores, 2 LightGBM threads beside the main thread took 14 s longer than 1 on 1M events)
    threads = max((settings.num_threads or os.cpu_count() or 1) // 2, 1)
    next_job = pool.submit(choose_next_item, events, items, num_threads=threads)
    outer = pipeline_split(events, settings)
    # labelled users: half the budget for the global cuts, half for the returning users
    half = max(settings.ranker_max_users // 2, 1)
    inner = [w.sample(half, settings.random_state) for w in
             inner_windows(outer.train, lambda e: pipeline_split(e, settings), settings.ranker_windows, half)]
    # new users with demographics: their segment's favourites only where those beat trending
    half_life, use_demographic, cold = choose_cold_start(inner, items, users, settings)
    generators = default_generators(settings)
    if "popularity" in generators:
        generators["popularity"].half_life_days = half_life
    # returning users first: they tune the generators, and with the global windows' users they teach
    # and validate the ranker and the known users' scorer
    inner = returning_windows(outer.train, settings, max_users=half) + inner
    provider = FeastFeatures(fs)
    model = train_on_split(outer.train, items, users, settings, inner, generators, provider)
    # the generators to serve, refitted on every event while the holdout is scored (a copy: scoring reads them)
    final_job = pool.submit(fit_generators, copy.deepcopy(model.generators), events, items, users)
    ev = evaluate_model(model, outer, items, users, settings, provider, refit=False)  # fitted on outer.train
    end = events["timestamp"].max()
    cut = next(iter(outer.cut.values()))
    next_item, next_report = next_job.result()
    split = {"inner_cuts": ",".join(str(next(iter(w.cut.values()))) for w in inner), "cut": str(cut), "end": str(end)}
    final = RecopsModel(final_job.result(), model.ranker,
                        item_table_at(fs, items, events, end), settings.candidates_per_source,
                        meta={"split": split, "trained_on_events": len(events), **model.meta,
                              "next_item": next_report},
                        scorer=model.scorer, calibration=model.calibration,
                        # cold start: users with demographics and no events yet get their segment's favourites
                        demographic=(make_generator("demographic", settings, half_life_days=half_life)
                                     .fit(events, items, users) if use_demographic else None),
                        next_item=next_item)
    # the evaluate step on the same data reuses this evaluation (steps.evaluate); not in meta, which
    # the server's /model shows
    final.holdout_eval = {**ev, "fingerprint": holdout_fingerprint(events, items, users, settings)}
    return final, {"split": split, "ranker": model.meta["ranker"], "tuned": model.meta["tuned"], "eval": ev,
                   "next_item": next_report, "cold_start": cold,
                   "choices": choices(model, cold, next_report, split, inner)}


def choices(model: RecopsModel, cold: dict, next_report: dict, split: dict, windows: list[EvalSplit]) -> dict:
    """What training chose and why, in words, for the MLflow run (``choices.json``).

    Args:
        model: the trained model (its scorers, tuned parameters and ranker stats in ``meta``).
        cold: ``choose_cold_start``'s report.
        next_report: ``choose_next_item``'s report.
        split: the cuts (``cut``, ``end``).
        windows: the ranker's labelled windows.

    Returns:
        Choice -> ``{"chose": ..., "why": ...}``.
    """
    stats = model.meta["ranker"]
    out = {"holdout": {"chose": f"cut {split['cut']} (newest event {split['end']})",
                       "why": "the last week or the last tenth of the events, whichever is longer"},
           "windows": {"chose": [f"{w.name}: {len(w.test)} users" for w in windows],
                       "why": "global cuts teach the ranker about whoever comes next; per-user cuts about users "
                              "coming back"}}
    for seg, name in model.scorer.items():
        gens = {g: stats[f"valid_ndcg_{seg}_{g}"] for g in model.generators if f"valid_ndcg_{seg}_{g}" in stats}
        best = max(gens, key=gens.get) if gens else None
        out[f"scorer_{seg}"] = {
            "chose": name,
            "why": (f"out-of-fold NDCG@k on {int(stats.get(f'valid_users_{seg}', 0))} {seg} users: ranker "
                    f"{stats.get(f'valid_ndcg_{seg}_ranker', float('nan')):.4f}, best generator {best} "
                    f"{gens.get(best, float('nan')):.4f}; the ranker must win by more than one standard error")}
    out["cold_start"] = {"chose": cold["cold_start"], "why": cold["cold_start_why"]}
    out["trending_half_life_days"] = {
        "chose": cold["trending_half_life_days"],
        "why": ("best NDCG@k of the trending list on the global windows' new users: " + ", ".join(
            f"{k_[len('valid_ndcg_trending_hl'):]} days {v:.4f}" for k_, v in cold.items()
            if k_.startswith("valid_ndcg_trending_hl"))) if "valid_users_new" in cold else "no new users: the default"}
    ranked = next_report.get("ranker", {})
    out["next_item"] = {"chose": {**next_report.get("params", {}), "reranked": bool(ranked.get("serves"))},
                        "why": "best MRR@20 on the newest sessions"
                        + (f": rules {next_report['valid_mrr']:.4f}, re-ranked {ranked['valid_mrr']:.4f}"
                           if ranked.get("valid_mrr") is not None else "")}
    out["tuned"] = {"chose": model.meta["tuned"],
                    "why": "each generator's own NDCG@k on the first window; a value off the grid's middle one only "
                           "where it wins by more than one standard error"}
    return out
