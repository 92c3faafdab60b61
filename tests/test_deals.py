import math
from types import SimpleNamespace

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recops.deals import MAX_PRICE, DealPolicy, demand_percentile, make_deals, price_deal, valid_price

huge = st.sampled_from([10**400, -(10**400), 1e308, -1e308])  # ints past float range too
anything = st.one_of(st.floats(), st.integers(-(10**20), 10**20), huge, st.none(), st.text(max_size=3))
prices = st.one_of(st.floats(), st.floats(0.0, 1e4), st.floats(1e-6, 0.05), st.integers(-5, 10**15), huge)
months = st.one_of(st.integers(-3, 15), st.none(), st.floats(allow_nan=True), st.text(max_size=3))
regions = st.one_of(st.sampled_from(["north", "south", "east"]), st.none(), st.text(max_size=4), st.integers())
factors = st.dictionaries(st.integers(1, 12), st.floats(0.01, 10.0), max_size=4)
region_factors = st.dictionaries(st.sampled_from(["north", "south", "east"]), st.floats(0.01, 10.0), max_size=3)


@st.composite
def policies(draw):
    hi = draw(st.floats(0.0, 0.9))
    return DealPolicy(max_discount=hi, min_discount=draw(st.floats(0.0, hi)), floor_ratio=draw(st.floats(0.0, 1.0)),
                      ttl_hours=draw(st.floats(0.1, 1000.0)), season_boost=draw(factors),
                      region_factor=draw(region_factors))


def _check(result, price, policy):
    if valid_price(price) is None:
        assert result is None
        return
    discount, deal = result
    p = float(price)
    assert 0.0 <= discount <= policy.max_discount
    assert policy.floor_price(p) <= deal <= p
    assert math.isclose(discount, 1 - deal / p, abs_tol=1e-12) or discount == policy.max_discount


@settings(max_examples=250, deadline=None)
@given(prices, anything, anything, months, regions, policies())
def test_caps_hold_for_any_input(price, sensitivity, demand, month, region, policy):
    _check(price_deal(price, sensitivity, demand, month, region, policy), price, policy)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 1e6), st.floats(allow_nan=True), st.floats(allow_nan=True), st.floats(allow_nan=True),
       st.floats(allow_nan=True), months, regions, policies())
def test_monotone_in_sensitivity_and_demand(price, s1, s2, d1, d2, month, region, policy):
    lo_s, hi_s = sorted([s1, s2], key=lambda x: (math.isnan(x), x))
    lo_d, hi_d = sorted([d1, d2], key=lambda x: (math.isnan(x), x))
    if not (math.isnan(hi_s) or math.isnan(hi_d)):  # NaN is neutral, not ordered
        args = {"price": price, "month": month, "region": region, "policy": policy}
        more_sensitive = price_deal(price_sensitivity=hi_s, demand=lo_d, **args)[0]
        assert price_deal(price_sensitivity=lo_s, demand=lo_d, **args)[0] <= more_sensitive
        assert price_deal(price_sensitivity=hi_s, demand=hi_d, **args)[0] <= more_sensitive  # lower demand, more off


def test_deal_prices_are_whole_cents_and_direction_is_sensible():
    for price in (19.99, 0.07, 1234.5, 3.0):
        _discount, deal = price_deal(price, 0.5, 0.5, 3, None)
        assert abs(deal * 100 - round(deal * 100)) < 1e-6 and deal >= 0.6 * price
    keen, indifferent = price_deal(100.0, 1.0, 0.5, 3, None)[0], price_deal(100.0, 0.0, 0.5, 3, None)[0]
    assert keen > indifferent
    assert price_deal(100.0, 0.5, 0.0, 3, None)[0] > price_deal(100.0, 0.5, 1.0, 3, None)[0]
    assert price_deal(100.0, 1.0, 0.0, 11, None, DealPolicy(max_discount=0.9, floor_ratio=0.6))[1] == 60.0  # the floor
    assert price_deal(float("nan"), 1, 1, 1, None) is None and price_deal(-3, 1, 1, 1, None) is None
    assert price_deal(MAX_PRICE * 10, 1, 1, 1, None) is None


@pytest.mark.parametrize("kwargs", [
    {"max_discount": 0.95}, {"max_discount": -0.1}, {"min_discount": 0.6, "max_discount": 0.5},
    {"min_discount": -0.01}, {"floor_ratio": 1.5}, {"floor_ratio": -0.1}, {"ttl_hours": 0},
    {"max_discount": float("nan")}, {"season_boost": {13: 1.2}}, {"season_boost": {1: 0.0}},
    {"region_factor": {"north": float("inf")}},
])
def test_policy_rejects_bad_caps(kwargs):
    with pytest.raises(ValueError):
        DealPolicy(**kwargs)


def test_policy_from_settings_works_with_and_without_deal_fields():
    assert DealPolicy.from_settings(SimpleNamespace()) == DealPolicy()
    p = DealPolicy.from_settings(SimpleNamespace(deal_max_discount=0.03, deal_floor_ratio=0.8, deal_ttl_hours=6))
    assert (p.max_discount, p.min_discount, p.floor_ratio, p.ttl_hours) == (0.03, 0.03, 0.8, 6.0)


def test_make_deals_skips_unpriced_items_and_explains():
    info = pd.DataFrame({
        "price": [25.0, 9.99, None, -1.0, 0.004],
        "title": ["Kettle", None, "No price", "Broken", "Tiny"],
        "category": ["kitchen", "books", "toys", "toys", "toys"],
        "demand": [0.1, 0.9, 0.5, 0.5, 0.5],
    }, index=["a", "b", "c", "d", "e"])
    now = pd.Timestamp("2026-03-02 10:00", tz="UTC")
    cands = [("b", 0.4), ("a", 0.9), ("c", 1.0), ("d", 0.8), ("e", 0.7), ("ghost", 2.0)]
    deals = make_deals(cands, info, 0.8, "north", now, k=5)
    assert [d["item_id"] for d in deals] == ["a", "b"]
    a = deals[0]
    assert a["title"] == "Kettle" and a["list_price"] == 25.0 and a["deal_price"] < 25.0
    assert pd.Timestamp(a["expires_at"]) == now + pd.Timedelta(hours=48)
    assert a["reason"].startswith(
        f"{round(a['discount'] * 100)}% off this kitchen item: you often choose lower-priced items")
    assert "fewer shoppers" in a["reason"] and "fewer shoppers" not in deals[1]["reason"]
    assert deals[1]["title"] == "b" and len(make_deals(cands, info, 0.8, "north", now, k=1)) == 1


def test_demand_percentile_ranks_popularity():
    pct = demand_percentile(pd.Series([5.0, 50.0, None, 500.0], index=list("abcd")))
    assert list(pct[["a", "b", "d"]]) == [1 / 3, 2 / 3, 1.0] and math.isnan(pct["c"])
