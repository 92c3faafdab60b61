"""Feast definitions: entities, batch + push sources and feature views for users and items.

Built in a function because ``FileSource.path`` has no setter: the parquet paths live under the
configured recops home. The feature lists come from ``recops.features`` (one source of truth).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Float64, Int64, String

from recops.features import ITEM_FEATURES, RECENT_FEATURES, SESSION_FEATURES, USER_FEATURES

TTL = timedelta(days=3650)
SESSION_TTL = timedelta(days=2)  # a session older than this is over: serve as if it were new
USER_VIEW, ITEM_VIEW, SESSION_VIEW, RECENT_VIEW = "user_behavior", "item_stats", "session_state", "user_recent"
USER_PUSH, ITEM_PUSH, SESSION_PUSH, RECENT_PUSH = "user_behavior_push", "item_stats_push", "session_state_push", "user_recent_push"
_TYPES = {"int": Int64, "float": Float64, "str": String}


def _fields(spec: dict[str, str]) -> list[Field]:
    return [Field(name=n, dtype=_TYPES[t]) for n, t in spec.items()]


def build(feature_dir: str | Path) -> list:
    d = Path(feature_dir).resolve()
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="a shopper")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="a catalog item")
    user_src = FileSource(name="user_behavior_source", path=str(d / "user_features.parquet"), timestamp_field="event_timestamp")
    item_src = FileSource(name="item_stats_source", path=str(d / "item_features.parquet"), timestamp_field="event_timestamp")
    session = Entity(name="session", join_keys=["session_id"], value_type=ValueType.STRING, description="a visit")
    session_src = FileSource(name="session_state_source", path=str(d / "session_state.parquet"), timestamp_field="event_timestamp")
    recent_src = FileSource(name="user_recent_source", path=str(d / "user_recent.parquet"), timestamp_field="event_timestamp")
    user_push = PushSource(name=USER_PUSH, batch_source=user_src)
    recent_push = PushSource(name=RECENT_PUSH, batch_source=recent_src)
    session_push = PushSource(name=SESSION_PUSH, batch_source=session_src)
    item_push = PushSource(name=ITEM_PUSH, batch_source=item_src)
    user_fv = FeatureView(
        name=USER_VIEW, entities=[user], ttl=TTL, online=True, source=user_push,
        schema=[Field(name="user_id", dtype=String), *_fields(USER_FEATURES)],
        description="Behavioral user features: windowed counts, conversion rates, recency, category affinity",
    )
    item_fv = FeatureView(
        name=ITEM_VIEW, entities=[item], ttl=TTL, online=True, source=item_push,
        schema=[Field(name="item_id", dtype=String), *_fields(ITEM_FEATURES)],
        description="Item stats: popularity windows, trend, conversion",
    )
    session_fv = FeatureView(
        name=SESSION_VIEW, entities=[session], ttl=SESSION_TTL, online=True, source=session_push,
        schema=[Field(name="session_id", dtype=String), *_fields(SESSION_FEATURES)],
        description="Live session state: recent items, categories, event mix, first/last time, intent",
    )
    recent_fv = FeatureView(
        name=RECENT_VIEW, entities=[user], ttl=TTL, online=True, source=recent_push,
        schema=[Field(name="user_id", dtype=String), *_fields(RECENT_FEATURES)],
        description="A user's recent items and their implicit ratings (online state: latest row only offline)",
    )
    return [user, item, session, user_src, item_src, session_src, recent_src, user_push, item_push, session_push,
            recent_push, user_fv, item_fv, session_fv, recent_fv]
