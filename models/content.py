"""Content similarity: TF-IDF on item category, title and description."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from recops.models.base import Recommender, SideTable, top_k


class ContentSimilarity(Recommender):
    """Scores items by cosine similarity to the (recency-weighted) text profile of the history."""

    name = "content"

    def __init__(self, max_features: int = 20_000, min_df: int = 1):
        self.max_features = max_features
        self.min_df = min_df

    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> ContentSimilarity:
        """L2-normalized TF-IDF vectors of every catalog item's category (counted twice), title and
        description; ``events`` and ``users`` are not used.

        See Recommender.fit.

        Raises:
            ValueError: ``items`` is None or empty.
        """
        if items is None or items.empty:
            raise ValueError("content similarity needs an items table with category/title/description")
        it = items.drop_duplicates("item_id")
        cat = it.get("category", "").fillna("").astype(str)
        text = (cat + " " + cat + " "
                + it.get("title", "").fillna("").astype(str) + " " + it.get("description", "").fillna("").astype(str))
        self.vectorizer_ = TfidfVectorizer(max_features=self.max_features, min_df=self.min_df, sublinear_tf=True)
        self.vectors_ = self.vectorizer_.fit_transform(text).tocsr()  # rows are L2-normalized
        self.item_ids_ = it["item_id"].astype(str).to_numpy(dtype=object)
        self.index_ = pd.Index(self.item_ids_)
        return self

    def score(self, history: list[str], k: int, user_id: str | None = None,
              as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity to the history's profile (its items' vectors weighted 1/(1+position)); the
        history itself and items with no similarity are left out. Ignores ``user_id`` and ``as_of``.

        See Recommender.score.
        """
        pos = self.index_.get_indexer(history)
        ok = pos >= 0
        if not ok.any():
            return self.item_ids_[:0], np.zeros(0)
        w = 1.0 / (1.0 + np.arange(len(history)))[ok]
        profile = self.vectors_[pos[ok]].T @ w
        sims = self.vectors_ @ profile
        sims[pos[ok]] = 0.0  # the history itself is not a recommendation
        nz = np.flatnonzero(sims > 0)
        ids, scores = top_k(nz, sims[nz], k)
        return self.item_ids_[ids], scores
