"""Training/serving skew: features computed offline equal the ones served online for the same user and time."""

import numpy as np
import pandas as pd
import pytest

from recops.features import USER_FEATURES, derive_user, derive_user_dict
from recops.featurestore import FeatureStoreClient
from recops.online import refresh
from recops.store import EventStore

pytestmark = pytest.mark.e2e


def test_offline_point_in_time_equals_online_push(trained):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    fs = FeatureStoreClient(settings)
    events, items = store.events(), store.items()
    users = events["user_id"].value_counts().index[[0, 5, 50]].tolist()
    until = pd.Timestamp(trained[1]["features"]["until"])  # where the offline table ends
    t = (until - pd.Timedelta(days=3)).floor("D")  # a snapshot midnight inside it
    offline = fs.historical(pd.DataFrame({"user_id": users, "event_timestamp": t}), "user").set_index("user_id")
    try:
        refresh(store, fs, users, [], items, as_of=t)  # the /track code path, as of the same time
        for u in users:
            online = fs.online_user(u)
            assert online is not None
            for name, kind in USER_FEATURES.items():
                off, on = offline.loc[u, name], online[name]
                if kind == "str":
                    assert off == on, (u, name)
                else:
                    assert np.isclose(float(off), float(on), rtol=1e-9, equal_nan=True), (u, name, off, on)
            d_off = derive_user(offline.loc[[u]].copy(), t.timestamp()).iloc[0]
            d_on = derive_user_dict(online, t.timestamp())
            assert np.isclose(d_off["u_recency_hours"], d_on["u_recency_hours"])
        # and both agree with a direct count from the raw events
        u = users[0]
        raw = events[(events["user_id"] == u) & (events["timestamp"] <= t)
                     & (events["timestamp"] > t - pd.Timedelta(days=7))]
        assert offline.loc[u, "u_view_7d"] == (raw["event_type"] == "view").sum()
    finally:
        refresh(store, fs, users, [], items)  # back to the current state for the other tests
        store.dispose()
