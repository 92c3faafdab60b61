"""Strategy weights per request over real HTTP: ``/recommend`` blends the named signals instead of
the learned ranker, the order moves the way the weights point, signals the model lacks are left out,
and bad weights get a 400."""

from __future__ import annotations

import pytest

from recops.store import EventStore

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def users_and_counts(trained):
    ev = EventStore(trained[0].event_store_uri).events()
    return ev["user_id"].dropna().value_counts().index[5:25].tolist(), ev["item_id"].value_counts()


def _ids(client, body) -> list[str]:
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_weights_move_the_order_the_way_they_point(client, users_and_counts):
    users, counts = users_and_counts
    pop_mean, ease_mean = [], []
    for u in users:
        r = client.post("/recommend", json={"user_id": u, "k": 10, "weights": {"popularity": 3, "ease": 1}}).json()
        assert r["weights_used"] == {"popularity": 0.75, "ease": 0.25} and not r["fallback"]
        assert all(i["reason"] for i in r["items"])  # reasons stay
        pop_mean.append(counts.reindex([i["item_id"] for i in r["items"]]).fillna(0).mean())
        ease = _ids(client, {"user_id": u, "k": 10, "weights": {"ease": 1}})
        ease_mean.append(counts.reindex(ease).fillna(0).mean())
    # leaning on popularity shows more popular items than leaning on EASE, for the same users
    assert sum(pop_mean) > 1.2 * sum(ease_mean), (sum(pop_mean), sum(ease_mean))
    plain = client.post("/recommend", json={"user_id": users[0], "k": 10}).json()
    assert plain["weights_used"] is None  # the default is the learned ranker


def test_the_next_item_weight_follows_the_live_session(client, users_and_counts, trained):
    users, _ = users_and_counts
    u = users[3]
    before = _ids(client, {"user_id": u, "k": 10, "weights": {"next_item": 1}})
    viewed = before[:2] if before else []
    client.post("/track/batch", json=[{"user_id": u, "item_id": i, "event_type": "view"} for i in viewed])
    r = client.post("/recommend", json={"user_id": u, "k": 10, "weights": {"next_item": 1}}).json()
    nxt = [i for i in r["items"] if "next_item" in i["sources"]]
    assert len(nxt) >= 5 and r["items"][0]["sources"][-1] == "next_item"  # what follows the session leads


@pytest.mark.parametrize("weights, says", [({"nope": 1.0}, "nope"), ({"popularity": -1.0}, "greater than 0"),
                                           ({"popularity": 0.0}, "greater than 0"), ({"svd": "1"}, "number")])
def test_bad_weights_get_a_400_naming_them(client, users_and_counts, weights, says):
    r = client.post("/recommend", json={"user_id": users_and_counts[0][0], "k": 5, "weights": weights})
    assert r.status_code == 400 and says in r.text, r.text


def test_a_signal_the_model_does_not_blend_is_left_out(client, users_and_counts, trained):
    settings, _ = trained
    assert "content" not in settings.generators  # the trained model has no content generator
    u = users_and_counts[0][0]
    mixed = client.post("/recommend", json={"user_id": u, "k": 5, "weights": {"content": 1, "popularity": 1}}).json()
    assert mixed["weights_used"] == {"popularity": 1.0}
    only = client.post("/recommend", json={"user_id": u, "k": 5, "weights": {"content": 1}}).json()
    ranker = client.post("/recommend", json={"user_id": u, "k": 5}).json()
    assert only["weights_used"] is None
    assert [i["item_id"] for i in only["items"]] == [i["item_id"] for i in ranker["items"]]


def test_the_weights_name_every_signal_recops_can_train():
    from recops.services.schemas import Weights
    from recops.vocabulary import SIGNALS

    assert tuple(Weights.model_fields) == SIGNALS
