"""Bad input gets a 4xx that names what is wrong, and nothing is stored."""

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
    ({"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2999-01-01T00:00:00Z"}, "future"),
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
