"""Next item, re-ranked: sequential rules, session kNN and the catalog propose, a LightGBM ranker orders.

``NextItem`` scores what follows the session by sequential rules; V-SKNN (``session_knn``) by the
past sessions most like it. Each is strong where the other is weak: rules know what follows the item
on screen, neighbours know where sessions of this shape went. ``RankedNextItem`` takes the union of
their candidate lists and of the week's favourites in the session's categories (when a catalog is
given), and lets a LambdaRank model, trained on held-out sessions, order it from the signals below
(``FEATURES``): forward and reverse rules from the whole history and from the newest item alone, the
neighbours' vote, whether and how recently the session touched the candidate, its popularity overall
and in the last day and week before the request (a training query counts the days before its own only,
so the ranker learns what popularity means to a request that comes after the data), the history's
length, the candidate's rank under each signal, and from the catalog whether it shares the newest
item's category, its category's share of the session and its price against the newest item's.

Training (``fit``): the sessions are dealt into ``folds``; for each fold the sources are fitted on the
other folds, and the prefixes of sessions drawn from the fold (about ``max_queries`` / ``folds``
prefixes; each predicts the next *different* item, as ``recops.nextitem`` scores) become ranking
queries, the true next item the one relevant candidate. The queries of a fifth of those sessions
stop the boosting early (whole sessions, so no prefix of theirs also trains it). The sources are then
refitted on all events. Everything else ``NextItem`` answers (reasons, unknown items, ``predict``'s
format) comes from its rules as before; only the order changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.models.base import SideTable
from recops.models.recommender import train_ranker
from recops.models.sequential import NextItem, flatten_histories, rank_rows, session_key, top_per_row, touches
from recops.models.session_knn import VSKNN, values_at

SIGNALS = ("forward", "reverse", "last_forward", "last_reverse", "neighbors")
FEATURES = (*SIGNALS, *(f"{s}_share" for s in SIGNALS), "repeat", "popularity", "popularity_1d",
            "popularity_7d", "history_len", "forward_rank", "reverse_rank", "neighbors_rank", "popularity_1d_rank",
            "same_category", "category_share", "log_price_ratio")
MIN_QUERIES = 500  # answered queries below which no order is learned (the rules' order serves)
CATEGORY_TOP = 20  # candidates from the session's categories: each category's most popular of the last week
RANKER_PARAMS = {"metric": "ndcg", "eval_at": [20], "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 100,
                 "lambdarank_truncation_level": 20, "num_boost_round": 300}
# V-SKNN as Ludewig & Jannach tune it on YOOCHOOSE: 100 neighbours of the 500 most recent sessions, weights
# falling with the position (div), IDF-weighted item votes
NEIGHBORS = {"k": 100, "sample": 500, "weighting": "div", "weighting_score": "div", "idf_weighting": 1.0}


class RankedNextItem(NextItem):
    """``NextItem`` whose candidates (its rules' and V-SKNN's top ``candidates`` each, and the session's
    categories' ``CATEGORY_TOP`` favourites) are ordered by a LightGBM ranker (see the module docstring).
    ``neighbors``: V-SKNN's keyword arguments (None: ``NEIGHBORS``); ``num_threads``: LightGBM's when
    training (0: every core; scoring uses one); ``rules``: ``NextItem``'s."""

    def __init__(self, candidates: int = 50, neighbors: dict | None = None, folds: int = 4,
                 max_queries: int = 40_000, seed: int = 42, num_threads: int = 0, **rules):
        super().__init__(**rules)  # NextItem's settings
        self.rules = rules
        self.candidates = candidates
        self.neighbors = neighbors
        self.folds = folds
        self.max_queries = max_queries
        self.seed = seed
        self.num_threads = num_threads

    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> RankedNextItem:
        """Train the ranker on held-out folds, then fit the sources on all ``events``.

        See Recommender.fit.
        """
        self.ranker_ = self.train_ranker(events, items)
        return self.fit_sources(events, items)

    def fit_sources(self, events: pd.DataFrame, items: SideTable = None) -> RankedNextItem:
        """(Re)fit the rules, the neighbours and the popularity signals on ``events``, keeping the ranker.

        Args:
            events: the events to learn the signals from.
            items: the catalog (category and price, where known; None: no content signals).

        Returns:
            self.
        """
        forward, reverse = self.rule_parts(events)
        self.with_rules((forward, reverse))
        self.forward_ = top_per_row(forward, self.max_neighbors)
        self.reverse_ = top_per_row(reverse, self.max_neighbors)
        self.knn_ = VSKNN(**(NEIGHBORS if self.neighbors is None else self.neighbors)).fit(events)
        if not np.array_equal(self.knn_.item_ids_, self.item_ids_):  # both number the items of the same steps
            raise AssertionError("the rules and the neighbours numbered the items differently")
        stamp = pd.to_datetime(events["timestamp"], utc=True)
        code = self.index_.get_indexer(events["item_id"])
        known = code >= 0
        end = stamp.max()

        def share(mask: np.ndarray) -> np.ndarray:
            counts = np.bincount(code[mask & known], minlength=len(self.item_ids_)).astype(float)
            return counts / max(counts.sum(), 1.0)

        self.popularity_ = np.stack([share(np.ones(len(code), dtype=bool)),
                                     share((stamp >= end - pd.Timedelta(days=1)).to_numpy()),
                                     share((stamp >= end - pd.Timedelta(days=7)).to_numpy())], axis=1)
        # counts per day back from the end (row 0: the last 24 hours), for the popularity a past query saw
        self.end_ = end.tz_convert(None).to_datetime64()
        day = _days_back(self.end_, stamp.dt.tz_convert(None).to_numpy("datetime64[ns]"))
        self.daily_ = sp.csr_matrix((np.ones(known.sum()), (day[known], code[known])),
                                    shape=(int(day.max(initial=0)) + 1, len(self.item_ids_)))
        catalog = (items.drop_duplicates("item_id").set_index("item_id").reindex(self.item_ids_)
                   if items is not None and "item_id" in items else pd.DataFrame(index=self.item_ids_))
        category = catalog["category"].where(catalog["category"] != "unknown") if "category" in catalog else None
        self.category_ = (pd.factorize(category)[0] if category is not None
                          else np.full(len(self.item_ids_), -1, dtype=np.int64))
        price = pd.to_numeric(catalog["price"], errors="coerce") if "price" in catalog else None
        self.price_ = (price.where(price > 0).to_numpy(float) if price is not None
                       else np.full(len(self.item_ids_), np.nan))
        n_cat = int(self.category_.max(initial=-1)) + 1
        known = np.flatnonzero(self.category_ >= 0)
        self.in_category_ = sp.csr_matrix((np.ones(len(known)), (known, self.category_[known])),
                                          shape=(len(self.item_ids_), n_cat))
        # each category's most popular items of the last week, a third candidate source
        self.category_top_ = top_per_row((self.in_category_.T @ sp.diags(self.popularity_[:, 2] + 1e-12)).tocsr(),
                                         CATEGORY_TOP)
        return self

    def train_ranker(self, events: pd.DataFrame, items: SideTable = None) -> lgb.Booster | None:
        """The LambdaRank model, from the folds' queries (see the module docstring); None when fewer than
        ``MIN_QUERIES`` queries have their answer among the candidates (too little data: then the rules'
        order serves).

        Args:
            events: the training events.
            items: the catalog, or None.

        Returns:
            The booster, or None.
        """
        group = session_key(events).to_numpy()
        sessions = pd.unique(group)
        rng = np.random.default_rng(self.seed)
        fold = pd.Series(rng.integers(0, self.folds, len(sessions)), index=sessions)
        event_fold = fold.reindex(group).to_numpy()
        xs, ys, qs, keys = [], [], [], []
        for f in range(self.folds):
            rest, held = events[event_fold != f], events[event_fold == f]
            if rest.empty or held.empty:
                continue
            held = _some_sessions(held, self.max_queries // self.folds, rng)
            x, y, q, key = _queries(type(self)(self.candidates, self.neighbors, **self.rules).fit_sources(rest, items),
                                    held)
            xs.append(x); ys.append(y); keys.append(key)
            qs.append(q + (qs[-1].max() + 1 if qs and len(qs[-1]) else 0))
        if not xs:
            return None
        x, y, q, key = np.concatenate(xs), np.concatenate(ys), np.concatenate(qs), np.concatenate(keys)
        answered = np.bincount(q, weights=y)[q] > 0  # queries whose answer is a candidate
        x, y, q, key = x[answered], y[answered], q[answered], key[answered]
        if len(np.unique(q)) < MIN_QUERIES:
            return None
        session = pd.factorize(key)[0]  # whole sessions stop the boosting, so no prefix of theirs trains it
        stop = np.random.default_rng(self.seed).random(session.max() + 1) < 0.2
        tr, va = ~stop[session], stop[session]
        sizes = (lambda mask: np.bincount(q[mask])[np.unique(q[mask])])
        return train_ranker(x[tr], y[tr], sizes(tr), list(FEATURES), x[va], y[va], sizes(va), params=RANKER_PARAMS,
                            num_threads=self.num_threads, seed=self.seed)

    def candidates_of(self, histories: Sequence[Sequence[str]], days: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Each history's candidates and their features: (rows, item positions, features (one row per
        candidate, ``FEATURES`` order), the (row, item) pairs never to propose: the newest item, and
        older ones of the session unless ``allow_repeats``).

        Args:
            histories: one history per session, newest first.
            days: per history, the day (back from the training end, 0: its last 24 hours) its newest
                item was touched in; the popularity features then count the days before it only, as a
                request after the end sees them (None: every history asks after the end).

        Returns:
            (rows, columns, features, excluded pairs).
        """
        n, m = len(histories), len(self.item_ids_)
        lens, row, pos, code = flatten_histories(histories, self.index_)
        known = code >= 0
        recent = known & (pos < self.max_history)
        weight = self.position_decay ** pos.astype(float)
        session = sp.csr_matrix((weight[recent], (row[recent], code[recent])), shape=(n, m))
        newest = known & (pos == 0)
        last = sp.csr_matrix((np.ones(newest.sum()), (row[newest], code[newest])), shape=(n, m))
        older = recent & (pos > 0)
        # the candidate's earlier touches, each 1 / its steps back (summed; the feature clips at 1)
        again = sp.csr_matrix((1.0 / np.maximum(pos[older], 1), (row[older], code[older])), shape=(n, m))
        again.sum_duplicates()
        signals = [session @ self.forward_, session @ self.reverse_, last @ self.forward_, last @ self.reverse_]
        signals.append(sp.vstack([self.knn_.score_matrix(histories[lo: lo + self.knn_.SUB_BATCH])[0]
                                  for lo in range(0, n, self.knn_.SUB_BATCH)]).tocsr() if n else sp.csr_matrix((0, m)))
        excluded = (row[newest], code[newest]) if self.allow_repeats else (row[known], code[known])
        mix = (session @ self.in_category_).tocsr()
        pool = (top_per_row((signals[0] + 0.3 * again).tocsr(), self.candidates) != 0).astype(float) \
            + (top_per_row(signals[4], self.candidates) != 0).astype(float) \
            + (top_per_row((mix @ self.category_top_).tocsr(), CATEGORY_TOP) != 0).astype(float)
        pool = pool.tocoo()
        r, c = pool.row.astype(np.int64), pool.col.astype(np.int64)
        keep = ~np.isin(r * m + c, excluded[0] * m + excluded[1])
        order = np.lexsort((c[keep], r[keep]))
        r, c = r[keep][order], c[keep][order]
        cols = [values_at(s, r, c) for s in signals]
        cols += [v / np.maximum(_row_max(r, v, n), 1e-12)[r] for v in cols]
        cols.append(np.minimum(values_at(again, r, c), 1.0))
        pop = self.popularity_[c] if days is None else self._popularity_before(days, r, c)
        cols += [pop[:, 0], pop[:, 1], pop[:, 2], lens[r].astype(float)]
        cols += [_row_rank(r, v) for v in (cols[0], cols[1], cols[4], pop[:, 1])]
        cols += self._content(r, c, n, row[newest], code[newest], session, mix)
        return r, c, np.column_stack(cols) if len(r) else np.zeros((0, len(FEATURES))), excluded

    def _popularity_before(self, days: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The three popularity shares (all, last day, last week) of item ``c`` as seen from the day
        before history ``r``'s (``days[r]``)."""
        out = np.zeros((len(r), 3))
        n_days = self.daily_.shape[0]
        for d in np.unique(days[r]):
            at = days[r] == d
            lo = int(d) + 1  # the days strictly before the query's
            windows = (self.daily_[lo:], self.daily_[lo: lo + 1], self.daily_[lo: lo + 7]) if lo < n_days else ()
            for j, w in enumerate(windows):
                counts = np.asarray(w.sum(axis=0)).ravel()
                out[at, j] = counts[c[at]] / max(counts.sum(), 1.0)
        return out

    def _content(self, r: np.ndarray, c: np.ndarray, n: int, newest_row: np.ndarray, newest_code: np.ndarray,
                 session: sp.csr_matrix, mix: sp.csr_matrix) -> list[np.ndarray]:
        """same_category (candidate and newest item share a known category), category_share (the
        decayed share of the session's recent items in the candidate's category) and log_price_ratio
        (candidate's price over the newest item's; NaN where either is unknown)."""
        newest_cat, newest_price = np.full(n, -1, dtype=np.int64), np.full(n, np.nan)
        newest_cat[newest_row], newest_price[newest_row] = self.category_[newest_code], self.price_[newest_code]
        cat = self.category_[c]
        same = ((cat >= 0) & (cat == newest_cat[r])).astype(float)
        share = np.zeros(len(r))
        total = np.asarray(session.sum(axis=1)).ravel()
        ok = cat >= 0
        share[ok] = values_at(mix, r[ok], cat[ok]) / np.maximum(total[r[ok]], 1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(self.price_[c] / newest_price[r])
        return [same, share, ratio]

    def score_batch(self, histories: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per history, ordered by the ranker; each score is the candidate's softmax share of its
        history's candidates (in (0, 1]; 0 marks popularity backfill).

        See NextItem.score_batch.
        """
        if getattr(self, "ranker_", None) is None:
            return super().score_batch(histories, k)
        n, m = len(histories), len(self.item_ids_)
        r, c, x, excluded = self.candidates_of(histories)
        f = self.ranker_.predict(x, num_threads=1) if len(r) else np.zeros(0)
        # a softmax over each history's candidates: the chance that each is next, were one of them, so
        # a list's scores keep the ranker's margins (what the live-session lift in /recommend scales by)
        e = np.exp(f - _row_max(r, f, n, -np.inf)[r])
        score = e / np.bincount(r, weights=e, minlength=n)[r]
        return rank_rows(sp.csr_matrix((score, (r, c)), shape=(n, m)), k, self.popular_, self.popularity_rank_,
                         excluded)


def _some_sessions(events: pd.DataFrame, prefixes: int, rng: np.random.Generator) -> pd.DataFrame:
    """The events of randomly drawn sessions holding about ``prefixes`` prefixes (steps after the first)."""
    key = session_key(events)
    steps = touches(events)["group"].value_counts() - 1
    steps = steps[steps > 0].sample(frac=1.0, random_state=rng.integers(2**31))
    chosen = steps.index[: int(np.searchsorted(steps.cumsum().to_numpy(), prefixes)) + 1]
    return events[key.isin(chosen).to_numpy()]


def _queries(model: RankedNextItem, sessions: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Ranking rows from every prefix of ``sessions`` under ``model``'s sources: (features, label 1 for
    the next different item, query number per row, session key per row)."""
    steps = touches(sessions)
    g, items = steps["group"].to_numpy(), steps["item_id"].to_numpy()
    same = np.r_[False, g[1:] == g[:-1]]
    day = _days_back(model.end_, steps["timestamp"].to_numpy("datetime64[ns]"))
    histories, targets, days, owner = [], [], [], []
    start = 0
    for t in range(1, len(g) + 1):
        if t == len(g) or not same[t]:
            start = t
            continue
        histories.append(items[start:t][::-1][:50].tolist())
        targets.append(items[t])
        days.append(day[t - 1])
        owner.append(g[t])
    days = np.asarray(days, dtype=np.int64)
    owner = np.asarray(owner, dtype=object)
    xs, ys, qs, ks = [], [], [], []
    for lo in range(0, len(histories), 5_000):
        r, c, x, _ = model.candidates_of(histories[lo: lo + 5_000], days[lo: lo + 5_000])
        want = model.index_.get_indexer(targets[lo: lo + 5_000])
        xs.append(x); ys.append((c == want[r]).astype(float)); qs.append(r + lo); ks.append(owner[r + lo])
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(qs), np.concatenate(ks)


def _days_back(end: np.datetime64, stamps: np.ndarray) -> np.ndarray:
    """Whole days from each timestamp back to ``end`` (0: the last 24 hours; -1 for anything after it)."""
    return np.maximum((end - stamps) // np.timedelta64(1, "D"), -1).astype(np.int64)


def _row_max(row: np.ndarray, v: np.ndarray, n: int, empty: float = 0.0) -> np.ndarray:
    out = np.full(n, empty)
    np.maximum.at(out, row, v)
    return out


def _row_rank(row: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1-based rank of each value within its row, largest first (rows sorted ascending)."""
    order = np.lexsort((-v, row))
    counts = np.bincount(row)
    rank = np.empty(len(v))
    rank[order] = np.arange(len(v)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    return rank
