"""Behavioral endpoints over HTTP against the real BentoML server."""

import numpy as np
import pandas as pd
import pytest

from recops.ratings import implicit_ratings
from recops.store import EventStore

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
    offline = implicit_ratings(mine, settings.event_types, settings.decay_half_life_days, as_of=pd.Timestamp.now(tz="UTC"))
    assert np.isclose(body["rating"], offline["rating"].iloc[0], rtol=1e-3)
    assert body["events"] == mine["event_type"].value_counts().to_dict() and body["events"]["purchase"] >= 1
    assert body["known_user"] and body["known_item"] and 0 < body["rating"] <= 5

    untouched = sorted(set(ev["item_id"]) - set(ev.loc[ev["user_id"] == user, "item_id"]))[0]
    none = client.get("/implicit-rating", params={"user_id": user, "item_id": untouched}).json()
    assert none["rating"] == 0 and none["events"] == {} and none["known_user"]

    # a tracked cart on that item shows at once
    t = client.post("/track", json={"user_id": user, "item_id": untouched, "event_type": "add_to_cart"})
    assert t.status_code == 200
    after = client.get("/implicit-rating", params={"user_id": user, "item_id": untouched}).json()
    assert after["events"] == {"add_to_cart": 1} and after["rating"] > 0

    bad = client.get("/implicit-rating", params={"user_id": user})
    assert bad.status_code == 422 and "item_id" in bad.text
