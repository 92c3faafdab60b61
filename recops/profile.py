"""Behavioral profiles: the features behind ``GET /users/{id}/profile``, beyond ``USER_FEATURES``.

``profile_features(events, items, as_of)`` computes one row per user for all users at once (grouped
numpy/pandas, the offline path). ``user_profile`` answers for one user online by running the very same
function on that user's events, so the profile a user sees online and the offline table
cannot disagree. Only events at or before ``as_of`` count; every ratio is bounded to [0, 1] and is 0
when its denominator is empty, so a sparse user gets defined values instead of NaNs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recops.features import _safe_ratio
from recops.models.covisit import session_groups
from recops.vocabulary import CART, CART_ACTIVITY, CLICK, PURCHASE, VIEW

WINDOW_DAYS = 30  # "recent": the window (as_of - 30d, as_of], like the 30-day USER_FEATURES
RECENCY_SCALE_DAYS = 7.0  # recency_score = exp(-days since the last event / 7)
PEAK_RADIUS_HOURS = 2  # the preferred hour window is the peak hour +-2 hours (5 hours, wrapping at midnight)

PROFILE_FEATURES: dict[str, str] = {
    "p_active_days_30d": "int",  # distinct UTC days with events in the last 30 days
    "p_active_days_total": "int",
    "p_sessions_30d": "int",  # distinct sessions (recops.models.covisit.session_groups) touching the window
    "p_sessions_total": "int",
    "p_avg_session_events": "float",  # events per session, all time
    "p_avg_session_minutes": "float",  # first-to-last event span per session, all time
    "p_events_per_active_day": "float",  # all-time events / all-time active days
    "p_view_to_click": "float",  # all-time conversion rates, bounded to [0, 1], 0 without a denominator
    "p_click_to_cart": "float",
    "p_cart_to_purchase": "float",
    "p_view_to_purchase": "float",
    "p_cart_abandonment_rate": "float",  # share of distinct carted items never purchased
    "p_peak_hour": "int",  # UTC hour (0-23) with most events, ties -> the earliest hour
    "p_peak_hour_share": "float",  # share of events within PEAK_RADIUS_HOURS of the peak hour
    "p_peak_day": "int",  # weekday (0 = Monday) with most events, ties -> the earliest day
    "p_weekend_share": "float",
    "p_recency_score": "float",  # exp(-days since the last event / 7): 1 just now, ~0.01 after a month
    "p_category_entropy": "float",  # Shannon entropy of the category mix / log(catalog categories)
    "p_item_exploration_30d": "float",  # of the distinct items touched in the window, the share touched first there
    "p_category_exploration_30d": "float",  # the same for categories
    "p_repeat_item_rate": "float",  # share of distinct items the user came back to in another session
    "p_distinct_items": "int",
    "p_avg_price_viewed": "float",  # catalog price, 0 when none known
    "p_avg_price_purchased": "float",
    "p_price_sensitivity": "float",  # 0.5 neutral, -> 1 buys/carts far below the category median price
}

# The values of a user without events (only the online path sees such a user).
EMPTY_FEATURES: dict[str, float | int | None] = {
    **{n: (0 if t == "int" else 0.0) for n, t in PROFILE_FEATURES.items()},
    "p_peak_hour": None,
    "p_peak_day": None,
    "p_price_sensitivity": 0.5,
}


def _utc(ts) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


@dataclass(frozen=True)
class Catalog:
    """Item -> category, price (non-positive: unknown) and the median price of its category.

    ``n_categories`` (the catalog's, at least 2) normalises the category entropy, so that a user's
    diversity is measured against what the catalog offers, not against what the user happened to see.
    Build it once per items table (``Catalog.of``) when profiling many users one at a time.
    """

    info: pd.DataFrame
    n_categories: int

    @classmethod
    def of(cls, items: pd.DataFrame | Catalog) -> Catalog:
        """The catalog of an items table; a Catalog is returned as is.

        Args:
            items: items with item_id and optionally category (absent or null: ``"unknown"``) and price
                (unparseable, non-finite or non-positive: unknown); a repeated item_id's last row counts.

        Returns:
            The catalog.
        """
        if isinstance(items, Catalog):
            return items
        cat = items.drop_duplicates("item_id", keep="last").set_index("item_id")
        cat.index = cat.index.astype(str)
        category = (cat["category"].fillna("unknown").astype(str) if "category" in cat
                    else pd.Series("unknown", index=cat.index))
        price = pd.to_numeric(cat["price"], errors="coerce") if "price" in cat else pd.Series(np.nan, index=cat.index)
        price = price.where(np.isfinite(price) & (price > 0))
        info = pd.DataFrame({"category": category, "price": price,
                             "median": price.groupby(category).transform("median")})
        return cls(info, max(int(category.nunique()), 2))


def _prepare(events: pd.DataFrame, catalog: Catalog, as_of: pd.Timestamp) -> pd.DataFrame:
    """The user events at or before ``as_of``: ids, type, session, epoch ns, catalog category and prices."""
    ts = pd.to_datetime(events["timestamp"], utc=True)
    keep = (events["user_id"].notna() & (ts <= as_of)).to_numpy()
    ev = events.loc[keep, ["user_id", "item_id", "event_type", "session_id"]].assign(timestamp=ts[keep])
    session = session_groups(ev)
    item_id = ev["item_id"].astype(str).to_numpy()
    info = catalog.info.reindex(item_id)
    return pd.DataFrame({
        "user_id": ev["user_id"].astype(str).to_numpy(),
        "item_id": item_id,
        "event_type": ev["event_type"].to_numpy(),
        "session": session.astype(str).to_numpy(),
        "ns": ev["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64),
        "category": info["category"].fillna("unknown").to_numpy(),
        "price": info["price"].to_numpy(dtype=float),
        "median": info["median"].to_numpy(dtype=float),
    })


def _per_user(u: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(u, weights=weights, minlength=n)


def _distinct(u: np.ndarray, key, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """How many distinct ``key`` values each user has (among the rows in ``mask``)."""
    codes = pd.factorize(np.asarray(key))[0].astype(np.int64)
    width = codes.max(initial=0) + 1
    pair = u * width + codes
    return _per_user(np.unique(pair if mask is None else pair[mask]) // width, n)


def _ratio(num, den) -> np.ndarray:
    return _safe_ratio(np.asarray(num, dtype=float), np.asarray(den, dtype=float))


def _pairs(u: np.ndarray, key) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (user, key) pairs: each pair's user code, and each row's pair index."""
    codes = pd.factorize(np.asarray(key))[0].astype(np.int64)
    width = codes.max(initial=0) + 1
    uniq, inverse = np.unique(u * width + codes, return_inverse=True)
    return uniq // width, inverse


def _pair_min(inverse: np.ndarray, n_pairs: int, t: np.ndarray) -> np.ndarray:
    lo = np.full(n_pairs, np.iinfo(np.int64).max)
    np.minimum.at(lo, inverse, t)
    return lo


def _activity(ev: pd.DataFrame, u: np.ndarray, n: int, recent: np.ndarray) -> dict[str, np.ndarray]:
    t = ev["ns"].to_numpy()
    day = t // 86_400_000_000_000
    events = _per_user(u, n)
    su, inv = _pairs(u, ev["session"])
    days, sessions = _distinct(u, day, n), _per_user(su, n)
    minutes = (-_pair_min(inv, len(su), -t) - _pair_min(inv, len(su), t)) / 60e9
    return {
        "p_active_days_30d": _distinct(u, day, n, recent),
        "p_active_days_total": days,
        "p_sessions_30d": _distinct(u, ev["session"], n, recent),
        "p_sessions_total": sessions,
        "p_avg_session_events": events / np.maximum(sessions, 1),
        "p_avg_session_minutes": _per_user(su, n, minutes) / np.maximum(sessions, 1),
        "p_events_per_active_day": events / np.maximum(days, 1),
    }


def _funnel(ev: pd.DataFrame, u: np.ndarray, n: int) -> dict[str, np.ndarray]:
    et = ev["event_type"].to_numpy()
    view, click, cart, buy = (_per_user(u, n, (et == t).astype(float)) for t in (VIEW, CLICK, CART, PURCHASE))
    iu, inv = _pairs(u, ev["item_id"])
    carted = np.bincount(inv, (et == CART).astype(float), len(iu)) > 0
    bought = np.bincount(inv, (et == PURCHASE).astype(float), len(iu)) > 0
    abandoned = _per_user(iu, n, (carted & ~bought).astype(float))
    return {
        "p_view_to_click": _ratio(click, view),
        "p_click_to_cart": _ratio(cart, click),
        "p_cart_to_purchase": _ratio(buy, cart),
        "p_view_to_purchase": _ratio(buy, view),
        "p_cart_abandonment_rate": _ratio(abandoned, _per_user(iu, n, carted.astype(float))),
    }


def _mode_and_share(u: np.ndarray, slot: np.ndarray, n: int, size: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's most frequent slot (ties: the smallest, argmax takes the first) and the share of
    their events within ``radius`` slots of it, wrapping around (hour 23 neighbours hour 0)."""
    counts = np.zeros((n, size))
    np.add.at(counts, (u, slot), 1.0)
    peak = counts.argmax(axis=1)
    near = sum(counts[np.arange(n), (peak + off) % size] for off in range(-radius, radius + 1))
    return peak.astype(np.int64), near / np.maximum(counts.sum(axis=1), 1)


def _timing(ev: pd.DataFrame, u: np.ndarray, n: int, as_of: pd.Timestamp) -> dict[str, np.ndarray]:
    hours = ev["ns"].to_numpy() // 3_600_000_000_000
    hour, weekday = hours % 24, (hours // 24 + 3) % 7  # 1970-01-01 was a Thursday (3)
    peak_hour, hour_share = _mode_and_share(u, hour, n, 24, PEAK_RADIUS_HOURS)
    peak_day, _ = _mode_and_share(u, weekday, n, 7, 0)
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, u, ev["ns"].to_numpy())
    days_since = np.maximum(as_of.value - last, 0) / 86_400e9
    return {
        "p_peak_hour": peak_hour,
        "p_peak_hour_share": hour_share,
        "p_peak_day": peak_day,
        "p_weekend_share": _per_user(u, n, (weekday >= 5).astype(float)) / np.maximum(_per_user(u, n), 1),
        "p_recency_score": np.exp(-days_since / RECENCY_SCALE_DAYS),
    }


def _new_share(u: np.ndarray, key, t: np.ndarray, since_ns: int, recent: np.ndarray, n: int) -> np.ndarray:
    """Of the distinct ``key`` values a user touched in the window, the share first touched in it."""
    pu, inv = _pairs(u, key)
    new = _per_user(pu, n, (_pair_min(inv, len(pu), t) > since_ns).astype(float))
    return _ratio(new, _distinct(u, key, n, recent))


def _diversity(ev: pd.DataFrame, u: np.ndarray, n: int, recent: np.ndarray, since_ns: int,
               n_categories: int) -> dict[str, np.ndarray]:
    cu, inv = _pairs(u, ev["category"])  # sparse (user, category) counts: catalogs may have many categories
    p = np.bincount(inv, minlength=len(cu)) / _per_user(u, n)[cu]
    entropy = -_per_user(cu, n, p * np.log(p))
    t = ev["ns"].to_numpy()
    iu, inv = _pairs(u, ev["item_id"])
    item_sessions = np.bincount(_pairs(inv, ev["session"])[0], minlength=len(iu))  # distinct sessions per item
    return {
        "p_category_entropy": np.clip(entropy / math.log(n_categories), 0.0, 1.0) + 0.0,  # + 0.0: no -0.0
        "p_item_exploration_30d": _new_share(u, ev["item_id"], t, since_ns, recent, n),
        "p_category_exploration_30d": _new_share(u, ev["category"], t, since_ns, recent, n),
        "p_repeat_item_rate": _ratio(_per_user(iu, n, (item_sessions > 1).astype(float)), _per_user(iu, n)),
        "p_distinct_items": _per_user(iu, n).astype(np.int64),
    }


def _mean_where(u: np.ndarray, n: int, values: np.ndarray, mask: np.ndarray, default: float) -> np.ndarray:
    ok = mask & np.isfinite(values)
    count = _per_user(u[ok], n)
    return np.where(count > 0, _per_user(u[ok], n, values[ok]) / np.maximum(count, 1), default)


def _prices(ev: pd.DataFrame, u: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Price level and sensitivity from catalog prices (paid event values are u_avg_price_paid's).

    Sensitivity is 1 / (1 + geometric mean of price / category median price) over the add_to_cart
    and purchase events: 0.5 when the user pays the median, towards 1 far below it, towards 0 far above
    it, and 0.5 without such items. The geometric mean makes half and twice the median symmetric.
    """
    et = ev["event_type"].to_numpy()
    price, median = ev["price"].to_numpy(), ev["median"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_rel = np.log(price / median)
    mean_log = _mean_where(u, n, log_rel, np.isin(et, CART_ACTIVITY), 0.0)
    return {
        "p_avg_price_viewed": _mean_where(u, n, price, et == VIEW, 0.0),
        "p_avg_price_purchased": _mean_where(u, n, price, et == PURCHASE, 0.0),
        "p_price_sensitivity": 1.0 / (1.0 + np.exp(np.clip(mean_log, -50.0, 50.0))),
    }


def _features(ev: pd.DataFrame, as_of: pd.Timestamp, n_categories: int) -> pd.DataFrame:
    u, users = pd.factorize(ev["user_id"], sort=True)
    u, n = u.astype(np.int64), len(users)
    since_ns = (as_of - pd.Timedelta(days=WINDOW_DAYS)).value
    recent = ev["ns"].to_numpy() > since_ns
    cols = {**_activity(ev, u, n, recent), **_funnel(ev, u, n), **_timing(ev, u, n, as_of),
            **_diversity(ev, u, n, recent, since_ns, n_categories), **_prices(ev, u, n)}
    typed = {k: np.asarray(cols[k], dtype=np.int64 if t == "int" else np.float64) for k, t in PROFILE_FEATURES.items()}
    return pd.DataFrame({"user_id": np.asarray(users, dtype=object), **typed})


def profile_features(events: pd.DataFrame, items: pd.DataFrame | Catalog, as_of) -> pd.DataFrame:
    """One row per user with events at or before ``as_of`` (sorted by user_id): ``user_id`` and the
    PROFILE_FEATURES columns. ``events`` needs user_id, item_id, event_type, timestamp, session_id;
    ``items`` item_id, category, price.

    Args:
        events: the events (any users); those without a user_id or after ``as_of`` are ignored.
        items: the items table, or a Catalog built from it (see Catalog.of).
        as_of: the profile time, anything ``pd.Timestamp`` takes (naive: UTC).

    Returns:
        The profile table; no rows when no event counts.
    """
    as_of = _utc(as_of)
    catalog = Catalog.of(items)
    return _features(_prepare(events, catalog, as_of), as_of, catalog.n_categories)


def _jsonable(v):
    """Plain Python values: numpy scalars, NaN and pandas' missing values are not JSON."""
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def _static(user_row: dict | None) -> dict:
    row = user_row or {}
    return {k: _jsonable(row.get(k)) for k in ("age", "gender", "region")}


def _preferences(ev: pd.DataFrame, feats: dict, top: int) -> dict:
    """What the user gravitates to: categories by share of events, the price band (p25-p75) of the
    distinct items they touched, their most common action and their active hours (UTC, peak +-2 h)."""
    if ev.empty:
        return {"top_categories": [], "price_range": None, "favourite_event_type": None, "active_hours": None}
    cats, counts = np.unique(ev["category"].to_numpy(dtype=str), return_counts=True)  # sorted: ties by name
    order = np.argsort(-counts, kind="stable")[:top]
    _, first = np.unique(ev["item_id"].to_numpy(), return_index=True)
    prices = ev["price"].to_numpy()[first]
    prices = prices[np.isfinite(prices)]
    kinds, kind_counts = np.unique(ev["event_type"].to_numpy(dtype=str), return_counts=True)
    peak = feats["p_peak_hour"]
    return {
        "top_categories": [{"category": str(cats[i]), "share": round(counts[i] / len(ev), 4)} for i in order],
        "price_range": ({"p25": float(np.quantile(prices, 0.25)), "p75": float(np.quantile(prices, 0.75))}
                        if len(prices) else None),
        "favourite_event_type": str(kinds[np.argmax(kind_counts)]),
        "active_hours": {"from": (peak - PEAK_RADIUS_HOURS) % 24, "to": (peak + PEAK_RADIUS_HOURS) % 24},
    }


def user_profile(events_of_user: pd.DataFrame, items: pd.DataFrame | Catalog, user_row: dict | None = None, as_of=None,
                 user_id: str | None = None, top_categories: int = 5) -> dict:
    """One user's profile at ``as_of`` (default: now): static attributes, preferences and features.

    The features come from ``profile_features`` run on this user's events, so they equal the user's
    row of the offline table. The user is ``user_id``, else ``user_row["user_id"]``, else the one
    user of ``events_of_user``; other users' events are ignored. No events: EMPTY_FEATURES.

    Args:
        events_of_user: the user's events (columns as for profile_features).
        items: the items table, or a Catalog (build it once when profiling many users).
        user_row: the user's row of the users table (``EventStore.user_row``); None: no static attributes.
        as_of: the profile time (naive: UTC); None: now.
        user_id: the user; None: see above.
        top_categories: how many categories the preferences list.

    Returns:
        ``user_id`` (None when none could be told), ``static`` (age, gender, region; None where
        unknown), ``preferences`` (top_categories with their share of events, price_range p25/p75,
        favourite_event_type, active_hours in UTC; empty or None without events) and ``features``
        (PROFILE_FEATURES name -> value), all JSON-ready.
    """
    as_of = _utc(as_of if as_of is not None else pd.Timestamp.now(tz="UTC"))
    uid = user_id or (user_row or {}).get("user_id")
    if uid is None and events_of_user["user_id"].notna().any():
        uid = str(events_of_user["user_id"].dropna().iloc[0])
    mine = (events_of_user[events_of_user["user_id"].astype(str) == str(uid)] if uid is not None
            else events_of_user.iloc[:0])
    catalog = Catalog.of(items)
    ev = _prepare(mine, catalog, as_of)
    table = _features(ev, as_of, catalog.n_categories)  # the offline code, on one user's events
    feats = dict(EMPTY_FEATURES) if table.empty else {k: _jsonable(v) for k, v in table.iloc[0].drop("user_id").items()}
    prefs = _preferences(ev, feats, top_categories)
    return {"user_id": uid, "static": _static(user_row), "preferences": prefs, "features": feats}
