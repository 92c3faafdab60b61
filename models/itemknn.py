"""Item-kNN: cosine similarity between item columns of the user-item matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.config import DEFAULT_EVENT_WEIGHTS
from recops.models.base import Recommender, top_k
from recops.models.matrix import interactions, keep_top_csr


class ItemKNN(Recommender):
    """Scores items by their summed similarity to what the user rated and recently touched."""

    name = "itemknn"

    def __init__(self, neighbors: int = 100, half_life_days: float = 30.0, weights: dict[str, float] | None = None,
                 history_weight: float = 5.0):
        self.neighbors = neighbors
        self.half_life_days = half_life_days
        self.weights = weights or dict(DEFAULT_EVENT_WEIGHTS)
        self.history_weight = history_weight

    def fit(self, events: pd.DataFrame, items: pd.DataFrame | None = None, users: pd.DataFrame | None = None) -> "ItemKNN":
        self.data_ = interactions(events, self.weights, self.half_life_days)
        x = self.data_.matrix.tocsc()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        xn = x @ sp.diags(1.0 / np.maximum(norms, 1e-12))
        sim = (xn.T @ xn).tocsr()
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        self.sim_ = keep_top_csr(sim, self.neighbors)
        self.item_ids_ = self.data_.items.to_numpy(dtype=object)
        return self

    def _user_row(self, history: list[str], user_id: str | None) -> sp.csr_matrix:
        row = self.data_.row(history) * self.history_weight
        u = self.data_.users.get_indexer([user_id])[0] if user_id is not None else -1
        return row + self.data_.matrix[u] if u >= 0 else row

    def score(self, history: list[str], k: int, user_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        row = self._user_row(history, user_id)
        if row.nnz == 0:
            return self.item_ids_[:0], np.zeros(0)
        s = (row @ self.sim_).tocsr()
        ids, scores = top_k(s.indices, s.data, k)
        return self.item_ids_[ids], scores
