import numpy as np
import pandas as pd

from recops.generate import generate


def test_deterministic_by_seed():
    a = generate(5_000, end="2026-11-01", seed=3)
    b = generate(5_000, end="2026-11-01", seed=3)
    pd.testing.assert_frame_equal(a.events, b.events)
    assert not generate(5_000, end="2026-11-01", seed=4).events.equals(a.events)


def test_funnel_rates_are_realistic(synthetic):
    c = synthetic.events["event_type"].value_counts()
    view_to_cart = c["add_to_cart"] / c["view"]
    cart_to_buy = c["purchase"] / c["add_to_cart"]
    assert 0.03 < view_to_cart < 0.25, view_to_cart
    assert 0.2 < cart_to_buy < 0.8, cart_to_buy
    assert c["view"] > c["click"] > c["add_to_cart"] > c["purchase"]


def test_planted_complements_follow(synthetic):
    ev = synthetic.events[synthetic.events["event_type"] == "view"].sort_values(["session_id", "timestamp"])
    nxt = ev.groupby("session_id")["item_id"].shift(-1)
    rate = (nxt == ev["item_id"].map(synthetic.truth["complement"])).mean()
    chance = 1 / synthetic.items["item_id"].nunique()
    assert rate > 0.15 and rate > 20 * chance, (rate, chance)


def test_tastes_and_price_sensitivity_show_in_behavior(synthetic):
    ev = synthetic.events.merge(synthetic.items[["item_id", "category", "price"]], on="item_id")
    top = ev.groupby("user_id")["category"].agg(lambda s: s.value_counts().index[0])
    truth = pd.Series(synthetic.truth["user_top_category"])
    active = ev["user_id"].value_counts()
    active = active[active >= 30].index
    agree = (top[active] == truth[active]).mean()
    assert agree > 0.5, agree  # 12 categories: chance would be ~0.08
    sens = pd.Series(synthetic.truth["price_sensitivity"])
    paid = ev[ev["event_type"] == "purchase"].groupby("user_id")["price"].mean()
    corr = np.corrcoef(sens[paid.index], paid)[0, 1]
    assert corr < -0.05, corr


def test_new_users_and_items_appear_late(synthetic):
    ev = synthetic.events
    start = synthetic.truth["start"]
    new_u = ev[ev["user_id"].isin(synthetic.truth["new_users"])]
    new_i = ev[ev["item_id"].isin(synthetic.truth["new_items"])]
    assert len(new_u) and new_u["timestamp"].min() > start + pd.Timedelta(days=30)
    created = synthetic.items.set_index("item_id")["created_at"]
    assert len(new_i) and (new_i["timestamp"] >= new_i["item_id"].map(created)).all()


def test_popularity_drifts(synthetic):
    ev = synthetic.events
    mid = ev["timestamp"].min() + (ev["timestamp"].max() - ev["timestamp"].min()) / 2
    first = ev[ev["timestamp"] < mid]["item_id"].value_counts(normalize=True)
    second = ev[ev["timestamp"] >= mid]["item_id"].value_counts(normalize=True)
    rising = [i for i in synthetic.truth["rising_items"] if i in first.index and i in second.index]
    assert rising and (second[rising] > first[rising]).mean() > 0.7


def test_bad_share_rows_are_added():
    clean = generate(5_000, end="2026-11-01", bad_share=0.0).events
    d = generate(5_000, end="2026-11-01", bad_share=0.05)
    n_bad = d.events["event_id"].str.startswith("bad-").sum()
    assert n_bad == int(len(clean) * 0.05) and len(d.events) == len(clean) + n_bad
