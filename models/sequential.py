"""Next-item prediction: given the items a session touched so far (newest first), what comes next.

A session is a sequence, and for "what next" its order matters more than its contents. The score
of a candidate sums, over the session's last ``max_history`` items, ``position_decay ** position``
(newest first, so the last item leads) times
- a sequential rule (Ludewig & Jannach's SR): A touched and B touched ``lag <= window`` steps later
  counts 1/lag for A -> B; each item's rules are normalized to sum 1, so that a popular recent item
  does not drown the others;
- plus ``backward_weight`` times the reverse evidence (B is often *preceded* by A), a co-occurrence
  signal that rescues follow-ups too rare to have rules of their own.
Popularity breaks ties and fills the list, so there are always ``k`` items while the catalog lasts.

The newest item is never proposed (the user is looking at it). Older items of the session come
back often in shop logs (OTTO: comparing products, returning to the cart): ``allow_repeats`` lets
them be proposed, with a bonus of ``repeat_weight`` times their position weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.models.base import Recommender, SideTable
from recops.models.covisit import session_groups
from recops.models.matrix import gather_rows


def session_key(events: pd.DataFrame) -> pd.Series:
    """The session of each event: its session_id, else (events with a user_id) its user's day.

    Args:
        events: events with session_id, and with user_id and timestamp for the day fallback.

    Returns:
        One key per event, aligned with ``events`` (see ``covisit.session_groups``); without a user_id
        column, the session_id as is.
    """
    return session_groups(events) if "user_id" in events else events["session_id"]


def touches(events: pd.DataFrame) -> pd.DataFrame:
    """Each session's items in time order (columns group, item_id), one row per run of the same
    item: a view, a click and a cart of one item are one step, not three.

    Args:
        events: events with session_id, item_id and timestamp (user_id: see ``session_key``).

    Returns:
        One row per step: the session key (``group``, sessions in sorted order), the item_id and the
        step's first timestamp (numpy datetime64, no time zone).
    """
    ev = pd.DataFrame({"group": session_key(events).to_numpy(), "item_id": events["item_id"].to_numpy(),
                       "timestamp": events["timestamp"].to_numpy("datetime64[ns]")})  # not Timestamp objects
    ev = ev.sort_values(["group", "timestamp"], kind="stable")
    g, it = ev["group"].to_numpy(), ev["item_id"].to_numpy()
    new = np.ones(len(ev), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (it[1:] != it[:-1])
    return pd.DataFrame({"group": g[new], "item_id": it[new], "timestamp": ev["timestamp"].to_numpy()[new]})


def pair_matrix(group: np.ndarray, code: np.ndarray, n_items: int, window: int | None,
                directional: bool = True, by_lag: bool = True) -> sp.csr_matrix:
    """Item x item weights of the pairs (A at step t, B at step t + lag), 1 <= lag <= ``window``
    (``None``: the whole session), in consecutive rows of one session; weight 1/lag (``by_lag``)
    or 1. ``directional=False`` counts B -> A as well.

    Args:
        group: each step's session key, a session's steps consecutive and in order (as ``touches`` gives).
        code: each step's item, as a number in [0, ``n_items``).
        n_items: the matrix size.
        window: the largest lag; None: the whole session.
        directional: False: count B -> A as well.
        by_lag: weight 1/lag; False: weight 1.

    Returns:
        The n_items x n_items CSR matrix of summed pair weights (A -> A pairs left out).
    """
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    longest = int(np.diff(np.r_[starts, len(group)]).max()) if len(group) else 0
    rows, cols, vals = [], [], []
    for lag in range(1, min(window or longest, longest - 1) + 1):
        same = group[lag:] == group[:-lag]
        a, b = code[:-lag][same], code[lag:][same]
        keep = a != b
        a, b = a[keep], b[keep]
        w = np.full(len(a), 1.0 / lag if by_lag else 1.0)
        rows += [a, b] if not directional else [a]
        cols += [b, a] if not directional else [b]
        vals += [w, w] if not directional else [w]
    if not rows:
        return sp.csr_matrix((n_items, n_items))
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items))
    m.sum_duplicates()
    return m


def row_normalize(m: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its sum (empty rows stay empty).

    Args:
        m: a sparse matrix with non-negative entries.

    Returns:
        The normalized sparse matrix, shaped like ``m``.
    """
    sums = np.asarray(m.sum(axis=1)).ravel()
    return sp.diags(np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)) @ m


def top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest entries, in descending order; among equal values the one stored first
    wins. A row holding more than ``k`` entries is cut at its k-th largest value by a partition (linear),
    and only the kept entries are sorted: on 5,000 rows of 2,000 entries 25x faster than sorting them all.

    Args:
        m: a sparse matrix.
        k: how many entries per row at most.

    Returns:
        A CSR matrix shaped like ``m``, each row's entries stored largest first.
    """
    m = m.tocsr()
    if k <= 0:
        return sp.csr_matrix(m.shape, dtype=m.dtype)
    n, counts, data = m.shape[0], np.diff(m.indptr), m.data
    keep = np.ones(m.nnz, dtype=bool)
    for r in np.flatnonzero(counts > k):
        seg = data[m.indptr[r]: m.indptr[r + 1]]
        kth = np.partition(seg, len(seg) - k)[len(seg) - k]  # the k-th largest value
        top = seg > kth
        top[np.flatnonzero(seg == kth)[: k - int(top.sum())]] = True  # ties at the cut: the first stored
        keep[m.indptr[r]: m.indptr[r + 1]] = top
    pos = np.flatnonzero(keep)
    row = np.repeat(np.arange(n), counts)[pos]
    order = pos[np.lexsort((pos, -data[pos], row))]
    kept = np.bincount(row, minlength=n)
    return sp.csr_matrix((data[order], m.indices[order], np.r_[0, np.cumsum(kept)]), shape=m.shape)


def rank_rows(scores: sp.csr_matrix, k: int, popular: np.ndarray, popularity_rank: np.ndarray,
              exclude: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns of every row of ``scores``, (row, column) pairs in ``exclude`` left out,
    ties broken by popularity, and rows with fewer than ``k`` positive scores filled with the most
    popular items left (score 0). Returns (n, k) columns (-1 where the catalog runs out) and scores.

    Args:
        scores: an n x m sparse matrix of scores; only positive entries count.
        k: how many columns per row.
        popular: columns by descending popularity.
        popularity_rank: the inverse permutation (column -> its place in ``popular``).
        exclude: (rows, columns) arrays of pairs never returned, not even as backfill; None: none.

    Returns:
        (columns, scores), both (n, k), best first: int64 columns, -1 where the catalog runs out; scores
        0 for backfill.
    """
    n, m = scores.shape
    coo = scores.tocoo()
    r, c, v = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    ex_r, ex_c = exclude if exclude is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    ex_keys = ex_r * m + ex_c
    keep = (v > 0) & ~np.isin(r * m + c, ex_keys)
    r, c, v = r[keep], c[keep], v[keep]
    # best first: one sort by value (a popularity nudge of 1e-9 breaks ties), then a stable sort by
    # row in the smallest integer type (a radix sort): far faster than a lexsort of millions
    by_value = np.argsort(-v * (1.0 + 1e-9 * (1.0 - popularity_rank[c] / m)))
    order = by_value[np.argsort(r[by_value].astype(np.min_scalar_type(n)), kind="stable")]
    r, c, v = r[order], c[order], v[order]
    per_row = np.bincount(r, minlength=n)
    rank = np.arange(len(r)) - (np.cumsum(per_row) - per_row)[r]
    top = rank < k
    idx, out = np.full((n, k), -1, dtype=np.int64), np.zeros((n, k))
    idx[r[top], rank[top]], out[r[top], rank[top]] = c[top], v[top]
    _backfill(idx, popular, ex_keys, m)
    return idx, out


def _backfill(idx: np.ndarray, popular: np.ndarray, ex_keys: np.ndarray, m: int) -> None:
    """Fill the -1 slots of ``idx`` in place with the most popular columns that are neither in the
    row already nor excluded from it."""
    n, k = idx.shape
    filled = (idx >= 0).sum(axis=1)
    rows = np.flatnonzero(filled < k)
    if not len(rows) or not len(popular):
        return
    most_excluded = np.bincount(ex_keys // m, minlength=n).max() if len(ex_keys) else 0
    cand = np.broadcast_to(popular[: k + most_excluded], (len(rows), min(len(popular), k + most_excluded)))
    taken = np.concatenate([ex_keys, (np.arange(n)[:, None] * m + idx)[idx >= 0]])
    free = ~np.isin(rows[:, None] * m + cand, taken)
    slot = filled[rows, None] + np.cumsum(free, axis=1) - 1
    use = free & (slot < k)
    idx[np.broadcast_to(rows[:, None], cand.shape)[use], slot[use]] = cand[use]


def flatten_histories(histories: Sequence[Sequence[str]], index: pd.Index) -> tuple[np.ndarray, ...]:
    """One entry per (history, position): (history lengths, each entry's row, its position (0 = the
    newest) and its item's position in ``index``, -1 when unknown).

    Args:
        histories: item ids, each history newest first.
        index: the model's item index.

    Returns:
        (lens, row, pos, code).
    """
    n = len(histories)
    lens = np.fromiter(map(len, histories), dtype=np.int64, count=n)
    flat = list(chain.from_iterable(histories))
    code = index.get_indexer(flat) if flat else np.zeros(0, dtype=np.int64)
    row = np.repeat(np.arange(n), lens)
    pos = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
    return lens, row, pos, code


class NextItem(Recommender):
    name = "next_item"

    def __init__(self, window: int = 10, position_decay: float = 0.25, max_history: int = 10,
                 backward_weight: float = 0.1, allow_repeats: bool = True, repeat_weight: float = 0.3,
                 max_neighbors: int = 200):
        self.window = window
        self.position_decay = position_decay
        self.max_history = max_history
        self.backward_weight = backward_weight
        self.allow_repeats = allow_repeats
        self.repeat_weight = repeat_weight
        self.max_neighbors = max_neighbors

    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> NextItem:
        """Sequential rules plus ``backward_weight`` x the reverse rules over each session's steps
        (``touches``), each item's ``max_neighbors`` strongest kept; popularity is steps per item.

        See Recommender.fit.
        """
        return self.with_rules(self.rule_parts(events))

    def rule_parts(self, events: pd.DataFrame) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Count the events' steps (the slow part of ``fit``): sets the catalog and popularity and
        returns the forward and reverse rules, each row-normalised, for ``with_rules``.

        Args:
            events: the training events.

        Returns:
            (forward, reverse) item x item matrices.
        """
        t = touches(events)
        self.item_ids_ = np.asarray(pd.unique(t["item_id"]), dtype=object)
        self.index_ = pd.Index(self.item_ids_)
        code = self.index_.get_indexer(t["item_id"])
        pairs = pair_matrix(t["group"].to_numpy(), code, len(self.item_ids_), self.window)
        self.popular_ = np.argsort(-np.bincount(code, minlength=len(self.item_ids_)), kind="stable")
        self.popularity_rank_ = np.argsort(self.popular_)
        return row_normalize(pairs), row_normalize(pairs.T.tocsr())

    def with_rules(self, parts: tuple[sp.csr_matrix, sp.csr_matrix]) -> NextItem:
        """Finish the fit from ``rule_parts`` with this model's ``backward_weight`` (so tuning it
        does not count the steps again).

        Args:
            parts: what ``rule_parts`` returned, on the same events.

        Returns:
            self, fitted.
        """
        forward, reverse = parts
        self.rules_ = top_per_row(forward + self.backward_weight * reverse, self.max_neighbors)
        return self

    def score_batch(self, histories: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for many sessions at once (each history newest first): (n, k) positions in
        ``item_ids_`` (-1 where the catalog runs out) and scores (0 for popularity backfill).

        Args:
            histories: one history per session, each newest first (unknown items are skipped but keep their position).
            k: how many items per session.

        Returns:
            (positions, scores), both (n, k), best first.
        """
        n, m = len(histories), len(self.item_ids_)
        _, row, pos, code = flatten_histories(histories, self.index_)
        known = code >= 0
        recent = known & (pos < self.max_history)
        weight = self.position_decay ** pos.astype(float)
        scores = sp.csr_matrix((weight[recent], (row[recent], code[recent])), shape=(n, m)) @ self.rules_
        if self.allow_repeats:
            older = recent & (pos > 0)
            again = sp.csr_matrix((weight[older], (row[older], code[older])), shape=(n, m))
            scores = scores + self.repeat_weight * again
        excluded = known & ((pos == 0) | (not self.allow_repeats))
        return rank_rows(scores.tocsr(), k, self.popular_, self.popularity_rank_, (row[excluded], code[excluded]))

    def score_indices(self, history: list[str], k: int, user_id: str | None = None,
                      as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``score_batch`` of this one history (popularity backfill at score 0, so ``k`` items while the
        catalog lasts). Ignores ``user_id`` and ``as_of``.

        See Recommender.score_indices.
        """
        idx, scores = self.score_batch([history], k)
        keep = idx[0] >= 0
        return idx[0][keep], scores[0][keep]

    def predict(self, recent_item_ids: list[str], k: int, exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
        """The ``k`` likeliest next items after ``recent_item_ids`` (newest first), as (item_id,
        score); score 0 marks popularity backfill. ``exclude``: items never to propose.

        Args:
            recent_item_ids: the session's recent items, newest first.
            k: how many items at most.
            exclude: items never to propose.

        Returns:
            (item_id, score) pairs, best first.
        """
        exclude = set(exclude)
        idx, scores = self.score_indices(list(recent_item_ids), k + len(exclude))
        return [(i, float(s)) for i, s in zip(self.item_ids_[idx], scores) if i not in exclude][:k]

    def unknown(self, items: Sequence[str]) -> list[str]:
        """The ``items`` this model never saw in a session (it can say nothing about what follows them).

        Args:
            items: item ids.

        Returns:
            The unseen ones, in the order given.
        """
        return [i for i in items if i not in self.index_]

    def strongest_source(self, history: Sequence[str], items: Sequence[str]) -> dict[str, str]:
        """``ExplainsCandidates``: for each of ``items``, the recent item that leads to it most.

        Args:
            history: the session's recent items, newest first.
            items: items this model proposed after them.

        Returns:
            item -> the recent item it most often follows; items no recent item leads to are left out.
        """
        found = {item: self.strongest_rule(list(history), item) for item in items}
        return {item: src for item, src in found.items() if src is not None}

    def strongest_rule(self, recent: list[str], item: str) -> str | None:
        """The recent item (newest first) that contributes most to ``item``'s score, for a reason
        such as "because you viewed X"; None when no recent item leads to it.

        Args:
            recent: the session's recent items, newest first (only the first ``max_history`` count).
            item: a proposed item.

        Returns:
            The recent item; None also when ``item`` is unknown.
        """
        recent = list(recent)[: self.max_history]
        code = self.index_.get_indexer(recent + [item])
        if code[-1] < 0:
            return None
        pos = np.flatnonzero(code[:-1] >= 0)
        owner, cols, w = gather_rows(self.rules_, code[pos])
        hit = cols == code[-1]
        if not hit.any():
            return None
        contrib = w[hit] * self.position_decay ** pos[owner[hit]].astype(float)
        return recent[pos[owner[hit][np.argmax(contrib)]]]
