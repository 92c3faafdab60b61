"""Implicit ratings: per-event-type weights with exponential time decay, mapped to 0-5."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recops.vocabulary import RATE, RATING_HALF_LIFE_DAYS

# rating = 5 * (1 - exp(-score / SCALE)): one view ~1.4, a cart ~3.7, a purchase ~4.2, saturating at 5.
SCALE = 3.0


def event_weights(events: pd.DataFrame, weights: dict[str, float]) -> np.ndarray:
    """Each event's undecayed weight. ``rate`` events contribute their own value (1-5).

    Args:
        events: events with event_type and value.
        weights: event type -> weight; other types weigh 0.

    Returns:
        One weight per event, in row order; NaN (e.g. a rate without a value) becomes 0.
    """
    w = events["event_type"].map(weights).fillna(0.0).to_numpy(dtype=float)
    is_rate = (events["event_type"] == RATE).to_numpy()
    if is_rate.any():
        w[is_rate] = events["value"].to_numpy(dtype=float)[is_rate]
    return np.nan_to_num(w)


def decay(age_days: np.ndarray, half_life_days: float) -> np.ndarray:
    """Exponential time decay; events from the future (clock skew) count as now.

    Args:
        age_days: each event's age in days (negative: in the future).
        half_life_days: the age at which an event counts half.

    Returns:
        The factors 0.5 ** (age / half-life), at most 1, shaped like ``age_days``.
    """
    return np.power(0.5, np.clip(age_days, 0, None) / half_life_days)


def event_scores(events: pd.DataFrame, weights: dict[str, float], half_life_days: float,
                 as_of: pd.Timestamp) -> np.ndarray:
    """Each event's decayed contribution.

    Args:
        events: events with event_type, value and timestamp (UTC datetimes).
        weights: event type -> weight (see event_weights).
        half_life_days: the decay's half-life.
        as_of: the time ages are measured from.

    Returns:
        weight x decay per event, in row order.
    """
    age_days = (as_of - events["timestamp"]).dt.total_seconds().to_numpy() / 86400.0
    return event_weights(events, weights) * decay(age_days, half_life_days)


def to_rating(score: np.ndarray | float) -> np.ndarray:
    """A summed score as a 0-5 rating: ``5 * (1 - exp(-score / SCALE))``, negative scores 0.

    Args:
        score: summed decayed weights (see event_scores).

    Returns:
        The ratings in [0, 5], shaped like ``score``.
    """
    return 5.0 * (1.0 - np.exp(-np.clip(score, 0.0, None) / SCALE))


def implicit_ratings(
    events: pd.DataFrame, weights: dict[str, float], half_life_days: float = RATING_HALF_LIFE_DAYS,
    as_of: pd.Timestamp | None = None
) -> pd.DataFrame:
    """One row per (user_id, item_id) with ``score`` (summed decayed weights) and ``rating`` in [0, 5].

    Args:
        events: normalized events; those without a user_id are ignored.
        weights: event type -> weight (see event_weights).
        half_life_days: the decay's half-life.
        as_of: the time ages are measured from; None: the newest event with a user_id.

    Returns:
        The columns user_id, item_id, score, rating; no rows when no event has a user_id.
    """
    ev = events[events["user_id"].notna()]
    if ev.empty:
        return pd.DataFrame(columns=["user_id", "item_id", "score", "rating"])
    as_of = as_of if as_of is not None else ev["timestamp"].max()
    scored = ev[["user_id", "item_id"]].assign(score=event_scores(ev, weights, half_life_days, as_of))
    out = scored.groupby(["user_id", "item_id"], as_index=False, sort=False)["score"].sum()
    out["rating"] = to_rating(out["score"].to_numpy())
    return out
