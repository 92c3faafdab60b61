"""One recommendation request: everything the served model needs to decide one list.

The serving layer builds it in one place (``recops.serving.requests``): ``/recommend``,
``/session/recommend`` and batch scoring differ only in how they fill it. The model alone decides
the order from it (``RecopsModel.recommend``): candidates, ranking, the live-session lift, the
intent's tilt, the business rules and the reasons.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recops.models.rules import BusinessRules


@dataclass(frozen=True)
class RecommendRequest:
    """Who is asking, what they just did, what must not be shown, and the caller's options."""

    k: int  # how many items the caller wants
    user_id: str | None = None  # None: an anonymous session
    history: tuple[str, ...] = ()  # recent distinct items, newest first (at most HISTORY_LEN)
    session_items: tuple[str, ...] = ()  # the live session, newest first: what usually follows is lifted
    # never shown: the caller's list, what the user did an excluding event to, items out of stock now
    exclude: frozenset[str] = frozenset()
    features: Mapping[str, Any] | None = None  # the ranker's user features, request-time ones derived (None: unknown)
    intent: str | None = None  # the visit's intent (recops.models.intent): tilts the scores, picks rules
    category_shares: Mapping[str, float] = field(default_factory=dict)  # category -> share of the session's events
    now: float = field(default_factory=time.time)  # the request time, epoch seconds
    # how the list is ordered: category cap, fresh-item boost (exclusions are resolved into ``exclude``)
    rules: BusinessRules = field(default_factory=BusinessRules)
    strategy: str = "personalized"  # how the request was built: personalized, or session (a visit's intent)
    # the caller's blend (generator name or "next_item" -> weight >= 0): ranks instead of the learned ranker
    weights: Mapping[str, float] | None = None
