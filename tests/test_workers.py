"""Two workers, one state: a /track answered by one worker is reflected at once by the other, and one
process writes the online store."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psutil
import pytest

from recops.store import EventStore
from tests.conftest import auth, each_worker

pytestmark = pytest.mark.e2e


def _refreshers(home: Path) -> list[psutil.Process]:
    """The online refresher processes of servers on this home (of any server: the lock is the home's)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "multiprocessing.spawn" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("RECOPS_HOME") == str(home.resolve()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_write_on_one_worker_is_read_on_the_other(server, trained):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    events = store.events()
    store.dispose()
    user = events["user_id"].value_counts().index[3]
    items = events["item_id"].value_counts().index[:10].tolist()
    a, b = each_worker(server.url, auth(settings))
    try:
        for n, item in enumerate(items[:6]):
            writer, reader = (a, b) if n % 2 == 0 else (b, a)
            session = f"rw-{uuid.uuid4().hex[:8]}"
            t = time.time()
            r = writer.post("/track", json={"user_id": user, "session_id": session, "item_id": item,
                                            "event_type": "add_to_cart"})
            assert r.status_code == 200, r.text
            # at once, on the other worker: the session exists, its cart makes it transactional, and the
            # carted item is not offered again
            s = reader.post("/session/recommend", json={"session_id": session, "k": 5}).json()
            assert not s["fallback"] and s["intent"] == "transactional", s
            assert item not in [i["item_id"] for i in s["items"]]
            prof = reader.get(f"/users/{user}/profile").json()
            assert prof["online_features"]["u_last_event_ts"] >= t - 1, prof["online_features"]
        assert len({c.get("/health").json()["worker"] for c in (a, b)}) == 2
    finally:
        a.close()
        b.close()
    assert len(_refreshers(Path(settings.home))) == 1  # one writer of the online store, not one per worker
