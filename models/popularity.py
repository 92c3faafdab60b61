"""Trending/popularity: per-event-type weights with exponential time decay."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recops.models.base import Recommender, top_k
from recops.config import DEFAULT_EVENT_WEIGHTS
from recops.ratings import event_scores


class Popularity(Recommender):
    """Items by decayed weighted interaction count. A short half-life makes it "trending"."""

    name = "popularity"

    def __init__(self, half_life_days: float = 7.0, weights: dict[str, float] | None = None, segment_column: str | None = None):
        self.half_life_days = half_life_days
        self.weights = weights or dict(DEFAULT_EVENT_WEIGHTS)
        self.segment_column = segment_column

    def fit(self, events: pd.DataFrame, items: pd.DataFrame | None = None, users: pd.DataFrame | None = None) -> "Popularity":
        as_of = events["timestamp"].max()
        # an explicit rating counts as one interaction, whatever its value
        ev = events.assign(value=np.where(events["event_type"] == "rate", 1.0, events["value"]))
        w = event_scores(ev, self.weights, self.half_life_days, as_of)
        s = pd.Series(np.clip(w, 0, None), index=events["item_id"].to_numpy()).groupby(level=0).sum()
        s = s.sort_values(ascending=False, kind="stable")
        self.item_ids_ = s.index.to_numpy(dtype=object)
        self.scores_ = s.to_numpy(dtype=float)
        self.as_of_ = as_of
        return self

    def score(self, history: list[str], k: int, user_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.item_ids_[:k], self.scores_[:k]

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        # popularity has no notion of similarity: the honest answer is "what is popular"
        return [(i, float(s)) for i, s in zip(self.item_ids_[: k + 1], self.scores_[: k + 1]) if i != item_id][:k]
