"""Demographic/region popularity for users with little or no history.

Popularity is counted per segment (age band x gender x region), with back-off to coarser segments
and to global popularity where a segment has too few interactions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recops.models.base import Recommender, SideTable
from recops.ratings import event_scores
from recops.vocabulary import DEFAULT_EVENT_WEIGHTS, RATE

AGE_BANDS = [25, 35, 45, 55]


def segment_keys(users: pd.DataFrame) -> pd.DataFrame:
    """Segment keys from finest to coarsest for each user: (age, gender, region), (age, gender), (region,).

    Args:
        users: users with user_id, age, gender and region (any may be missing).

    Returns:
        One row per user, in order: user_id, k3 ("<band>|<gender>|<region>"), k2 ("<band>|<gender>") and
        k1 ("r|<region>"); the band is the age's position among ``AGE_BANDS`` (0-4), missing values "?".
    """
    band = np.digitize(pd.to_numeric(users["age"], errors="coerce").fillna(-1), AGE_BANDS).astype(str)
    band = np.where(pd.to_numeric(users["age"], errors="coerce").isna(), "?", band)
    g = users["gender"].fillna("?").astype(str).to_numpy()
    r = users["region"].fillna("?").astype(str).to_numpy()
    return pd.DataFrame({"user_id": users["user_id"].astype(str).to_numpy(),
                         "k3": [f"{a}|{b}|{c}" for a, b, c in zip(band, g, r)],
                         "k2": [f"{a}|{b}" for a, b in zip(band, g)],
                         "k1": [f"r|{c}" for c in r]})


class DemographicPopularity(Recommender):
    name = "demographic"

    def __init__(self, half_life_days: float = 14.0, min_interactions: float = 30.0, top_n: int = 200,
                 weights: dict[str, float] | None = None):
        self.half_life_days = half_life_days
        self.min_interactions = min_interactions
        self.top_n = top_n
        self.weights = weights or dict(DEFAULT_EVENT_WEIGHTS)

    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> DemographicPopularity:
        """Decayed weighted counts per item (a rating counts as one interaction; events without a user_id
        are dropped), overall and per segment of ``users`` with at least ``min_interactions`` of weight,
        each list cut to ``top_n``. Without ``users`` only the global list; ``items`` is not used.

        See Recommender.fit.
        """
        ev = events[events["user_id"].notna()]
        ev = ev.assign(value=np.where(ev["event_type"] == RATE, 1.0, ev["value"]))
        w = np.clip(event_scores(ev, self.weights, self.half_life_days, ev["timestamp"].max()), 0, None)
        scored = pd.DataFrame({"user_id": ev["user_id"].astype(str).to_numpy(), "item_id": ev["item_id"].to_numpy(),
                               "w": w})
        self.global_ = self._top(scored.groupby("item_id")["w"].sum())
        self.tables_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.user_keys_: dict[str, tuple[str, str, str]] = {}
        if users is not None and not users.empty:
            keys = segment_keys(users)
            self.user_keys_ = {u: (a, b, c) for u, a, b, c in zip(keys["user_id"], keys["k3"], keys["k2"], keys["k1"])}
            joined = scored.merge(keys, on="user_id", how="inner")
            for level in ("k3", "k2", "k1"):
                sums = joined.groupby([level, "item_id"])["w"].sum()
                totals = sums.groupby(level=0).sum()
                for key in totals.index[totals >= self.min_interactions]:
                    self.tables_[key] = self._top(sums.loc[key])
        # every item it can propose: what score_indices maps (it serves as a candidate generator too)
        self.item_ids_ = pd.unique(np.concatenate([self.global_[0], *(ids for ids, _ in self.tables_.values())]))
        return self

    def _top(self, s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        s = s.sort_values(ascending=False, kind="stable")[: self.top_n]
        return s.index.to_numpy(dtype=object), s.to_numpy(dtype=float)

    def score_profile(self, profile: dict, k: int) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Top-``k`` for someone known only by their demographics (age, gender, region; any may be
        missing): the finest segment with enough data, and that segment's key (None: global).

        Args:
            profile: any of ``age``, ``gender``, ``region``.
            k: how many items at most.

        Returns:
            (item ids, scores, segment key), best first; the key is None when the global list answered.
        """
        keys = segment_keys(pd.DataFrame([{"user_id": "", **profile}])).iloc[0]
        for key in (keys["k3"], keys["k2"], keys["k1"]):
            if key in self.tables_:
                ids, scores = self.tables_[key]
                return ids[:k], scores[:k], key
        ids, scores = self.global_
        return ids[:k], scores[:k], None

    def score(self, history: list[str], k: int, user_id: str | None = None,
              as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The list of the user's finest segment with enough data, else the global list (also for unknown
        or anonymous users). Ignores ``history`` and ``as_of``.

        See Recommender.score.
        """
        for key in self.user_keys_.get(user_id, ()):
            if key in self.tables_:
                ids, scores = self.tables_[key]
                return ids[:k], scores[:k]
        ids, scores = self.global_
        return ids[:k], scores[:k]
