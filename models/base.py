"""The one small interface every recommender implements, so generators are interchangeable.

``fit`` learns from behavioral events (the recops event schema); ``score``/``score_indices`` propose
items for a recent history (which may be fresher than what ``fit`` saw), now or as of a past time;
``recommend`` answers for one user; ``similar_items`` answers item-to-item. Learned state ends in
``_`` (scikit-learn style); ``save``/``load`` pickle the object.

One optional protocol, ``ExplainsCandidates``: a generator that can name the history item behind
each item it proposed (co-visitation, next-item), which the served model turns into a reason.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

SideTable = pd.DataFrame | None  # the catalog or the users' demographics, for generators that use them


class Recommender(ABC):
    name: str = "base"

    @abstractmethod
    def fit(self, events: pd.DataFrame, items: SideTable = None, users: SideTable = None) -> Recommender:
        """Learn from events.

        Args:
            events: the recops event schema (user_id, item_id, event_type, timestamp, session_id, value).
            items: the catalog, for generators that use it (content).
            users: demographics, for generators that use them (demographic).

        Returns:
            self, fitted.
        """

    def score(self, history: list[str], k: int, user_id: str | None = None,
              as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for a user with this recent history. Subclasses implement this or
        ``score_indices`` (positions in ``item_ids_``, the faster path).

        Args:
            history: the user's recent distinct items, newest first.
            k: how many items at most.
            user_id: the user, for generators that learned something per user (None: anonymous).
            as_of: answer as of this past time (offline evaluation at a user's cut); None: now.
                Generators without a notion of time answer the same either way.

        Returns:
            (item ids, scores), best first.
        """
        idx, scores = self.score_indices(history, k, user_id=user_id, as_of=as_of)
        return self.item_ids_[idx], scores

    def score_indices(self, history: list[str], k: int, user_id: str | None = None,
                      as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``score`` as positions in ``item_ids_``: what the serving path maps to its item table.

        Args:
            history: the user's recent distinct items, newest first.
            k: how many items at most.
            user_id: the user (None: anonymous).
            as_of: answer as of this past time; None: now.

        Returns:
            (positions in ``item_ids_``, scores), best first.
        """
        if type(self).score is Recommender.score:
            raise NotImplementedError(f"{type(self).__name__} implements neither score nor score_indices")
        ids, scores = self.score(history, k, user_id=user_id, as_of=as_of)
        return pd.Index(self.item_ids_).get_indexer(ids), scores

    def score_indices_many(self, histories: Sequence[list[str]], k: int, user_ids: Sequence[str | None],
                           as_ofs: Sequence[pd.Timestamp | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``score_indices`` for many users at once (batch work: training's labelled rows, evaluation),
        with the same answers. Generators whose scoring vectorizes over users override it.

        Args:
            histories: each user's recent distinct items, newest first.
            k: how many items at most per user.
            user_ids: the users (None: anonymous), as ``histories``.
            as_ofs: each user's as-of time (None: now), as ``histories``.

        Returns:
            One ``score_indices`` answer per user, in order.
        """
        return [self.score_indices(h, k, user_id=u, as_of=t) for h, u, t in zip(histories, user_ids, as_ofs)]

    def recommend(self, user_id: str | None, k: int = 10, history: list[str] | None = None,
                  exclude: set[str] | None = None) -> list[tuple[str, float]]:
        """Top-``k`` for one user, now.

        Args:
            user_id: the user (None: anonymous).
            k: how many items.
            history: the user's recent distinct items, newest first.
            exclude: items never to return.

        Returns:
            (item id, score) pairs, best first.
        """
        exclude = exclude or set()
        ids, scores = self.score(history or [], k + len(exclude), user_id=user_id)
        return [(i, float(s)) for i, s in zip(ids, scores) if i not in exclude][:k]

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` items most like ``item_id`` (what this generator proposes after it alone).

        Args:
            item_id: the item.
            k: how many items.

        Returns:
            (item id, score) pairs, best first, without ``item_id`` itself.
        """
        ids, scores = self.score([item_id], k + 1)
        return [(i, float(s)) for i, s in zip(ids, scores) if i != item_id][:k]

    def save(self, path: str | Path) -> None:
        """Pickle the fitted generator.

        Args:
            path: the file to write.
        """
        Path(path).write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """A generator saved by ``save`` (see ``load_pickled``)."""
        return load_pickled(path, cls)


def load_pickled(path: str | Path, kind: type):
    """An object pickled to ``path`` by a ``save`` method.

    Args:
        path: the file.
        kind: the class the object must be an instance of.

    Returns:
        The object.

    Raises:
        TypeError: the file holds something else.
    """
    obj = pickle.loads(Path(path).read_bytes())
    if not isinstance(obj, kind):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a {kind.__name__}")
    return obj


@runtime_checkable
class ExplainsCandidates(Protocol):
    """Optional: a generator that can say which history item led it to each item it proposed."""

    def strongest_source(self, history: Sequence[str], items: Sequence[str]) -> dict[str, str]:
        """For each of ``items`` this generator can explain, the history item that contributes most.

        Args:
            history: the user's or session's recent items, newest first.
            items: items this generator proposed.

        Returns:
            item -> the history item behind it; items nothing in the history leads to are left out.
        """
        ...


NONE = (np.zeros(0, dtype=np.int64), np.zeros(0))  # "nothing to propose" from score_indices


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best by score (ties broken by position, so results are deterministic).

    Args:
        ids: candidate ids (or positions).
        scores: their scores.
        k: how many.

    Returns:
        (ids, scores) of the best ``k``, best first.
    """
    if len(scores) == 0 or k <= 0:
        return ids[:0], scores[:0]
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        order = part[np.lexsort((part, -scores[part]))]
    else:
        order = np.lexsort((np.arange(len(scores)), -scores))
    return ids[order], scores[order]
