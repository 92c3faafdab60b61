"""Session-based kNN (SKNN, Jannach & Ludewig 2017): recommend what similar past sessions contained.

The current session (the most recent items, newest first) is compared with past sessions by a
position-weighted cosine overlap: newer items of the current session count more. The ``neighbors``
most similar sessions vote for their items with their similarity (and their own recency), so the
generator sees the context of the whole session, not only pairs of items as co-visitation does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.models.base import NONE, Recommender, SideTable, top_k
from recops.models.covisit import session_groups


class SessionKNN(Recommender):
    name = "session"

    def __init__(self, session_len: int = 10, neighbors: int = 100, max_sessions: int = 200_000,
                 half_life_days: float = 30.0):
        self.session_len = session_len
        self.neighbors = neighbors
        self.max_sessions = max_sessions
        self.half_life_days = half_life_days

    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> SessionKNN:
        """The ``max_sessions`` most recent sessions with at least two distinct items, as a binary sessions x
        items matrix, each weighted by its recency over the root of its length. ``items``, ``users``: unused.

        See Recommender.fit.
        """
        ev = events[["user_id", "session_id", "item_id", "timestamp"]].copy()
        ev["group"] = session_groups(ev)
        last = ev.groupby("group", sort=False)["timestamp"].max()
        last = last[ev.groupby("group", sort=False)["item_id"].nunique() >= 2]  # a single item says nothing
        last = last.sort_values(ascending=False).head(self.max_sessions)  # the most recent sessions
        ev = ev[ev["group"].isin(last.index)]
        pairs = ev[["group", "item_id"]].drop_duplicates()
        self.item_ids_ = np.asarray(pd.unique(pairs["item_id"]), dtype=object)
        self.index_ = {item: i for i, item in enumerate(self.item_ids_)}
        sessions = pd.Index(last.index)
        rows = sessions.get_indexer(pairs["group"])
        cols = pd.Index(self.item_ids_).get_indexer(pairs["item_id"])
        m = sp.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(sessions), len(self.item_ids_)))
        self.sessions_ = m  # sessions x items, binary
        self.by_item_ = m.T.tocsr()  # items x sessions: which sessions hold an item
        size = np.asarray(m.sum(axis=1)).ravel()
        age = ((last.max() - last) / pd.Timedelta(days=1)).to_numpy(dtype=float) if len(last) else np.zeros(0)
        # cosine normalisation by the past session's length, times its recency
        self.session_weight_ = np.power(0.5, age / self.half_life_days) / np.sqrt(np.maximum(size, 1))
        return self

    def score_indices(self, history: list[str], k: int, user_id: str | None = None,
                      as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``neighbors`` past sessions most like the history's newest ``session_len`` items vote for their
        items; those items are left out. Ignores ``user_id`` and ``as_of``.

        See Recommender.score_indices.
        """
        cur = [self.index_[i] for i in history[: self.session_len] if i in self.index_]
        if not cur:
            return NONE
        pos_w = 1.0 / (1.0 + np.arange(len(cur)))  # newer items of the current session weigh more
        sess_parts, w_parts = [], []
        for i, w in zip(cur, pos_w):
            lo, hi = self.by_item_.indptr[i], self.by_item_.indptr[i + 1]
            sess_parts.append(self.by_item_.indices[lo:hi])
            w_parts.append(np.full(hi - lo, w))
        sess = np.concatenate(sess_parts)
        uniq, inv = np.unique(sess, return_inverse=True)
        sim = np.bincount(inv, weights=np.concatenate(w_parts)) * self.session_weight_[uniq] / np.sqrt(len(cur))
        if len(uniq) > self.neighbors:
            top = np.argpartition(-sim, self.neighbors - 1)[: self.neighbors]
            uniq, sim = uniq[top], sim[top]
        scores = sp.csr_matrix((sim, (np.zeros(len(uniq), dtype=np.int64), uniq)),
                               shape=(1, self.sessions_.shape[0])) @ self.sessions_
        scores = scores.tocsr()
        items, vals = scores.indices, scores.data
        seen = np.isin(items, cur)
        return top_k(items[~seen], vals[~seen], k)
