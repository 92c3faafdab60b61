"""Trending/popularity: per-event-type weights with exponential time decay."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recops.models.base import NONE, Recommender, SideTable, top_k
from recops.ratings import event_scores
from recops.vocabulary import DEFAULT_EVENT_WEIGHTS, POPULARITY_HALF_LIFE_DAYS, RATE


class Popularity(Recommender):
    """Items by decayed weighted interaction count. A short half-life makes it "trending"."""

    name = "popularity"

    def __init__(self, half_life_days: float = POPULARITY_HALF_LIFE_DAYS, weights: dict[str, float] | None = None):
        self.half_life_days = half_life_days
        self.weights = weights or dict(DEFAULT_EVENT_WEIGHTS)

    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> Popularity:
        """Decayed weighted event counts per item as of the newest event (a rating counts as one
        interaction), plus the end-of-day scores behind ``as_of``. ``items``, ``users``: unused.

        See Recommender.fit.
        """
        as_of = events["timestamp"].max()
        # an explicit rating counts as one interaction, whatever its value
        ev = events.assign(value=np.where(events["event_type"] == RATE, 1.0, events["value"]))
        w = event_scores(ev, self.weights, self.half_life_days, as_of)
        s = pd.Series(np.clip(w, 0, None), index=events["item_id"].to_numpy()).groupby(level=0).sum()
        s = s.sort_values(ascending=False, kind="stable")
        self.item_ids_ = s.index.to_numpy(dtype=object)
        self.scores_ = s.to_numpy(dtype=float)
        self.as_of_ = as_of
        self._fit_history(ev)
        return self

    def _fit_history(self, ev: pd.DataFrame, max_cells: int = 20_000_000) -> None:
        """Decayed scores as of the end of every day of the data (days x items), so that an
        offline evaluation can ask what was popular at each user's own cut (``as_of``); serving
        always asks for now, which is ``scores_``. Skipped for very large day x item grids."""
        self.days_, self.daily_ = None, None
        day = (ev["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(days=1)
        days = np.unique(day.to_numpy())
        if len(days) * len(self.item_ids_) > max_cells or len(days) < 2:
            return
        raw = np.clip(event_scores(ev, self.weights, 1e12, self.as_of_), 0, None)  # undecayed weights
        col = pd.Index(self.item_ids_).get_indexer(ev["item_id"])
        row = np.searchsorted(days, day.to_numpy())
        counts = np.zeros((len(days), len(self.item_ids_)), dtype=np.float32)
        np.add.at(counts, (row, col), raw)
        gaps = np.diff(days, prepend=days[0])
        for d in range(1, len(days)):  # S_d = S_{d-1} * 0.5^(gap / half-life) + counts_d
            counts[d] += counts[d - 1] * np.float32(0.5 ** (gaps[d] / self.half_life_days))
        self.days_, self.daily_ = days, counts

    def score_indices(self, history: list[str], k: int, user_id: str | None = None,
                      as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` now, or (``as_of``) as of the last full day before that time (nothing when no day of
        the data ended before it; now when ``as_of`` is after fit or the daily scores were skipped).
        Ignores ``history`` and ``user_id``.

        See Recommender.score_indices.
        """
        daily = getattr(self, "daily_", None)
        if as_of is None or daily is None or pd.Timestamp(as_of) > self.as_of_:
            n = min(k, len(self.scores_))
            return np.arange(n), self.scores_[:n]
        d = np.searchsorted(self.days_, (pd.Timestamp(as_of) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(days=1)) - 1
        if d < 0:
            return NONE
        row = daily[d].astype(float)
        ids, scores = top_k(np.arange(len(row)), row, k)
        keep = scores > 0
        return ids[keep], scores[keep]

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The most popular items other than ``item_id``: popularity has no notion of similarity, so the
        honest answer is "what is popular".

        See Recommender.similar_items.
        """
        return [(i, float(s)) for i, s in zip(self.item_ids_[: k + 1], self.scores_[: k + 1]) if i != item_id][:k]
