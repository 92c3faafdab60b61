"""Behavioral endpoints over HTTP against the real BentoML server."""

import json
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from recops.features import USER_FEATURES, user_features, user_recent
from recops.generate import generate
from recops.profile import PROFILE_FEATURES, profile_features
from recops.ratings import implicit_ratings
from recops.store import EventStore
from tests.conftest import END

pytestmark = pytest.mark.e2e


def test_implicit_rating_matches_the_offline_computation_and_moves_with_tracked_events(client, trained):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    ev = store.events()
    store.dispose()
    buys = ev[ev["event_type"] == "purchase"]
    user, item = buys["user_id"].iloc[0], buys["item_id"].iloc[0]
    r = client.get("/implicit-rating", params={"user_id": user, "item_id": item})
    assert r.status_code == 200, r.text
    body = r.json()
    mine = ev[(ev["user_id"] == user) & (ev["item_id"] == item)]
    offline = implicit_ratings(mine, settings.event_types, settings.decay_half_life_days,
                               as_of=pd.Timestamp.now(tz="UTC"))
    assert np.isclose(body["rating"], offline["rating"].iloc[0], rtol=1e-3)
    assert body["events"] == mine["event_type"].value_counts().to_dict() and body["events"]["purchase"] >= 1
    assert body["known_user"] and body["known_item"] and 0 < body["rating"] <= 5

    untouched = min(set(ev["item_id"]) - set(ev.loc[ev["user_id"] == user, "item_id"]))
    none = client.get("/implicit-rating", params={"user_id": user, "item_id": untouched}).json()
    assert none["rating"] == 0 and none["events"] == {} and none["known_user"]

    # a tracked cart on that item shows at once
    t = client.post("/track", json={"user_id": user, "item_id": untouched, "event_type": "add_to_cart"})
    assert t.status_code == 200
    after = client.get("/implicit-rating", params={"user_id": user, "item_id": untouched}).json()
    assert after["events"] == {"add_to_cart": 1} and after["rating"] > 0

    bad = client.get("/implicit-rating", params={"user_id": user})
    assert bad.status_code == 400 and "item_id" in bad.text


def _catalog(trained):
    store = EventStore(trained[0].event_store_uri)
    items = store.items()
    store.dispose()
    return items


def test_anonymous_session_gets_intent_aware_recommendations(client, trained):
    items = _catalog(trained)
    cat = items["category"].value_counts().index[1]
    chosen = items[items["category"] == cat]["item_id"].head(3).tolist()
    sid = f"anon-{time.time_ns()}"
    assert client.post("/session/recommend", json={"session_id": sid, "k": 5}).json()["fallback"] is True  # new visit

    t0 = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=10)
    views = [{"session_id": sid, "item_id": i, "event_type": et,
              "timestamp": (t0 + pd.Timedelta(seconds=45 * n)).isoformat()}
             for n, (i, et) in enumerate([(chosen[0], "view"), (chosen[1], "view"), (chosen[0], "click"),
                                          (chosen[2], "view")])]
    t = client.post("/track/batch", json=views)
    assert t.status_code == 200 and t.json()["sessions_updated"] == [sid] and t.json()["online_updated"] == []
    r = client.post("/session/recommend", json={"session_id": sid, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] is False and len(body["items"]) == 10 and body["session_id"] == sid
    assert body["intent"] == "research" and cat in body["intent_reason"] and body["signals"]["events"] == 4
    cat_of = items.set_index("item_id")["category"]
    in_cat = [it for it in body["items"] if cat_of.get(it["item_id"]) == cat]
    assert len(in_cat) >= 5 and any("comparing" in it["reason"] for it in in_cat)

    cart = client.post("/track", json={"session_id": sid, "item_id": chosen[2], "event_type": "add_to_cart"})
    assert cart.status_code == 200
    after = client.post("/session/recommend", json={"session_id": sid, "k": 10}).json()
    assert after["intent"] == "transactional" and after["signals"]["carts"] == 1
    assert chosen[2] not in [it["item_id"] for it in after["items"]]  # already in the cart


def test_browsing_session_gets_a_diverse_list(client, trained):
    items = _catalog(trained)
    cats = items["category"].value_counts().index[:4]
    picks = [items[items["category"] == c]["item_id"].iloc[0] for c in cats]
    sid = f"browse-{time.time_ns()}"
    client.post("/track/batch", json=[{"session_id": sid, "item_id": i, "event_type": "view"} for i in picks])
    body = client.post("/session/recommend", json={"session_id": sid, "k": 10}).json()
    assert body["intent"] == "browsing" and not body["fallback"]
    per_cat = pd.Series([items.set_index("item_id")["category"][it["item_id"]] for it in body["items"]]).value_counts()
    assert per_cat.max() <= 2, per_cat


def test_session_recommend_rejects_bad_input(client):
    assert client.post("/session/recommend", json={"k": 5}).status_code == 400
    r = client.post("/session/recommend", json={"session_id": "s", "k": 0})
    assert r.status_code == 400 and "k" in r.text


def test_predict_and_explain(client, trained):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    user = store.events()["user_id"].value_counts().index[2]
    store.dispose()
    top = client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]
    first, last = top[0]["item_id"], top[-1]["item_id"]
    p1 = client.post("/predict", json={"user_id": user, "item_id": first})
    assert p1.status_code == 200, p1.text
    p1, p10 = p1.json(), client.post("/predict", json={"user_id": user, "item_id": last}).json()
    assert p1["known_user"] and p1["candidates"] >= 10
    assert 0 <= p10["probability"] <= p1["probability"] <= 1 and p1["score"] >= p10["score"]
    assert p1["rank"] <= p10["rank"] and p1["proposed_by"]

    e = client.get("/explain", params={"user_id": user, "item_id": first})
    assert e.status_code == 200, e.text
    e = e.json()
    assert {g["generator"] for g in e["proposed_by"]} == set(p1["proposed_by"]) and e["reason"]
    if e["scorer"] == "ranker":
        assert 1 <= len(e["contributions"]) <= 5
        assert all(c["reason"].startswith(("raises", "lowers")) for c in e["contributions"])
        mags = [abs(c["contribution"]) for c in e["contributions"]]
        assert mags == sorted(mags, reverse=True)

    assert client.post("/predict", json={"user_id": user, "item_id": "no-such-item"}).status_code == 404
    missing = client.get("/explain", params={"user_id": user, "item_id": "no-such-item"})
    assert missing.status_code == 404 and "no-such-item" in missing.text
    assert client.post("/predict", json={"user_id": user}).status_code == 400


def test_profile_features_equal_the_offline_computation(client, trained):
    settings, res = trained
    store = EventStore(settings.event_store_uri)
    events, items = store.events(), store.items()
    store.dispose()
    user = events["user_id"].value_counts().index[7]  # no other test tracks events for this user
    r = client.get(f"/users/{user}/profile")
    assert r.status_code == 200, r.text
    body = r.json()
    as_of = pd.Timestamp(body["as_of"])
    offline = profile_features(events, items, as_of).set_index("user_id").loc[user]
    assert set(body["features"]) == set(PROFILE_FEATURES)
    for name, value in body["features"].items():
        assert np.isclose(float(value), float(offline[name]), rtol=1e-9), (name, value, offline[name])
    # the stored online features equal the offline user features at the end of the feature table
    until = pd.Timestamp(res["features"]["until"])
    uf = user_features(events, pd.DataFrame({"user_id": [user], "as_of": [until]}), items).iloc[0]
    online = body["online_features"]
    for name, kind in USER_FEATURES.items():
        if kind != "str":
            assert np.isclose(float(online[name]), float(uf[name]), equal_nan=True), name
    recent = user_recent(events, pd.DataFrame({"user_id": [user], "as_of": [until]}),
                         (settings.event_types, settings.decay_half_life_days)).iloc[0]
    assert body["recent_items"] == json.loads(recent["u_recent_items"])
    assert body["events"] == (events["user_id"] == user).sum()
    rated = implicit_ratings(events[events["user_id"] == user], settings.event_types, settings.decay_half_life_days,
                             as_of=until).set_index("item_id")["rating"]
    assert set(body["recent_ratings"]) == set(body["recent_items"])
    for item, r in body["recent_ratings"].items():
        assert r == pytest.approx(rated[item], abs=1e-3), item
    numeric = [v for v in {**body["features"], **online}.values() if isinstance(v, (int, float))]
    assert len(numeric) >= 20 and body["static"]["region"] and body["preferences"]["top_categories"]
    assert client.get("/users/nobody-at-all/profile").status_code == 404


@given(data=st.data())
@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_deals_never_exceed_the_cap_or_fall_below_the_floor(client, trained, data):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    items = store.items().set_index("item_id")
    users = store.events()["user_id"].dropna().value_counts().index[:50].tolist()
    store.dispose()
    user = data.draw(st.sampled_from(users) | st.text("abcxyz0123", min_size=1, max_size=12).map(lambda s: f"deal-{s}"))
    # the user may first cart a few items (cheap or dear): their price sensitivity moves, the caps must not
    carts = data.draw(st.lists(st.sampled_from(items.index.tolist()), max_size=4))
    if carts:
        carted = [{"user_id": user, "item_id": i, "event_type": "add_to_cart"} for i in carts]
        assert client.post("/track/batch", json=carted).status_code == 200
    k = data.draw(st.integers(1, 50))
    r = client.post("/deals", json={"user_id": user, "k": k})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["max_discount"] == settings.deal_max_discount and len(body["deals"]) <= k
    now = pd.Timestamp.now(tz="UTC")
    for d in body["deals"]:
        price = items.loc[d["item_id"], "price"]
        assert d["list_price"] == pytest.approx(price)
        assert 0 < d["discount"] <= settings.deal_max_discount
        assert settings.deal_floor_ratio * price - 1e-9 <= d["deal_price"] <= price
        assert now < pd.Timestamp(d["expires_at"]) <= now + pd.Timedelta(hours=settings.deal_ttl_hours, minutes=1)
        assert d["reason"]
    # the request cannot name a price or a discount
    extra = data.draw(st.sampled_from(["discount", "max_discount", "deal_price", "floor_ratio"]))
    bad = client.post("/deals", json={"user_id": user, "k": k, extra: 0.99})
    assert bad.status_code == 400 and extra in bad.text


def test_next_items_follow_the_planted_sequences(client, trained):
    """The synthetic generator plants "after item A, often complement[A]": /next-items recovers it."""
    truth = generate(n_events=30_000, seed=11, bad_share=0.01, end=END).truth["complement"]
    store = EventStore(trained[0].event_store_uri)
    busy = store.events()["item_id"].value_counts().index[:30].tolist()
    store.dispose()
    ranks = []
    for a in busy:
        r = client.post("/next-items", json={"recent_item_ids": [a], "k": 10})
        assert r.status_code == 200, r.text
        ids = [it["item_id"] for it in r.json()["items"]]
        assert len(ids) == 10 and a not in ids[:1]
        ranks.append(ids.index(truth[a]) + 1 if truth[a] in ids else None)
    found = [x for x in ranks if x is not None]
    assert len(found) >= 0.8 * len(busy) and np.median(found) <= 3, ranks
    body = client.post("/next-items", json={"recent_item_ids": [busy[0]], "k": 3}).json()
    assert body["items"][0]["reason"].startswith("Often chosen next after")
    cold = client.post("/next-items", json={"recent_item_ids": ["never-seen-item"], "k": 4}).json()
    assert cold["unknown_items"] == ["never-seen-item"] and len(cold["items"]) == 4  # popularity fills in
    assert client.post("/next-items", json={"recent_item_ids": [], "k": 4}).status_code == 400
    assert client.post("/next-items", json={"recent_item_ids": ["i1"], "k": 0}).status_code == 400
