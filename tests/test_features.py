import json

import numpy as np
import pandas as pd

from recops.features import derive_user, item_features, snapshot_points, user_features
from recops.ratings import implicit_ratings, to_rating
from recops.schema import normalize_events


def _ev(rows):
    return normalize_events(pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp", "value"]))


T = pd.Timestamp("2026-10-10 12:00", tz="UTC")
ITEMS = pd.DataFrame({"item_id": ["a", "b", "c"], "category": ["books", "books", "toys"], "price": [10.0, 20.0, 5.0]})


def test_windows_match_a_direct_count():
    ev = _ev([
        ("u", "a", "view", T - pd.Timedelta(hours=2), None),
        ("u", "b", "view", T - pd.Timedelta(days=3), None),
        ("u", "c", "view", T - pd.Timedelta(days=20), None),
        ("u", "a", "add_to_cart", T - pd.Timedelta(hours=1), 10.0),
        ("u", "a", "purchase", T - pd.Timedelta(minutes=30), 10.0),
        ("u", "b", "purchase", T + pd.Timedelta(hours=1), 20.0),  # after as_of: must not count
    ])
    f = user_features(ev, pd.DataFrame({"user_id": ["u"], "as_of": [T]}), ITEMS).iloc[0]
    assert (f.u_view_1d, f.u_view_7d, f.u_view_30d) == (1, 2, 3)
    assert (f.u_purchase_1d, f.u_add_to_cart_30d, f.u_events_30d) == (1, 1, 5)
    assert f.u_view_to_cart_30d == 1 / 3 and f.u_cart_to_purchase_30d == 1.0
    assert f.u_avg_price_paid == 10.0
    assert f.u_top_category == "books" and abs(f.u_top_category_share - 0.8) < 1e-9
    assert json.loads(f.u_category_affinity) == {"books": 0.8, "toys": 0.2}
    d = derive_user(pd.DataFrame([f]), T.timestamp()).iloc[0]
    assert abs(d.u_recency_hours - 0.5) < 1e-6 and abs(d.u_tenure_days - 20) < 1e-6


def test_unknown_entity_gets_zeros_and_nan_times():
    ev = _ev([("u", "a", "view", T, None)])
    f = user_features(ev, pd.DataFrame({"user_id": ["ghost"], "as_of": [T]}), ITEMS).iloc[0]
    assert f.u_events_30d == 0 and np.isnan(f.u_last_event_ts)


def test_many_points_equal_one_at_a_time(synthetic):
    ev = normalize_events(synthetic.events)
    pts = snapshot_points(ev, "user_id").sample(200, random_state=1)
    many = user_features(ev, pts, synthetic.items).reset_index(drop=True)
    for n in range(0, 200, 40):
        one = user_features(ev, pts.iloc[[n]], synthetic.items).iloc[0]
        pd.testing.assert_series_equal(many.iloc[n], one, check_names=False)


def test_snapshot_points_cover_window_exits():
    ev = _ev([("u", "a", "view", pd.Timestamp("2026-10-01 10:00", tz="UTC"), None),
              ("u", "a", "view", pd.Timestamp("2026-11-20 10:00", tz="UTC"), None)])
    pts = set(snapshot_points(ev, "user_id")["as_of"])
    for day in ("2026-10-02", "2026-10-03", "2026-10-09", "2026-11-01"):
        assert pd.Timestamp(day, tz="UTC") in pts


def test_item_trend_and_conversion():
    ev = _ev([("u1", "a", "view", T - pd.Timedelta(hours=1), None),
              ("u2", "a", "view", T - pd.Timedelta(hours=2), None),
              ("u1", "a", "purchase", T - pd.Timedelta(minutes=5), 10.0),
              ("u3", "b", "view", T - pd.Timedelta(days=5), None)])
    f = item_features(ev, pd.DataFrame({"item_id": ["a", "b"], "as_of": [T, T]})).set_index("item_id")
    assert f.loc["a", "i_conversion_30d"] == 0.5 and f.loc["a", "i_trend"] > f.loc["b", "i_trend"]


def test_implicit_ratings_weights_decay_and_range():
    ev = _ev([("u", "a", "purchase", T, 10.0), ("u", "b", "view", T, None),
              ("u", "c", "view", T - pd.Timedelta(days=60), None)])
    r = implicit_ratings(ev, {"purchase": 5.0, "view": 1.0}, half_life_days=30, as_of=T).set_index("item_id")
    assert r.loc["a", "rating"] > r.loc["b", "rating"] > r.loc["c", "rating"] > 0
    assert abs(r.loc["c", "score"] - 0.25) < 1e-9  # two half-lives
    assert 0 <= to_rating(np.array([-3.0, 1e9])).min() and to_rating(np.array([1e9]))[0] <= 5.0
