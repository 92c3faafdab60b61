"""Session intent from the live state, and how it steers ranking (pure functions)."""

import json

import numpy as np

from recops.models.intent import infer_intent, intent_rules, intent_scores
from recops.models.rules import BusinessRules


def state(mix: dict, cats: dict, n_items: int, dwell: float = 0.0) -> dict:
    return {"s_event_mix": json.dumps(mix), "s_categories": json.dumps(cats), "s_n_events": sum(mix.values()),
            "s_n_items": n_items, "s_dwell_seconds": dwell}


def test_intent_is_read_from_cart_activity_focus_and_engagement():
    assert infer_intent(None).name == "browsing"
    assert infer_intent(state({"view": 5, "add_to_cart": 1}, {"a": 3, "b": 3}, 6)).name == "transactional"
    assert infer_intent(state({"view": 4}, {"a": 4}, 4)).name == "research"  # one category
    # two categories: research only with engagement (dwell), else browsing
    two = {"a": 2, "b": 2}
    assert infer_intent(state({"view": 4}, two, 4, dwell=45.0)).name == "research"
    assert infer_intent(state({"view": 4}, two, 4, dwell=5.0)).name == "browsing"
    spread = infer_intent(state({"view": 4}, {"a": 1, "b": 1, "c": 1, "d": 1}, 4, dwell=60.0))
    assert spread.name == "browsing" and spread.signals["category_focus"] == 0.25
    assert infer_intent(state({"view": 2}, {"a": 2}, 2)).name == "browsing"  # too short to say


def test_intent_tilts_scores_by_at_most_the_shown_lists_span_and_browsing_diversifies():
    scores = np.array([3.0, 2.0, 1.0, 0.0, -50.0])  # a long tail far below does not change the span
    comp = np.array([False, False, False, True, False])
    share = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
    span = 3.0 - 1.0  # the best minus the 3rd best, for a list of 3
    assert np.allclose(intent_scores("transactional", scores, comp, share, k=3) - scores, span * comp)
    tilted = intent_scores("research", scores, comp, share, k=3)
    assert np.allclose(tilted - scores, span * share) and tilted[2] == tilted.max()  # the last shown reaches the top
    assert np.allclose(intent_scores("research", scores, comp, share) - scores, scores.std() * share)  # no k: std
    assert np.array_equal(intent_scores("browsing", scores, comp, share, k=3), scores)
    assert intent_rules("browsing", BusinessRules()).max_per_category == 2
    assert intent_rules("browsing", BusinessRules(max_per_category=1)).max_per_category == 1  # a stricter cap stays
    assert intent_rules("research", BusinessRules()).max_per_category == 0
