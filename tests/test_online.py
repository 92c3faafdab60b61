"""The online refresher (a child process): a refresh lands, and after the child is killed (fault
injection) a new one redoes what the dead one never did."""

import os
import signal
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

        # fault injection: the child is frozen, b's refresh is queued to it, then it dies without doing it
        os.kill(r.pid, signal.SIGSTOP)
        before = fs.online_user(b)["u_last_event_ts"]
        store.add_events(_event(b, item))
        r.submit([b], [])
        assert r.is_pending(user=b)
        dead = r.pid
        os.kill(dead, signal.SIGKILL)
        _wait_dead(dead)
        t = time.time()
        r.submit([], ["some-session"])  # the next /track restarts the child, which redoes b
        assert r.pid != dead
        assert r.wait(user=b, timeout=60), "the restarted refresher never refreshed b"
        assert fs.online_user(b)["u_last_event_ts"] > before and time.time() - t < 60
    finally:
        r.close()
        store.dispose()


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    """Until the killed process is gone (reaped by its parent, or a zombie)."""
    t = time.time()
    while time.time() - t < timeout:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not die")
