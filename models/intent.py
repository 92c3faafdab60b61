"""Session intent: what a visit is for, read off its live state, and how ranking follows it.

- **transactional**: something went into the cart or was bought: show what goes with it
  (co-visitation complements), not more of the same.
- **research**: a narrow look at one category (or at two, with dwell, repeat views or clicks):
  show close alternatives in those categories.
- **browsing**: a quick wander: show a diverse list (at most two items per category).

The ranker scores candidates from the session's own behavioral features (event mix, cart activity,
category affinity: the signals intent is read from); the intent then tilts those scores by at most
one spread of the list and picks the business rules, and the reasons say why.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from recops.models.rules import BusinessRules
from recops.vocabulary import CART, CLICK, PURCHASE, VIEW

INTENTS = ("browsing", "research", "transactional")
RESEARCH_DWELL_SECONDS = 30.0
RESEARCH_FOCUS = 0.6  # share of the session's events in its top category
RESEARCH_FOCUS_ENGAGED = 0.4  # ... enough when the visitor also dwells, re-views or clicks


@dataclass(frozen=True)
class Intent:
    name: str
    signals: dict
    why: str


def _loads(raw) -> dict:
    try:
        v = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def infer_intent(state: dict | None) -> Intent:
    """The intent of a session from its state (``recops.features.SESSION_FEATURES``).

    Args:
        state: the session's state (``s_event_mix`` and ``s_categories`` as JSON strings); None or
            empty: a new visit.

    Returns:
        The intent: its name (one of ``INTENTS``), the signals it was read from (events, items, carts,
        purchases, dwell_seconds, category_focus, click_rate; empty for a new visit) and why, in words.
    """
    if not state:
        return Intent("browsing", {}, "a new visit")
    mix, cats = _loads(state.get("s_event_mix")), _loads(state.get("s_categories"))
    n = int(state.get("s_n_events") or 0)
    n_items = int(state.get("s_n_items") or 0)
    dwell = float(state.get("s_dwell_seconds") or 0.0)
    carts, buys = int(mix.get(CART, 0)), int(mix.get(PURCHASE, 0))
    views, clicks = int(mix.get(VIEW, 0)), int(mix.get(CLICK, 0))
    focus = max(cats.values()) / max(sum(cats.values()), 1) if cats else 0.0
    signals = {"events": n, "items": n_items, "carts": carts, "purchases": buys, "dwell_seconds": round(dwell, 1),
               "category_focus": round(focus, 3), "click_rate": round(clicks / max(views, 1), 3)}
    if carts or buys:
        bought = f", {buys} bought" if buys else ""
        return Intent("transactional", signals, f"{carts} item(s) added to the cart{bought}")
    engaged = dwell >= RESEARCH_DWELL_SECONDS or n > n_items or clicks >= max(1, views // 2)
    if n >= 3 and (focus >= RESEARCH_FOCUS or (engaged and focus >= RESEARCH_FOCUS_ENGAGED)):
        top = max(cats, key=cats.get)
        return Intent("research", signals, f"comparing items in {top}")
    return Intent("browsing", signals, f"{len(cats)} categories looked at, no cart activity")


def intent_rules(intent: str | None, rules: BusinessRules) -> BusinessRules:
    """Browsing gets a diverse list: at most two items per category (unless a stricter cap is set).

    Args:
        intent: the session's intent name (None: unknown).
        rules: the request's rules.

    Returns:
        ``rules`` with ``max_per_category`` 2 for browsing; otherwise ``rules`` itself.
    """
    if intent == "browsing" and not 0 < rules.max_per_category <= 2:
        return dataclasses.replace(rules, max_per_category=2)
    return rules


def list_span(scores: np.ndarray, k: int | None) -> float:
    """The span of the shown part of a list: the best score minus the ``k``-th best (the std of the
    scores when ``k`` is None or the list no longer than it; 1 when that is 0). A lift by it takes a
    candidate just outside the list to its top, whatever the scorer's scale.

    Args:
        scores: the candidates' scores.
        k: the list's length.

    Returns:
        The span, > 0.
    """
    if k is not None and 0 < k < len(scores):
        span = float(scores.max() - np.partition(scores, len(scores) - k)[len(scores) - k])
    else:
        span = float(scores.std()) if len(scores) else 0.0
    return span or 1.0


def intent_scores(intent: str | None, scores: np.ndarray, complements: np.ndarray,
                  category_share: np.ndarray, k: int | None = None) -> np.ndarray:
    """Tilt one list's scores toward what the intent wants, by at most the span of the shown list
    (the best score minus the ``k``-th best: a fully matching candidate just outside the list
    reaches its top): complements (proposed by co-visitation) for transactional sessions, items of
    the session's own categories (``category_share``: the category's share of the session's events)
    for research. The span follows the ranker's scale, whatever its spread over the long tail.

    Args:
        intent: the session's intent name (None: no tilt).
        scores: the ranker's scores of the list's candidates.
        complements: per candidate, whether it is a complement (bool).
        category_share: per candidate, its category's share of the session's events, in [0, 1].
        k: the list's length; None or no more candidates than ``k``: the scores' std is the span.

    Returns:
        The tilted scores, shaped like ``scores`` (a span of 0 counts as 1); ``scores`` itself for
        browsing or no intent.
    """
    if intent not in ("transactional", "research"):
        return scores
    spread = list_span(scores, k)
    if intent == "transactional":
        return scores + spread * complements.astype(float)
    return scores + spread * category_share
