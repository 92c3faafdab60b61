"""Session kNN: the past sessions most like the current one vote for what comes next.

V-SKNN (Ludewig & Jannach 2018) and STAN (Garg et al. 2019), the two session-kNN methods that neural
session models rarely beat (Ludewig et al. 2021), after rn5l/session-rec's code, vectorized over a batch
of prefixes. ``bench/sessions.py`` measures them as baselines; ``recops.models.nextitem_ranker`` uses
V-SKNN's scores as one of the signals its ranker learns from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.models.matrix import gather_rows
from recops.models.sequential import flatten_histories, rank_rows, session_key, touches


class SessionKNN:
    """Session-kNN over the training sessions, the part V-SKNN and STAN share: the past sessions
    holding any item of the current session are the candidates, the ``sample`` most recent of them
    (by their last event) are compared with it, and the ``k`` most similar are the neighbours, whose
    items are then scored (``_similarity`` and ``_scores``: the variant). ``remind`` (session-rec's):
    items of the current session may be proposed again, except the newest one; False: none of them.
    Lists are filled by popularity, as the other baselines' are.

    Sessions are ``touches`` steps (consecutive repeats collapsed), as recops numbers them. Vectorized:
    a batch of prefixes is a prefixes x items matrix, candidates one product with the items x sessions
    matrix. Factors common to all neighbours of one prefix (session-rec divides similarities by the
    current session's length or norm, and STAN's time decay is relative to the current time) are left
    out: they scale all its scores alike, so the ranking is the reference's.
    """

    SUB_BATCH = 500  # prefixes per candidate matrix: bounds its size (popular items are in thousands of sessions)

    def __init__(self, k: int = 100, sample: int = 500, remind: bool = True, max_history: int = 50):
        self.k = k
        self.sample = sample
        self.remind = remind
        self.max_history = max_history

    def fit(self, events: pd.DataFrame) -> SessionKNN:
        """Sessions x items matrices (sessions numbered oldest first by their last event): ``last_`` holds
        each item's last step (1-based) in the session; popularity and IDF count steps per item."""
        t = touches(events)
        g = t["group"].to_numpy()
        self.item_ids_ = np.asarray(pd.unique(t["item_id"]), dtype=object)
        self.index_ = pd.Index(self.item_ids_)
        code, m = self.index_.get_indexer(t["item_id"]), len(self.item_ids_)
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        sess = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
        stamp = pd.to_datetime(events["timestamp"], utc=True)
        seconds = (stamp - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
        end = pd.Series(seconds).groupby(session_key(events).to_numpy()).max().reindex(g[starts]).to_numpy()
        order = np.argsort(end, kind="stable")
        recency = np.empty(len(order), dtype=np.int64)
        recency[order] = np.arange(len(order))
        s, step = recency[sess], np.arange(len(g)) - starts[sess] + 1
        o = np.lexsort((step, code, s))  # the last step of each (session, item) wins
        last = np.r_[(s[o][1:] != s[o][:-1]) | (code[o][1:] != code[o][:-1]), True]
        n_sessions = len(order)
        self.last_ = sp.csr_matrix((step[o][last].astype(float), (s[o][last], code[o][last])), shape=(n_sessions, m))
        self.item_sessions_ = self.by_item(np.ones(self.last_.nnz))
        self.age_days_ = (end[order][-1] - end[order]) / 86400.0
        counts = np.bincount(code, minlength=m)
        self.idf_ = np.log(n_sessions / np.maximum(counts, 1))
        self.popular_ = np.argsort(-counts, kind="stable")
        self.popularity_rank_ = np.argsort(self.popular_)
        return self

    def by_item(self, values: np.ndarray) -> sp.csr_matrix:
        """Items x sessions: ``last_``'s structure transposed, with ``values``, each item's ``sample`` most
        recent sessions only. Exact: a session among the ``sample`` most recent holding any item of the
        current session is among the ``sample`` most recent holding each of them; and cheaper."""
        m = sp.csr_matrix((values, self.last_.indices, self.last_.indptr), shape=self.last_.shape).T.tocsr()
        m.sort_indices()
        row = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        keep = m.indptr[row + 1] - 1 - np.arange(m.nnz) < self.sample
        ptr = np.r_[0, np.cumsum(np.bincount(row[keep], minlength=m.shape[0]))]
        return sp.csr_matrix((m.data[keep], m.indices[keep], ptr), shape=m.shape)

    def score_batch(self, histories: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (positions in ``item_ids_``, scores) of each history (newest first), as ``NextItem``'s."""
        parts = [self._rank(histories[lo: lo + self.SUB_BATCH], k) for lo in range(0, len(histories), self.SUB_BATCH)]
        if not parts:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _rank(self, histories: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, exclude = self.score_matrix(histories)
        return rank_rows(scores, k, self.popular_, self.popularity_rank_, exclude)

    def score_matrix(self, histories: Sequence[Sequence[str]]) -> tuple[sp.csr_matrix, tuple[np.ndarray, np.ndarray]]:
        """The raw scores of every item for each history (newest first; at most ``SUB_BATCH`` of them, or
        the candidate matrix grows large): a histories x items CSR matrix (columns: ``item_ids_``), and the
        (row, column) pairs never to propose (the newest item; without ``remind``, all of the session's).

        Args:
            histories: the sessions' items, newest first; unknown items are skipped.

        Returns:
            (scores, (rows, columns) excluded).
        """
        n, m = len(histories), len(self.item_ids_)
        lens, row, pos, code = flatten_histories([list(h)[: self.max_history] for h in histories], self.index_)
        known = code >= 0
        q = Query(n, m, row[known], code[known], pos[known], lens)
        pairs = Pairs(q, self.item_sessions_, self.sample)
        sim, extra = self._similarity(q, pairs)
        top = top_pairs_per_row(pairs.row, pairs.session, sim, self.k, self.last_.shape[0])
        scores = self._scores(q, pairs.row[top], pairs.session[top], sim[top], extra[top])
        never = q.pos == 0 if self.remind else np.ones(len(q.row), dtype=bool)
        return scores.tocsr(), (q.row[never], q.code[never])

    def _similarity(self, q: Query, pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
        """Each candidate pair's similarity and one more number per pair that ``_scores`` needs."""
        raise NotImplementedError

    def _scores(self, q: Query, r: np.ndarray, s: np.ndarray, sim: np.ndarray, extra: np.ndarray) -> sp.spmatrix:
        """The prefixes x items scores from the neighbour pairs (prefix r, session s) and their similarities."""
        raise NotImplementedError


class Query:
    """A batch of prefixes, one entry per (prefix, known item): ``row``, ``code``, ``pos`` (its newest
    position, 0 = the newest step), ``bits`` (the sum of 2^-position over its occurrences) and
    ``length`` (the prefix's steps, unknown items included)."""

    def __init__(self, n: int, m: int, row: np.ndarray, code: np.ndarray, pos: np.ndarray, lens: np.ndarray):
        key, first, inverse = np.unique(row * m + code, return_index=True, return_inverse=True)
        self.n, self.m, self.row, self.code, self.pos = n, m, key // m, key % m, pos[first]
        self.bits = np.bincount(inverse, weights=2.0 ** -pos.astype(float), minlength=len(key))
        self.length = lens[self.row]

    def matrix(self, values: np.ndarray) -> sp.csr_matrix:
        """The prefixes x items matrix of one value per entry (always the same sparsity structure)."""
        return sp.csr_matrix((values, (self.row, self.code)), shape=(self.n, self.m))


class Pairs:
    """The (prefix, session) candidate pairs kept: each prefix's ``sample`` most recent sessions holding
    any of its items (sessions are numbered oldest first, so a row's largest columns); ``row`` sorted,
    sessions ascending within a row. ``values`` reads a product of the query with an items x sessions
    matrix at these pairs."""

    def __init__(self, q: Query, item_sessions: sp.csr_matrix, sample: int):
        self.q, self.item_sessions = q, item_sessions
        self.candidates = q.matrix(np.ones(len(q.row))) @ item_sessions
        # one sort, of positions: every product of the same structures is stored in the same order
        order = sp.csr_matrix((np.arange(self.candidates.nnz), self.candidates.indices, self.candidates.indptr),
                              shape=self.candidates.shape)
        order.sort_indices()
        ptr = order.indptr
        row = np.repeat(np.arange(q.n), np.diff(ptr))
        keep = ptr[row + 1] - 1 - np.arange(len(row)) < sample
        self.row, self.session, self.at = row[keep], order.indices[keep].astype(np.int64), order.data[keep]

    def values(self, values: np.ndarray, right: sp.csr_matrix | None = None) -> np.ndarray:
        """(query with ``values``) @ ``right`` (same structure as ``item_sessions``) at the pairs."""
        product = self.q.matrix(values) @ (self.item_sessions if right is None else right)
        if product.nnz == self.candidates.nnz:  # nothing summed to 0: the candidates' layout
            return product.data[self.at]
        return values_at(product, self.row, self.session)


def values_at(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``m[rows, cols]`` as a flat array (0 where nothing is stored), by a search in the sorted keys."""
    m = m.tocsr()
    m.sum_duplicates()
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * m.shape[1] + m.indices
    want = rows * m.shape[1] + cols
    at = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
    return np.where(keys[at] == want, m.data[at], 0.0) if len(keys) else np.zeros(len(want))


def top_pairs_per_row(row: np.ndarray, session: np.ndarray, sim: np.ndarray, k: int, n_sessions: int) -> np.ndarray:
    """Positions of each row's ``k`` most similar pairs with a positive similarity; ties (and float
    noise, < 1e-9 relative) go to the more recent session. One sort by value, then a stable sort by
    row in the smallest integer type (a radix sort), as ``rank_rows`` does."""
    pos = np.flatnonzero(sim > 0)
    by_sim = pos[np.argsort(-sim[pos] * (1.0 + 1e-9 * session[pos] / n_sessions))]
    r = row[by_sim]
    order = by_sim[np.argsort(r.astype(np.min_scalar_type(max(int(r.max(initial=0)), 1))), kind="stable")]
    counts = np.bincount(row[order], minlength=int(row.max(initial=-1)) + 1)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[rank < k]


def leading_exponent(x: np.ndarray) -> np.ndarray:
    """The exponent of the largest power of two in a sum of distinct powers of two (exact below 53 terms:
    a prefix holds at most ``max_history`` = 50 steps)."""
    return np.frexp(x)[1].astype(np.int64) - 1


# session-rec's weightings of the current session's items (d: steps from the newest, 0-based; n: the
# prefix length) and of a neighbour by the newest current item it holds (i: 1-based steps from the end)
WEIGHTING: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "same": lambda d, n: np.ones(len(d)),
    "linear": lambda d, n: np.maximum(1.0 - 0.1 * d, 0.0),
    "div": lambda d, n: (n - d) / n,
    "quadratic": lambda d, n: ((n - d) / n) ** 2,
    "log": lambda d, n: 1.0 / np.log10(d + 1.7),
}
WEIGHTING_SCORE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda i: np.ones(len(i)),
    "linear": lambda i: np.maximum(1.0 - 0.1 * i, 0.0),
    "div": lambda i: 1.0 / i,
    "quadratic": lambda i: 1.0 / i**2,
    "log": lambda i: 1.0 / np.log10(i + 1.7),
}


class VSKNN(SessionKNN):
    """V-SKNN (Ludewig & Jannach 2018, "Evaluation of session-based recommendation algorithms"), after
    ``VMContextKNN`` in rn5l/session-rec ``algorithms/knn/vsknn.py`` (similarity ``vec``, sampling
    ``recent``). The similarity of a past session is the sum of the ``weighting`` of the current
    session's items it holds (by their newest position: the newer, the heavier). An item's score sums,
    over the neighbours holding it, similarity x ``weighting_score`` of i (i = 1 when the neighbour holds
    the newest item, else 1 + the steps back to the newest one it holds) x (1 + ``idf_weighting`` x the
    item's IDF, log(sessions / steps of the item)).

    One deviation: session-rec's ``linear`` weighting tests the position from the session start
    (``i <= 10``), which zeroes the newest items of sessions longer than 10 and goes negative; here it is
    max(0, 1 - 0.1 x steps back), its evident intent (``linear`` scores likewise clip at 0).
    """

    def __init__(self, k: int = 100, sample: int = 500, weighting: str = "div", weighting_score: str = "div",
                 idf_weighting: float = 0.0, remind: bool = True, max_history: int = 50):
        super().__init__(k, sample, remind, max_history)
        self.weighting = weighting
        self.weighting_score = weighting_score
        self.idf_weighting = idf_weighting

    def fit(self, events: pd.DataFrame) -> VSKNN:
        super().fit(events)
        items = sp.csr_matrix((np.ones(self.last_.nnz), self.last_.indices, self.last_.indptr), shape=self.last_.shape)
        self.items_ = items @ sp.diags(1.0 + self.idf_weighting * self.idf_) if self.idf_weighting else items
        return self

    def _similarity(self, q: Query, pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
        sim = pairs.values(WEIGHTING[self.weighting](q.pos.astype(float), q.length.astype(float)))
        # each step of the prefix is one bit 2^-position, so a pair's sum has its newest shared step on top
        return sim, -leading_exponent(pairs.values(q.bits))

    def _scores(self, q: Query, r: np.ndarray, s: np.ndarray, sim: np.ndarray, extra: np.ndarray) -> sp.spmatrix:
        weight = sim * WEIGHTING_SCORE[self.weighting_score](extra + 1.0)
        return sp.csr_matrix((weight, (r, s)), shape=(q.n, self.items_.shape[0])) @ self.items_


class STAN(SessionKNN):
    """STAN (Garg et al. 2019, "Sequence and Time Aware Neighborhood for Session-based Recommendations"),
    after rn5l/session-rec ``algorithms/knn/stan.py`` (no ``extend``). Three decays:
    - ``lambda_1`` (session-rec's ``lambda_spw``): the current session's item d steps back weighs
      exp(-d / lambda_1); the similarity is the cosine of that weighted current session and the
      neighbour's (binary) item set;
    - ``lambda_2`` (``lambda_snh``, in days): the similarity of a neighbour that ended t days before the
      newest training session is multiplied by exp(-t / lambda_2) (t counts from the current time in the
      reference: the same ranking, see ``SessionKNN``); None: no decay;
    - ``lambda_3`` (``lambda_inh``): a neighbour's item at step p counts exp(-|p - p*| / lambda_3), p* the
      neighbour's last step holding any item of the current session (steps: each item's last one); None: 1.
    An item's score sums similarity x that weight over the ``k`` most similar neighbours.
    """

    MAX_STEP = 1000  # steps beyond count as this one for p* (2^step must stay a finite float)

    def __init__(self, k: int = 100, sample: int = 1000, lambda_1: float = 1.0, lambda_2: float | None = 5.0,
                 lambda_3: float | None = 2.0, remind: bool = True, max_history: int = 50):
        super().__init__(k, sample, remind, max_history)
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2
        self.lambda_3 = lambda_3

    def fit(self, events: pd.DataFrame) -> STAN:
        super().fit(events)
        # items x sessions like item_sessions_: a sum over items has the last shared step on top
        self.last_bits_ = self.by_item(2.0 ** np.minimum(self.last_.data, self.MAX_STEP))
        self.norm_ = 1.0 / np.sqrt(np.diff(self.last_.indptr))
        if self.lambda_2 is not None:
            self.norm_ = self.norm_ * np.exp(-self.age_days_ / self.lambda_2)
        return self

    def _similarity(self, q: Query, pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
        sim = pairs.values(np.exp(-q.pos / self.lambda_1)) * self.norm_[pairs.session]
        return sim, leading_exponent(pairs.values(np.ones(len(q.row)), self.last_bits_)).astype(float)

    def _scores(self, q: Query, r: np.ndarray, s: np.ndarray, sim: np.ndarray, extra: np.ndarray) -> sp.spmatrix:
        owner, items, step = gather_rows(self.last_, s)
        weight = sim[owner]
        if self.lambda_3 is not None:
            weight = weight * np.exp(-np.abs(np.minimum(step, self.MAX_STEP) - extra[owner]) / self.lambda_3)
        return sp.csr_matrix((weight, (r[owner], items)), shape=(q.n, q.m))
