"""The online store goes away and comes back: a Redis server this test starts on a port of its own, then
kills (-9) and starts again, empty (it keeps nothing on disk). While it is away, /recommend answers from
features computed from the event store, flagged degraded and counted; /track still stores; /health says
so. When it is back, answers are no longer degraded and the refresh that failed meanwhile lands."""

from __future__ import annotations

import time

import httpx
import pytest

from recops.config import load_settings
from recops.featurestore import FeatureStoreClient
from recops.store import EventStore
from tests.conftest import Server, auth, free_port, train_champion
from tests.faults import RedisServer, Unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.scaleout]


@pytest.fixture(scope="module")
def outage(tmp_root):
    try:
        server = RedisServer()
    except Unavailable as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        settings = load_settings(home=tmp_root / "online-outage", online_store="redis",
                                 redis_url=server.url)
        train_champion(settings, n_events=3_000, seed=17)
        yield settings, server
    finally:
        server.kill()


def _settled(c: httpx.Client, user: str) -> None:
    """Wait until no online refresh is outstanding."""
    deadline = time.time() + 30
    while c.get("/health").json()["online_refresh"]["pending"]:
        assert time.time() < deadline
        time.sleep(0.2)


def test_the_online_store_away_and_back(outage):
    settings, redis_server = outage
    store = EventStore(settings.event_store_uri)
    events = store.events()
    store.dispose()
    user = events["user_id"].value_counts().index[0]
    item = events["item_id"].value_counts().index[0]
    session = f"online-outage-{time.time_ns()}"
    srv = Server(settings, free_port(), workers=1).wait()
    try:
        with httpx.Client(base_url=srv.url, timeout=30, headers=auth(settings)) as c:
            # the user's online row as of now, so both answers below read features of the same moment
            assert c.post("/track", json={"user_id": user, "item_id": item, "event_type": "view"}).status_code == 200
            _settled(c, user)
            before = c.post("/recommend", json={"user_id": user, "k": 10}).json()
            assert not before["degraded"] and not before["fallback"], before

            redis_server.kill()
            during = c.post("/recommend", json={"user_id": user, "k": 10})
            assert during.status_code == 200, during.text
            body = during.json()
            assert body["degraded"] and "online store is unreachable" in body["degraded_reason"], body
            assert not body["fallback"] and body["strategy"] == "personalized", body
            # the same features, computed from the event store: the same list
            assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in before["items"]]

            tracked = c.post("/track", json={"user_id": user, "item_id": item, "event_type": "add_to_cart",
                                             "session_id": session})
            assert tracked.status_code == 200 and tracked.json()["stored"] == 1, tracked.text
            after_cart = c.post("/recommend", json={"user_id": user, "k": 10, "session_id": session}).json()
            assert after_cart["degraded"] and not after_cart["fallback"], after_cart
            sess = c.post("/session/recommend", json={"session_id": session, "k": 5})
            assert sess.status_code == 200 and sess.json()["degraded"], sess.text
            assert sess.json()["intent"] == "transactional", sess.json()  # the cart, read from the event store
            profile = c.get(f"/users/{user}/profile")
            assert profile.status_code == 200 and profile.json()["online_features"], profile.text
            assert profile.json()["recent_items"][0] == item, profile.text  # the cart just tracked, from the events
            health = c.get("/health").json()
            assert "online store is unreachable" in health["degraded"], health

            redis_server.start()  # empty: it keeps nothing on disk
            deadline, degraded = time.time() + 30, 2  # the degraded /recommend answers so far
            while True:
                back = c.post("/recommend", json={"user_id": user, "k": 10}).json()
                if not back["degraded"]:
                    break
                degraded += 1
                assert time.time() < deadline, back
                time.sleep(0.5)
            assert not back["fallback"]
            assert c.get("/health").json()["degraded"] is None
            # the refresh that failed while Redis was away is retried until it lands
            fs = FeatureStoreClient(settings)
            deadline = time.time() + 30
            while fs.online_session(session) is None or fs.online_user(user) is None:
                assert time.time() < deadline, "the failed refresh was not retried"
                time.sleep(0.5)
            assert '"add_to_cart": 1' in fs.online_session(session)["s_event_mix"]
            metrics = c.get("/metrics").text
    finally:
        srv.stop()
    store = EventStore(settings.event_store_uri)
    assert store.pending_count()[0] == 0
    store.dispose()
    assert f'recops_degraded_answers_total{{cause="online_store",endpoint="/recommend"}} {degraded:.1f}' in metrics
    assert 'recops_degraded_answers_total{cause="online_store",endpoint="/session/recommend"} 1.0' in metrics
