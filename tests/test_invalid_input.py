"""Bad input gets a 4xx that names what is wrong, and nothing is stored."""

import time

import pandas as pd
import pytest

from recops.store import EventStore

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("body,field", [
    ({"k": 3}, "user_id"),
    ({"user_id": "u1", "k": 0}, "k"),
    ({"user_id": "u1", "k": 1000}, "k"),
    ({"user_id": "u1", "k": "many"}, "k"),
    ({"user_id": "", "k": 3}, "user_id"),
    ({"user_id": "u1", "exclude": "i1"}, "exclude"),
])
def test_recommend_rejects_bad_fields(client, body, field):
    r = client.post("/recommend", json=body)
    assert 400 <= r.status_code < 500
    assert field in r.text


def test_recommend_rejects_broken_json(client):
    r = client.post("/recommend", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "JSON" in r.text


@pytest.mark.parametrize("event,needle", [
    ({"user_id": "u1", "item_id": "i1", "event_type": "teleport"}, "unknown event_type"),
    ({"item_id": "i1", "event_type": "view"}, "user_id or a session_id"),
    ({"user_id": "u1", "event_type": "view"}, "item_id"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2999-01-01T00:00:00Z"}, "1970-2099"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "View"}, "unknown event_type"),  # the documented enum, exactly
    ({"user_id": "u1", "item_id": "i1", "event_type": "purchase", "value": -3}, "value"),
    ({"user_id": "u1", "item_id": "i1", "event_type": "view", "colour": "red"}, "colour"),
])
def test_track_rejects_bad_events_and_stores_nothing(client, trained, event, needle):
    store = EventStore(trained[0].event_store_uri)
    n0 = store.count_events()
    good = {"user_id": "u1", "item_id": "i2", "event_type": "view"}
    r = client.post("/track/batch", json=[good, event])
    assert 400 <= r.status_code < 500 and needle in r.text
    assert store.count_events() == n0  # the good event in a rejected batch is not half-stored
    store.dispose()


def test_nothing_accepted_is_lost_across_good_bad_and_repeated_requests(client, trained):
    """A mix of requests: every 2xx's new events are in the store, every 4xx stored nothing, and
    the store's count moves by exactly the events the responses say were stored."""
    store = EventStore(trained[0].event_store_uri)
    n0 = store.count_events()
    tag = f"acc-{time.time_ns()}"
    good = [{"event_id": f"{tag}-{n}", "user_id": f"{tag}-u{n % 3}", "item_id": f"i{n}", "event_type": "view"}
            for n in range(30)]
    requests = [
        ("/track", good[0]), ("/track", good[0]),  # a retry: stored once
        ("/track/batch", good[1:20]), ("/track/batch", good[10:30]),  # overlapping batches
        ("/track", {**good[0], "event_id": None, "event_type": "teleport"}),  # bad type
        ("/track/batch", [good[5], {"item_id": "i1", "event_type": "view"}]),  # no actor: the whole batch is refused
        ("/track", {"user_id": "x", "item_id": "i1", "event_type": "view", "timestamp": "2999-01-01T00:00:00Z"}),
        ("/track", {"user_id": "x", "item_id": "i1", "event_type": "view", "price": 3}),  # unknown field
        ("/track/batch", []),
        # accepted, flagged
        ("/track", {"session_id": f"{tag}-anon", "item_id": "not-in-catalog", "event_type": "click"}),
    ]
    stored = accepted = 0
    for path, body in requests:
        r = client.post(path, json=body)
        assert r.status_code in (200, 400), (path, r.status_code, r.text)
        if r.status_code == 200:
            stored += r.json()["stored"]
            accepted += r.json()["accepted"]
        else:
            assert len(r.text) > 20, r.text  # a message, not a bare status
    assert store.count_events() - n0 == stored == 31 and accepted == 1 + 1 + 19 + 20 + 1
    ids = set(store.events(since=time.time() - 600)["event_id"])
    assert {e["event_id"] for e in good} <= ids
    store.dispose()


def test_a_light_user_back_after_a_while_is_not_served_as_a_visit(client, trained):
    """A user with a few events two days old is no longer in that visit: no intent is read from
    them, and the list is the personalized one; the same events now are a visit."""
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    items = store.items()["item_id"].head(6).tolist()
    store.dispose()
    then = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=2)).isoformat()
    back, live = f"back-{time.time_ns()}", f"live-{time.time_ns()}"
    for user, ts in ((back, then), (live, None)):
        rows = [{"user_id": user, "item_id": i, "event_type": "view", **({"timestamp": ts} if ts else {})}
                for i in items[:2]]
        assert client.post("/track/batch", json=rows).status_code == 200
    body = client.post("/recommend", json={"user_id": back, "k": 5}).json()
    assert body["strategy"] == "personalized" and not body["fallback"]
    assert client.post("/recommend", json={"user_id": live, "k": 5}).json()["strategy"] == "session"


def test_new_user_with_demographics_gets_their_segment_then_session_recommendations(client, trained):
    """No events yet: the user's demographic segment's favourites (with a confidence); after the
    first events: session-based; the fallback only answers when nothing at all is known."""
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    users = store.users()
    ref = users.iloc[0]
    new = f"newbie-{time.time_ns()}"
    store.upsert_users(pd.DataFrame([{"user_id": new, "age": ref["age"], "gender": ref["gender"],
                                      "region": ref["region"]}]))
    items = store.items()
    store.dispose()
    body = client.post("/recommend", json={"user_id": new, "k": 6}).json()
    assert body["strategy"] == "demographic" and not body["fallback"] and len(body["items"]) == 6
    assert all(0 < it["confidence"] <= 0.35 for it in body["items"]) and ref["region"] in body["items"][0]["reason"]
    item = items["item_id"].iloc[3]
    client.post("/track", json={"user_id": new, "item_id": item, "event_type": "view"})
    after = client.post("/recommend", json={"user_id": new, "k": 6}).json()
    assert after["strategy"] == "session" and len(after["items"]) == 6
    nobody = client.post("/recommend", json={"user_id": f"ghost-{time.time_ns()}", "k": 3}).json()
    assert nobody["strategy"] == "trending" and nobody["fallback"]
    assert all(it["confidence"] <= 0.2 for it in nobody["items"])
