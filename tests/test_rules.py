"""Business rules after ranking: category cap, fresh boost, configurable exclusions, live stock."""

import numpy as np
import pandas as pd
import pytest

from recops.config import load_settings
from recops.models.covisit import CoVisitation
from recops.models.popularity import Popularity
from recops.models.recommender import ItemTable, RecopsModel
from recops.models.request import RecommendRequest
from recops.models.rules import BusinessRules, apply_rules
from recops.schema import normalize_events


def test_category_cap_keeps_score_order_within_the_cap():
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    cats = np.array(["a", "a", "a", "b", "a", "c"], dtype=object)
    age = np.full(6, 100.0)
    ties = np.zeros(6)
    assert list(apply_rules(scores, ties, cats, age, 4, BusinessRules())) == [0, 1, 2, 3]
    assert list(apply_rules(scores, ties, cats, age, 4, BusinessRules(max_per_category=2))) == [0, 1, 3, 5]
    # fewer candidates than k under the cap: a shorter list, never a category over the cap
    assert list(apply_rules(scores, ties, cats, age, 10, BusinessRules(max_per_category=1))) == [0, 3, 5]


def test_fresh_boost_lifts_young_items_and_ties_break_by_generator_rank():
    scores = np.array([3.0, 2.9, 1.0, 1.0])
    age = np.array([300.0, 2.0, 300.0, 300.0])
    cats = np.array(["x"] * 4, dtype=object)
    assert list(apply_rules(scores, np.array([1, 2, 5, 3]), cats, age, 4, BusinessRules())) == [0, 1, 3, 2]
    boosted = apply_rules(scores, np.array([1, 2, 5, 3]), cats, age, 4, BusinessRules(fresh_boost=0.5, fresh_days=7))
    assert list(boosted) == [1, 0, 3, 2]


def _model():
    t = pd.Timestamp("2026-10-10", tz="UTC")
    rows = [(f"u{n}", f"s{n}", it, "view", t + pd.Timedelta(seconds=k)) for n in range(20)
            for k, it in enumerate(["a1", "a2", "a3", "b1", "b2", "c1"][: 2 + n % 5])]
    ev = normalize_events(pd.DataFrame(rows, columns=["user_id", "session_id", "item_id", "event_type", "timestamp"]))
    items = pd.DataFrame({"item_id": ["a1", "a2", "a3", "b1", "b2", "c1"], "category": list("aaabbc"),
                          "price": [1.0] * 6, "in_stock": [True, True, True, True, False, True]})
    gens = {"popularity": Popularity().fit(ev), "covisit": CoVisitation().fit(ev)}
    return RecopsModel(gens, None, ItemTable.build(pd.DataFrame({"item_id": items["item_id"]}), items))


def test_model_applies_the_rules_and_exclusions_of_the_request():
    m = _model()
    ids = lambda recs: [r.item_id for r in recs]
    ask = lambda **kw: ids(m.recommend(RecommendRequest(k=6, user_id="u", history=("a1",), **kw)))
    plain = ask()
    assert "b2" in plain and "a2" in plain
    assert "b2" not in ask(exclude=m.items.out_of_stock()) and "a2" not in ask(exclude=frozenset({"a2"}))
    capped = ask(rules=BusinessRules(max_per_category=1))
    cats = [m.items.category[m.items.index[i]] for i in capped]
    assert len(cats) == len(set(cats)) and len(capped) == 3


def test_exclusions_and_rules_come_from_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("RECOPS_EXCLUDE_EVENT_TYPES", "[purchase, add_to_cart]")
    monkeypatch.setenv("RECOPS_MAX_PER_CATEGORY", "3")
    monkeypatch.setenv("RECOPS_IN_STOCK_ONLY", "false")
    s = load_settings(home=tmp_path)
    r = BusinessRules.from_settings(s)
    assert r.exclude_event_types == ("purchase", "add_to_cart") and r.max_per_category == 3 and not r.in_stock_only
    # the settings survive the trip to a child process (the server) through the environment
    env = s.to_env()
    for k in [k for k in list(__import__("os").environ) if k.startswith("RECOPS_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert BusinessRules.from_settings(load_settings()) == r
    monkeypatch.setenv("RECOPS_EXCLUDE_EVENT_TYPES", "[purchase, teleport]")
    with pytest.raises(ValueError, match="teleport"):
        load_settings(home=tmp_path)
