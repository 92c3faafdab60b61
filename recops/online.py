"""The online half of the feature pipeline: recompute a user's features as of now and push them.

It runs ``recops.features.user_features``, the function that builds the offline snapshots, on the
user's events from the event store, so online and offline values agree by construction.
"""

from __future__ import annotations

import pandas as pd

from recops.features import user_features
from recops.featurestore import FeatureStoreClient
from recops.store import EventStore


def refresh_users(store: EventStore, fs: FeatureStoreClient, user_ids: list[str], items: pd.DataFrame,
                  as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """Recompute and push the online features of ``user_ids`` as of ``as_of`` (default: now)."""
    users = sorted({u for u in user_ids if u})
    if not users:
        return pd.DataFrame()
    as_of = as_of if as_of is not None else pd.Timestamp.now(tz="UTC")
    events = pd.concat([store.user_events(u) for u in users], ignore_index=True)
    feats = user_features(events, pd.DataFrame({"user_id": users, "as_of": as_of}), items)
    fs.push_user(feats)
    return feats
