import math

import numpy as np
import pandas as pd
import pytest

from recops.features import USER_FEATURES
from recops.generate import generate
from recops.profile import EMPTY_FEATURES, PROFILE_FEATURES, Catalog, profile_features, user_profile

T = pd.Timestamp("2026-10-10 12:00", tz="UTC")  # a Saturday
ITEMS = pd.DataFrame({
    "item_id": ["a", "b", "c", "t"],
    "category": ["books", "books", "books", "toys"],
    "price": [10.0, 20.0, 30.0, 5.0],
})


def _ev(rows) -> pd.DataFrame:
    """Rows of (user, item, type, timestamp[, session]); missing sessions are left null."""
    rows = [r if len(r) == 5 else (*r, None) for r in rows]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "session_id"])


def _one(rows, items=ITEMS, as_of=T) -> pd.Series:
    return profile_features(_ev(rows), items, as_of).set_index("user_id").iloc[0]


@pytest.fixture(scope="module")
def data():
    d = generate(n_events=20_000, end="2026-11-01", seed=3)
    ev = d.events.copy()
    ev.loc[ev.index % 3 == 0, "session_id"] = None  # exercise the user-day session fallback too
    return d, ev


def test_the_profile_and_user_features_give_twenty_plus_features():
    assert len(PROFILE_FEATURES) >= 20 and not set(PROFILE_FEATURES) & set(USER_FEATURES)


def test_online_profile_equals_the_offline_row(data):
    d, ev = data
    as_of = pd.Timestamp("2026-10-20", tz="UTC")  # later events exist and must not count
    table = profile_features(ev, d.items, as_of).set_index("user_id")
    assert table.index.is_unique and set(table.index) == set(ev.loc[ev.timestamp <= as_of, "user_id"])
    counts = ev.loc[ev.timestamp <= as_of, "user_id"].value_counts()
    picks = [counts.index[0], counts.index[len(counts) // 2], counts.index[-1], *counts.sample(5, random_state=1).index]
    users = d.users.set_index("user_id")
    catalog = Catalog.of(d.items)
    for uid in picks:
        prof = user_profile(ev[ev.user_id == uid], catalog, {"user_id": uid, **users.loc[uid].to_dict()}, as_of)
        assert prof["user_id"] == uid and prof["static"]["region"] == users.loc[uid, "region"]
        for name, value in prof["features"].items():
            assert math.isclose(value, table.loc[uid, name], rel_tol=1e-9, abs_tol=1e-12), (uid, name)
        shares = [c["share"] for c in prof["preferences"]["top_categories"]]
        assert shares == sorted(shares, reverse=True) and sum(shares) <= 1.0 + 1e-9


def test_values_are_bounded(data):
    d, ev = data
    f = profile_features(ev, d.items, "2026-11-01")
    for name in PROFILE_FEATURES:
        if any(w in name for w in ("_to_", "rate", "share", "score", "entropy", "exploration", "sensitivity")):
            assert f[name].between(0, 1).all(), name
    assert f.p_peak_hour.between(0, 23).all() and f.p_peak_day.between(0, 6).all()
    assert (f.p_active_days_30d <= 30).all() and (f.p_sessions_30d <= f.p_sessions_total).all()


def test_a_user_without_events_gets_the_empty_profile(data):
    d, ev = data
    prof = user_profile(ev.iloc[:0], d.items, None, "2026-11-01", user_id="ghost")
    assert prof["features"] == EMPTY_FEATURES and prof["static"] == {"age": None, "gender": None, "region": None}
    assert prof["preferences"]["top_categories"] == []


def test_peak_hour_and_day_ties_go_to_the_earliest():
    sat, tue = T.normalize(), T.normalize() - pd.Timedelta(days=4)
    at = lambda day, h: ("u", "a", "view", day + pd.Timedelta(hours=h))
    f = _one([at(sat, h) for h in (10, 10, 8, 8, 23)] + [at(tue, 9)], as_of=T + pd.Timedelta(days=1))
    assert f.p_peak_hour == 8 and f.p_peak_day == 5  # hours 8 and 10 tie: 8
    assert f.p_peak_hour_share == 5 / 6  # all but the 23:00 event lie within 8 +-2 h
    assert math.isclose(f.p_weekend_share, 5 / 6)
    g = _one([at(sat, 23), at(tue, 1)], as_of=T + pd.Timedelta(days=1))
    assert (g.p_peak_day, g.p_peak_hour, g.p_peak_hour_share) == (1, 1, 1.0)  # Tue/Sat tie: Tuesday; 23 is 2 h from 1


def test_conversion_rates_and_zero_denominators():
    f = _one([("u", "a", "click", T), ("u", "a", "purchase", T)])
    assert (f.p_view_to_click, f.p_click_to_cart, f.p_cart_to_purchase, f.p_view_to_purchase) == (0.0, 0.0, 0.0, 0.0)
    g = _one([("u", "a", t, T) for t in ["view"] * 4 + ["click"] * 2 + ["add_to_cart", "purchase"]])
    assert (g.p_view_to_click, g.p_click_to_cart, g.p_cart_to_purchase, g.p_view_to_purchase) == (0.5, 0.5, 1.0, 0.25)
    h = _one([("u", "a", "view", T)] + [("u", "a", "click", T)] * 3)
    assert h.p_view_to_click == 1.0  # bounded even when clicks outnumber views


def test_cart_abandonment_counts_distinct_items():
    f = _one([("u", "a", "add_to_cart", T), ("u", "a", "add_to_cart", T), ("u", "a", "purchase", T),
              ("u", "b", "add_to_cart", T)])
    assert f.p_cart_abandonment_rate == 0.5


def test_category_entropy():
    assert _one([("u", "a", "view", T), ("u", "b", "view", T)]).p_category_entropy == 0.0
    two = _one([("u", "a", "view", T), ("u", "t", "view", T)]).p_category_entropy
    assert math.isclose(two, 1.0)  # uniform over the catalog's two categories


def test_price_sensitivity_direction():
    buy = lambda item: ("u", item, "purchase", T)
    cheap, median, dear = (_one([buy(i)]).p_price_sensitivity for i in ("a", "b", "c"))
    assert cheap > 0.5 and math.isclose(median, 0.5) and dear < 0.5
    assert math.isclose(cheap, 1 / (1 + 10 / 20))
    assert _one([("u", "a", "view", T)]).p_price_sensitivity == 0.5  # views alone reveal no willingness to pay
    assert _one([("u", "zz", "purchase", T)]).p_price_sensitivity == 0.5  # unknown price: neutral


def test_window_recency_exploration_and_future_events():
    f = _one([
        ("u", "a", "view", T - pd.Timedelta(days=40), "s1"),
        ("u", "a", "view", T - pd.Timedelta(days=1), "s2"),
        ("u", "b", "view", T - pd.Timedelta(days=1, minutes=-6), "s2"),
        ("u", "t", "view", T + pd.Timedelta(hours=1), "s3"),  # after as_of: ignored
    ])
    assert math.isclose(f.p_recency_score, math.exp(-(1 - 6 / 1440) / 7))
    assert f.p_item_exploration_30d == 0.5 and f.p_category_exploration_30d == 0.0
    assert (f.p_sessions_30d, f.p_sessions_total, f.p_active_days_30d, f.p_distinct_items) == (1, 2, 1, 2)
    assert f.p_repeat_item_rate == 0.5 and math.isclose(f.p_avg_session_minutes, 3.0)
    assert f.p_avg_session_events == 1.5 and f.p_avg_price_viewed == np.mean([10.0, 10.0, 20.0])


def test_profile_from_the_event_store_matches(data, tmp_path):
    from recops.schema import normalize_events
    from recops.store import EventStore

    d, ev = data
    uid = ev["user_id"].value_counts().index[1]
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.add_events(normalize_events(ev[ev.user_id == uid]))
    online = user_profile(store.user_events(uid), d.items, {"user_id": uid}, "2026-11-01")["features"]
    offline = profile_features(ev, d.items, "2026-11-01").set_index("user_id").loc[uid]
    assert all(math.isclose(v, offline[k], rel_tol=1e-6, abs_tol=1e-9) for k, v in online.items())
    store.dispose()
