"""PureSVD (Cremonesi et al., 2010): a latent-factor model for implicit feedback from scikit-learn's
TruncatedSVD of the user-item matrix. A user's scores are their row projected onto the item
factors and back: x V' V, so a fresh history counts at once, without refitting."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.decomposition import TruncatedSVD

from recops.models.base import NONE, Recommender, SideTable, top_k
from recops.models.itemknn import ItemKNN
from recops.models.matrix import interactions


class PureSVD(ItemKNN):
    name = "svd"

    def __init__(self, factors: int = 64, half_life_days: float = 1e9, weights: dict[str, float] | None = None,
                 history_weight: float = 5.0, binary: bool = True, random_state: int = 0):
        super().__init__(half_life_days=half_life_days, weights=weights, history_weight=history_weight)
        self.factors = factors
        self.binary = binary
        self.random_state = random_state

    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> PureSVD:
        """TruncatedSVD item factors (``factors``, at most min(users, items) - 1) of the user-item matrix,
        0/1 if ``binary``. ``items``, ``users``: unused.

        See Recommender.fit.
        """
        self.data_ = interactions(events, self.weights, self.half_life_days)
        x = self.data_.matrix
        if self.binary:
            x = x.copy()
            x.data[:] = 1.0
            self.data_.matrix = x
        f = max(1, min(self.factors, min(x.shape) - 1))
        svd = TruncatedSVD(n_components=f, random_state=self.random_state, algorithm="randomized", n_iter=7)
        svd.fit(x)
        self.factors_ = svd.components_.astype(np.float32)  # f x items
        self.item_ids_ = self.data_.items.to_numpy(dtype=object)
        self._index()
        return self

    # one user at a time: a batched float32 product rounds differently from the one-user one
    score_indices_many = Recommender.score_indices_many

    def score_indices(self, history: list[str], k: int, user_id: str | None = None,
                      as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The user's items (as ItemKNN weighs them) projected onto the item factors and back; they are not
        left out. Ignores ``as_of``: the factors and the user's row are as of fit.

        See Recommender.score_indices.
        """
        cols, w = self._user_weights(history, user_id)
        if not len(cols):
            return NONE
        z = self.factors_[:, cols] @ w.astype(np.float32)  # the user in factor space
        s = z @ self.factors_
        return top_k(np.arange(len(s)), s.astype(float), k)
