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
from recops.vocabulary import ITEM_VIEW, OFFLINE_TABLES, PUSH_SOURCES, RECENT_VIEW, SESSION_VIEW, USER_VIEW

TTL = timedelta(days=3650)
SESSION_TTL = timedelta(days=2)  # a session older than this is over: serve as if it were new
_TYPES = {"int": Int64, "float": Float64, "str": String}


def _fields(spec: dict[str, str]) -> list[Field]:
    return [Field(name=n, dtype=_TYPES[t]) for n, t in spec.items()]


def build(feature_dir: str | Path) -> list:
    """The Feast objects to apply: the user, item and session entities, and per view a batch source,
    a push source and the feature view.

    Args:
        feature_dir: directory of the offline parquet tables (``Settings.feature_dir``).

    Returns:
        Entities, ``FileSource``/``PushSource`` pairs and ``FeatureView``s, for ``FeatureStore.apply``.
    """
    d = Path(feature_dir).resolve()
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="a shopper")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="a catalog item")
    session = Entity(name="session", join_keys=["session_id"], value_type=ValueType.STRING, description="a visit")

    def view(name: str, entity: Entity, spec: dict[str, str], ttl: timedelta, description: str) -> list:
        """A feature view fed by its push source, whose batch source is the view's offline parquet table."""
        src = FileSource(name=f"{name}_source", path=str(d / f"{OFFLINE_TABLES[name]}.parquet"),
                         timestamp_field="event_timestamp")
        pushed = PushSource(name=PUSH_SOURCES[name], batch_source=src)
        key = entity.join_key
        fv = FeatureView(name=name, entities=[entity], ttl=ttl, online=True, source=pushed, description=description,
                         schema=[Field(name=key, dtype=String), *_fields(spec)])
        return [src, pushed, fv]

    return [user, item, session,
            *view(USER_VIEW, user, USER_FEATURES, TTL,
                  "Behavioral user features: windowed counts, conversion rates, recency, category affinity"),
            *view(ITEM_VIEW, item, ITEM_FEATURES, TTL,
                  "Item stats: popularity windows, trend, conversion"),
            *view(SESSION_VIEW, session, SESSION_FEATURES, SESSION_TTL,
                  "Live session state: recent items, categories, event mix, first/last time, dwell"),
            *view(RECENT_VIEW, user, RECENT_FEATURES, TTL,
                  "A user's recent items and their implicit ratings (online state: latest row only offline)")]
