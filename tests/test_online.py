"""The online refresher (a child process): a refresh lands, and after the child is killed (fault
injection) a new one redoes what the dead one never did."""

import time
import uuid

import pandas as pd
import pytest

from recops.featurestore import FeatureStoreClient
from recops.online import Refresher
from recops.store import EventStore

pytestmark = pytest.mark.e2e


def _event(user: str, item: str) -> pd.DataFrame:
    return pd.DataFrame({"event_id": [f"rf-{uuid.uuid4().hex}"], "user_id": [user], "item_id": [item],
                         "event_type": ["purchase"], "timestamp": [pd.Timestamp.now(tz="UTC")], "session_id": [None],
                         "value": [3.0], "context": [None]})


def test_refresh_lands_and_survives_a_killed_child(trained):
    settings, _ = trained
    store, fs = EventStore(settings.event_store_uri), FeatureStoreClient(settings)
    a, b = store.events()["user_id"].value_counts().index[[11, 12]]
    item = store.items()["item_id"].iloc[0]
    r = Refresher(settings)
    try:
        store.add_events(_event(a, item))
        r.submit([a], [])
        assert r.wait(user=a, timeout=60) and not r.is_pending(user=a)
        assert fs.online_user(a)["u_purchase_1d"] >= 1 and r.last_error is None

        r._proc.kill()  # fault injection: the child dies with b's refresh queued and never done
        r._proc.join()
        before = fs.online_user(b)["u_last_event_ts"]
        store.add_events(_event(b, item))
        with r._lock:
            r._seq += 1
            r._queued[("u", b)] = r._seq  # as if submitted to the dead child
        t = time.time()
        r.submit([], ["some-session"])  # the next /track restarts the child, which redoes b
        assert r.wait(user=b, timeout=60), "the restarted refresher never refreshed b"
        assert fs.online_user(b)["u_last_event_ts"] > before and time.time() - t < 60
    finally:
        r.close()
        store.dispose()
