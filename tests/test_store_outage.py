"""The event store goes away and comes back: a PostgreSQL cluster this test starts on a port of its own
(initdb as the postgres user), then stops hard and starts again. /track answers 503 with Retry-After and
never a 2xx for an event it did not store; /recommend answers trending items from memory, flagged
degraded; /health answers; everything recovers by itself."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from recops.config import load_settings
from recops.store import EventStore
from tests.conftest import Server, auth, free_port, train_champion
from tests.faults import PgCluster, Unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.scaleout]
@pytest.fixture(scope="module")
def outage(tmp_root):
    try:
        cluster = PgCluster()
    except Unavailable as exc:
        pytest.skip(str(exc))
    cluster.start()
    try:
        settings = load_settings(home=tmp_root / "store-outage", event_store_url=cluster.url)
        train_champion(settings, n_events=3_000, seed=13)
        yield settings, cluster
    finally:
        cluster.remove()


def test_the_event_store_away_and_back(outage):
    settings, cluster = outage
    srv = Server(settings, free_port(), workers=1).wait()
    tag = f"outage-{time.time_ns()}"
    store = EventStore(settings.event_store_uri)
    user = store.events()["user_id"].value_counts().index[0]
    store.dispose()
    try:
        with httpx.Client(base_url=srv.url, timeout=30, headers=auth(settings)) as c:
            ok = c.post("/track", json={"event_id": f"{tag}-0", "user_id": user, "item_id": "i1",
                                        "event_type": "view"})
            assert ok.status_code == 200
            cluster.kill()
            answers = {}
            for n in range(1, 6):
                one = c.post("/track", json={"event_id": f"{tag}-{n}", "user_id": user, "item_id": "i1",
                                             "event_type": "view"})
                batch = c.post("/track/batch", json=[{"event_id": f"{tag}-b{n}", "user_id": user, "item_id": "i2",
                                                      "event_type": "click"}])
                answers[n] = (one, batch)
                assert one.status_code == 503 and batch.status_code == 503, (one.text, batch.text)
                assert "nothing was stored" in one.json()["error"] and "nothing was stored" in batch.json()["error"]
                assert int(one.headers["retry-after"]) >= 1 and int(batch.headers["retry-after"]) >= 1
            rec = c.post("/recommend", json={"user_id": user, "k": 5})
            assert rec.status_code == 200, rec.text
            body = rec.json()
            assert body["fallback"] and body["degraded"] and "event store is unreachable" in body["degraded_reason"]
            assert len(body["items"]) == 5
            health = c.get("/health")
            assert health.status_code == 200 and health.json()["events"] is None

            cluster.start()
            deadline = time.time() + 30
            while True:
                back = c.post("/track", json={"event_id": f"{tag}-back", "user_id": user, "item_id": "i1",
                                              "event_type": "view"})
                if back.status_code == 200:
                    break
                assert time.time() < deadline, back.text
                time.sleep(0.5)
            rec = c.post("/recommend", json={"user_id": user, "k": 5}).json()
            assert not rec["degraded"] and not rec["fallback"], rec
            metrics = c.get("/metrics").text
    finally:
        srv.stop()
    store = EventStore(settings.event_store_uri)
    with store.engine.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT event_id FROM events WHERE event_id LIKE :p"),
                               {"p": f"{tag}-%"}).scalars())
    store.dispose()
    assert ids == {f"{tag}-0", f"{tag}-back"}  # what got a 2xx is stored, what got a 503 is not
    assert 'recops_degraded_answers_total{cause="event_store",endpoint="/recommend"} 1.0' in metrics
