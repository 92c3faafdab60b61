"""The online half of the feature pipeline: recompute users' features and sessions' state, push them.

It runs ``recops.features.user_features`` and ``session_states``, the functions that build the
offline tables, on the events of the touched users and sessions from the event store (one query),
so online and offline values agree by construction.
"""

from __future__ import annotations

import pandas as pd

from recops.features import session_states, user_features, user_recent
from recops.featurestore import FeatureStoreClient
from recops.store import EventStore


def refresh(store: EventStore, fs: FeatureStoreClient, user_ids, session_ids, items: pd.DataFrame,
            as_of: pd.Timestamp | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recompute and push the online features of ``user_ids`` as of ``as_of`` (default: now) and
    the state of ``session_ids``; returns both frames. Implicit-rating semantics: ``fs.settings``."""
    users = sorted({u for u in user_ids if u})
    sessions = sorted({s for s in session_ids if s})
    if not users and not sessions:
        return pd.DataFrame(), pd.DataFrame()
    as_of = as_of if as_of is not None else pd.Timestamp.now(tz="UTC")
    events = store.events_of(users, sessions)
    feats = pd.DataFrame()
    if users:
        mine, points = events[events["user_id"].isin(users)], pd.DataFrame({"user_id": users, "as_of": as_of})
        feats = user_features(mine, points, items)
        fs.push_user(feats)
        fs.push_recent(user_recent(mine, points, (fs.settings.event_types, fs.settings.decay_half_life_days)))
    states = pd.DataFrame()
    if sessions:
        cat = items.set_index("item_id")["category"] if not items.empty else None
        states = session_states(events[events["session_id"].isin(sessions)], cat)
        fs.push_sessions(states)
    return feats, states
