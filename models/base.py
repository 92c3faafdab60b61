"""The one small interface every recommender implements, so generators are interchangeable.

``fit`` learns from behavioral events (the recops event schema); ``recommend`` answers for one user
given their recent history (which may be fresher than what ``fit`` saw); ``similar_items`` answers
item-to-item. Learned state ends in ``_`` (scikit-learn style); ``save``/``load`` pickle the object.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd


class Recommender(ABC):
    name: str = "base"

    @abstractmethod
    def fit(self, events: pd.DataFrame, items: pd.DataFrame | None = None, users: pd.DataFrame | None = None) -> "Recommender":
        """Learn from events (columns user_id, item_id, event_type, timestamp, session_id, value);
        ``items`` and ``users`` are the catalog and demographics, for generators that use them."""

    def score(self, history: list[str], k: int, user_id: str | None = None, **kw) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (item_ids, scores) for a user with this recent ``history`` (newest first).
        Subclasses implement this or ``score_indices`` (positions in ``item_ids_``, the faster path)."""
        idx, scores = self.score_indices(history, k, user_id=user_id, **kw)
        return self.item_ids_[idx], scores

    def score_indices(self, history: list[str], k: int, user_id: str | None = None, **kw) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` as positions in ``item_ids_``: what the serving path maps to its item table."""
        if type(self).score is Recommender.score:
            raise NotImplementedError(f"{type(self).__name__} implements neither score nor score_indices")
        ids, scores = self.score(history, k, user_id=user_id, **kw)
        return pd.Index(self.item_ids_).get_indexer(ids), scores

    def recommend(self, user_id: str | None, k: int = 10, history: list[str] | None = None,
                  exclude: set[str] | None = None) -> list[tuple[str, float]]:
        exclude = exclude or set()
        ids, scores = self.score(history or [], k + len(exclude), user_id=user_id)
        return [(i, float(s)) for i, s in zip(ids, scores) if i not in exclude][:k]

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        ids, scores = self.score([item_id], k + 1)
        return [(i, float(s)) for i, s in zip(ids, scores) if i != item_id][:k]

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def load(cls, path: str | Path) -> "Recommender":
        obj = pickle.loads(Path(path).read_bytes())
        if not isinstance(obj, cls):
            raise TypeError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj


NONE = (np.zeros(0, dtype=np.int64), np.zeros(0))  # "nothing to propose" from score_indices


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best by score (ties broken by position, so results are deterministic)."""
    if len(scores) == 0 or k <= 0:
        return ids[:0], scores[:0]
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        order = part[np.lexsort((part, -scores[part]))]
    else:
        order = np.lexsort((np.arange(len(scores)), -scores))
    return ids[order], scores[order]
