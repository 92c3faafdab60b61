"""The user-item matrix of implicit ratings that the collaborative generators share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.ratings import implicit_ratings


@dataclass
class Interactions:
    matrix: sp.csr_matrix  # users x items, implicit ratings in (0, 5]
    users: pd.Index
    items: pd.Index

    def row(self, history: list[str]) -> sp.csr_matrix:
        """A pseudo-user row from recent items (newest first, weight 1/(1+position)).

        Args:
            history: recent item ids, newest first; unknown items are skipped but keep their position.

        Returns:
            A 1 x items CSR row; a repeated item keeps its newest weight.
        """
        pos = self.items.get_indexer(history)
        ok = pos >= 0
        w = 1.0 / (1.0 + np.arange(len(history)))[ok]
        cols, first = np.unique(pos[ok], return_index=True)
        return sp.csr_matrix((w[first], (np.zeros(len(cols), dtype=int), cols)), shape=(1, len(self.items)))


def interactions(events: pd.DataFrame, weights: dict[str, float], half_life_days: float = 30.0,
                 max_items: int | None = None) -> Interactions:
    """Implicit ratings as a sparse matrix; ``max_items`` keeps the most interacted-with items.

    Args:
        events: the recops event schema; events without a user_id are ignored.
        weights: event type -> weight.
        half_life_days: the decay's half-life, ages measured from the newest event with a user_id.
        max_items: keep only the items rated by the most users; None: all.

    Returns:
        The users x items matrix of ratings in (0, 5] (no zero entries) with its user and item ids, in
        order of first appearance.
    """
    r = implicit_ratings(events, weights, half_life_days)
    r = r[r["rating"] > 0]
    if max_items is not None:
        top = r["item_id"].value_counts().index[:max_items]
        r = r[r["item_id"].isin(top)]
    users = pd.Index(pd.unique(r["user_id"]))
    items = pd.Index(pd.unique(r["item_id"]))
    m = sp.csr_matrix((r["rating"].to_numpy(dtype=np.float64),
                       (users.get_indexer(r["user_id"]), items.get_indexer(r["item_id"]))),
                      shape=(len(users), len(items)))
    return Interactions(m, users, items)


def gather_rows(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of CSR rows ``rows``: (position in ``rows`` of each entry, column, value). Pure
    numpy, so cheaper than scipy's fancy indexing for the handful of rows a request needs.

    Args:
        m: a CSR matrix.
        rows: row numbers (repeats allowed).

    Returns:
        (owner, columns, values), one per stored entry, row by row in the order of ``rows``: owner is
        the position in ``rows`` (int64); columns and values keep ``m``'s dtypes. Empty when the rows are.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = m.indptr[rows], m.indptr[rows + 1]
    lens = ends - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=m.indices.dtype), np.zeros(0, dtype=m.data.dtype)
    owner = np.repeat(np.arange(len(rows)), lens)
    offsets = np.cumsum(lens) - lens
    pos = np.arange(total) - offsets[owner] + starts[owner]
    return owner, m.indices[pos], m.data[pos]


def keep_top_per_row(dense: np.ndarray, k: int) -> sp.csr_matrix:
    """Sparsify a dense item-item matrix to each row's ``k`` largest positive entries.

    Args:
        dense: a 2-D array.
        k: how many entries per row at most (>= 1; more than the columns means all).

    Returns:
        A CSR matrix shaped like ``dense``; zero and negative entries are dropped.
    """
    n = dense.shape[0]
    k = min(k, dense.shape[1])
    part = np.argpartition(-dense, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(dense, part, axis=1)
    rows = np.repeat(np.arange(n), k)
    keep = vals.ravel() > 0
    return sp.csr_matrix((vals.ravel()[keep], (rows[keep], part.ravel()[keep])), shape=dense.shape)


def keep_top_csr(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's ``k`` largest entries, rows sorted by descending weight (a loop over rows).

    ``sequential.top_per_row`` does the same vectorized, but breaks ties at the k-th value by column,
    where this takes whichever ``argpartition`` picks: on MovieLens the kept neighbours of 26 of 1,682
    items differ. Co-visitation and item-kNN keep this one so that their results stay as measured.

    Args:
        m: the CSR matrix to prune.
        k: the most entries a row keeps.

    Returns:
        The kept entries as a CSR matrix of ``m``'s shape, largest first in every row.
    """
    indptr, indices, data = [0], [], []
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        d, c = m.data[lo:hi], m.indices[lo:hi]
        if hi - lo > k:
            part = np.argpartition(-d, k - 1)[:k]
            d, c = d[part], c[part]
        order = np.argsort(-d, kind="stable")
        data.append(d[order]); indices.append(c[order])
        indptr.append(indptr[-1] + len(order))
    return sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0),
         np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32), np.asarray(indptr)),
        shape=m.shape,
    )
