"""Business rules applied after ranking: no repeats, in stock, a per-category cap, a fresh-item boost.

The same function orders every list recops produces (HTTP serving, batch scoring, offline
evaluation), so the rules never differ between what is measured and what is served. Rules come from
the settings at request time: an operator changes them without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recops.vocabulary import DEFAULT_EXCLUDE_TYPES


@dataclass(frozen=True)
class BusinessRules:
    # items the user did one of these to are never recommended again (empty: repeats allowed)
    exclude_event_types: tuple[str, ...] = DEFAULT_EXCLUDE_TYPES
    in_stock_only: bool = True
    # at most this many items of one category in a list (0: no cap)
    max_per_category: int = 0
    # items younger than ``fresh_days`` get ``fresh_boost`` x the spread (std) of the user's scores
    fresh_days: float = 14.0
    fresh_boost: float = 0.0

    @classmethod
    def from_settings(cls, settings) -> BusinessRules:
        """The rules the settings ask for.

        Args:
            settings: a ``recops.config.Settings`` (exclude_event_types, in_stock_only, max_per_category,
                fresh_item_days, fresh_item_boost).

        Returns:
            The rules.
        """
        return cls(exclude_event_types=tuple(settings.exclude_event_types), in_stock_only=settings.in_stock_only,
                   max_per_category=settings.max_per_category, fresh_days=settings.fresh_item_days,
                   fresh_boost=settings.fresh_item_boost)


def apply_rules(scores: np.ndarray, tie_break: np.ndarray, categories: np.ndarray, age_days: np.ndarray,
                k: int, rules: BusinessRules) -> np.ndarray:
    """Positions of the ``k`` items to show, best first.

    Exclusions (bought, out of stock) are removed before scoring; this function boosts, orders and caps.

    Args:
        scores: ranker scores, one per candidate.
        tie_break: lower is better among equal scores (the best rank a generator gave the item).
        categories: each candidate's category (for ``max_per_category``).
        age_days: each candidate's age in the catalog, in days (for the fresh-item boost).
        k: how many items at most.
        rules: the rules.

    Returns:
        Positions in the candidate arrays (int), at most ``k``: fewer when the category cap leaves fewer.
    """
    s = np.asarray(scores, dtype=float)
    if rules.fresh_boost and len(s) > 1:
        fresh = np.asarray(age_days, dtype=float) < rules.fresh_days
        s = s + fresh * rules.fresh_boost * (s.std() or 1.0)
    order = np.lexsort((tie_break, -s))
    cap = rules.max_per_category
    if cap <= 0:
        return order[:k]
    picked, per_cat = [], {}
    for o in order:
        c = categories[o]
        if per_cat.get(c, 0) >= cap:
            continue
        per_cat[c] = per_cat.get(c, 0) + 1
        picked.append(o)
        if len(picked) == k:
            break
    return np.asarray(picked, dtype=np.int64)
