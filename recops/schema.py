"""The one event/item/user schema shared by importers, the store, validation, features and the API."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "timestamp", "session_id", "value", "context"]
ITEM_COLUMNS = ["item_id", "category", "title", "description", "price", "in_stock", "created_at"]
USER_COLUMNS = ["user_id", "age", "gender", "region"]


def make_event_id(user_id: str, item_id: str, event_type: str, ts: pd.Timestamp | str, extra: str = "") -> str:
    """A deterministic id, so that re-importing the same source is idempotent.

    Args:
        user_id: the event's user (None for anonymous events).
        item_id: the event's item.
        event_type: the event's type.
        ts: the event's time; its string form is hashed, so pass the same type every time.
        extra: whatever else tells events apart (the callers pass the session_id).

    Returns:
        24 hex digits (a 12-byte BLAKE2b digest of the fields).
    """
    raw = f"{user_id}|{item_id}|{event_type}|{ts}|{extra}"
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()


def _context_to_json(val) -> str | None:
    if val is None or (isinstance(val, float) and np.isnan(val)):
        return None
    if isinstance(val, str):
        return val
    return json.dumps(val, sort_keys=True)


def normalize_events(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame to the event schema without dropping rows.

    Values that cannot be parsed become nulls, so that validation can quarantine them with a reason
    instead of this function silently losing them.

    Args:
        df: raw events with any of the EVENT_COLUMNS (absent ones become null, others are dropped);
            timestamps in any form ``pd.to_datetime`` parses (naive: UTC), context as dicts or JSON strings.

    Returns:
        The EVENT_COLUMNS columns, indexed like ``df``: ids as strings, event_type stripped and lower-cased,
        timestamp UTC, value float, context JSON; a missing event_id is generated (make_event_id).
    """
    out = pd.DataFrame(index=df.index)
    for col in ("user_id", "item_id", "event_type", "session_id"):
        if col in df:
            s = df[col]
            out[col] = s.where(s.isna(), s.astype(str)).astype(object)
        else:
            out[col] = None
    out["event_type"] = out["event_type"].where(out["event_type"].isna(), out["event_type"].str.strip().str.lower())
    out["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, errors="coerce") if "timestamp" in df else pd.NaT
    out["value"] = pd.to_numeric(df["value"], errors="coerce") if "value" in df else np.nan
    out["context"] = df["context"].map(_context_to_json) if "context" in df else None
    if "event_id" in df and df["event_id"].notna().all():
        out["event_id"] = df["event_id"].astype(str)
    else:
        given = df["event_id"] if "event_id" in df else pd.Series(None, index=df.index, dtype=object)
        generated = [
            make_event_id(u, i, e, t, s)
            for u, i, e, t, s in zip(out["user_id"], out["item_id"], out["event_type"], out["timestamp"],
                                     out["session_id"])
        ]
        out["event_id"] = given.where(given.notna(), pd.Series(generated, index=df.index)).astype(str)
    return out[EVENT_COLUMNS]


def normalize_items(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame to the item schema, one row per item_id (the last one wins).

    Args:
        df: raw items: item_id, and any of category, title, description, price, in_stock, created_at.

    Returns:
        The ITEM_COLUMNS columns with a fresh index; absent or null values become category ``"unknown"``,
        title and description ``""``, in_stock True; an unparseable price NaN, created_at NaT (UTC).
    """
    out = pd.DataFrame(index=df.index)
    out["item_id"] = df["item_id"].astype(str)
    out["category"] = df["category"].fillna("unknown").astype(str) if "category" in df else "unknown"
    for col in ("title", "description"):
        out[col] = df[col].fillna("").astype(str) if col in df else ""
    out["price"] = pd.to_numeric(df["price"], errors="coerce") if "price" in df else np.nan
    out["in_stock"] = df["in_stock"].fillna(True).astype(bool) if "in_stock" in df else True
    out["created_at"] = pd.to_datetime(df["created_at"], utc=True, errors="coerce") if "created_at" in df else pd.NaT
    return out[ITEM_COLUMNS].drop_duplicates("item_id", keep="last").reset_index(drop=True)


def normalize_users(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame to the user schema, one row per user_id (the last one wins).

    Args:
        df: raw users: user_id, and any of age, gender, region.

    Returns:
        The USER_COLUMNS columns with a fresh index; age as a float (NaN when absent or not a number),
        gender and region None when absent.
    """
    out = pd.DataFrame(index=df.index)
    out["user_id"] = df["user_id"].astype(str)
    out["age"] = pd.to_numeric(df["age"], errors="coerce") if "age" in df else np.nan
    for col in ("gender", "region"):
        out[col] = df[col].astype(object).where(df[col].notna(), None) if col in df else None
    return out[USER_COLUMNS].drop_duplicates("user_id", keep="last").reset_index(drop=True)


def with_actors(events: pd.DataFrame) -> pd.DataFrame:
    """Session-only data (no event names a user: anonymous shoppers, OTTO-style) trains with each
    session as the actor, so features, generators and the ranker have someone to learn about. Data
    with users is returned as is (its anonymous events still count for co-visitation and items).

    Args:
        events: normalized events.

    Returns:
        ``events`` itself when empty or when any event has a user_id, else a copy with user_id = session_id.
    """
    if events.empty or events["user_id"].notna().any():
        return events
    return events.assign(user_id=events["session_id"])
