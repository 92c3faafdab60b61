"""The online refresher (a child process of the worker holding the writer's lock): a refresh lands; after
the child is killed (fault injection) a new one redoes what the dead one never did; of two candidates
for one home only one writes, and the other takes over when the first stops."""

import os
import signal
import time
import uuid

import pytest

from recops import steps
from recops.config import load_settings
from recops.featurestore import FeatureStoreClient
from recops.online import Refresher
from recops.store import EventStore
from tests.conftest import END

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def home(tmp_root):
    """A home of its own (a server on a shared home could hold the writer's lock), features built."""
    settings = load_settings(home=tmp_root / "online-refresher")
    b = steps.ingest(settings, n_events=2_000, end=END, seed=21, bad_share=0.0)
    steps.validate(settings, b["batch_id"])
    steps.build_features(settings)
    return settings


def _track(store: EventStore, user: str, item: str) -> None:
    """What /track does: the event and its pending mark in one transaction."""
    now = time.time()
    store.insert_events([{"event_id": f"rf-{uuid.uuid4().hex}", "user_id": user, "item_id": item,
                          "event_type": "purchase", "timestamp": now, "session_id": None, "value": 3.0,
                          "context": None, "ingested_at": now, "request_id": None}], pending=([user], []))


def _until(check, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_refresh_lands_and_survives_a_killed_child(home):
    settings = home
    store, fs = EventStore(settings.event_store_uri), FeatureStoreClient(settings)
    a, b = store.events()["user_id"].value_counts().index[[11, 12]]
    item = store.items()["item_id"].iloc[0]
    r = Refresher(settings, store)
    r.start()
    try:
        assert _until(lambda: r.pid is not None), "the only candidate did not become the writer"
        _track(store, a, item)
        assert r.is_pending(user=a)
        r.submit([a], [])
        assert r.wait(user=a, timeout=60) and not r.is_pending(user=a)
        assert fs.online_user(a)["u_purchase_1d"] >= 1 and r.last_error is None and r.refreshes >= 1

        # fault injection: the child is frozen, b's event is stored and marked, then the child dies without
        # refreshing it
        os.kill(r.pid, signal.SIGSTOP)
        before = fs.online_user(b)["u_last_event_ts"]
        _track(store, b, item)
        r.submit([b], [])
        time.sleep(0.3)
        assert r.is_pending(user=b)
        dead = r.pid
        os.kill(dead, signal.SIGKILL)
        t = time.time()
        assert r.wait(user=b, timeout=60), "the restarted refresher never refreshed b"
        assert r.pid != dead and fs.online_user(b)["u_last_event_ts"] > before and time.time() - t < 60
    finally:
        r.close()
        store.dispose()


def test_one_writer_and_a_takeover(home):
    settings = home
    store = EventStore(settings.event_store_uri)
    first, second = Refresher(settings, store), Refresher(settings, store)
    first.start()
    try:
        assert _until(lambda: first.pid is not None)
        second.start()
        time.sleep(2.5)  # two of its tries to take the lock
        assert second.pid is None, "a second writer started"
        user = store.events()["user_id"].value_counts().index[5]
        _track(store, user, store.items()["item_id"].iloc[1])
        second.submit([user], [])  # a worker that is not the writer: the writer finds the mark by itself
        assert second.wait(user=user, timeout=30)
        first.close()
        assert _until(lambda: second.pid is not None, 10), "nobody took over"
        _track(store, user, store.items()["item_id"].iloc[2])
        assert second.wait(user=user, timeout=30)
    finally:
        first.close()
        second.close()
        store.dispose()
