"""Behavioral features, computed by the same code offline (snapshots for Feast) and online (/track).

``entity_features(events, points, ...)`` computes features for many (entity, as_of) points at once:
events are sorted by (entity, time) and every windowed count is a difference of cumulative sums found
with ``searchsorted``. Offline it is called with thousands of snapshot points, online with one point
(the user, now). Because both paths run this function, training and serving cannot disagree.

Windows are ``(as_of - w, as_of]``. Values that depend on the request time (recency, tenure) are not
stored; they are derived from the stored ``last_event_ts``/``first_event_ts`` by ``derive_user``.
"""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pandas as pd

from recops.ratings import decay, event_weights, to_rating
from recops.vocabulary import (
    BROWSE,
    CART,
    CLICK,
    DEFAULT_EVENT_WEIGHTS,
    FUNNEL,
    HISTORY_LEN,
    NEGATIVE,
    PURCHASE,
    RATING_HALF_LIFE_DAYS,
    VIEW,
)

WINDOWS_DAYS = (1, 7, 30)
MAX_CATEGORIES = 32  # category-affinity vectors keep the most common categories, the rest is "other"

USER_PREFIX, ITEM_PREFIX = "u_", "i_"


def _count_names(prefix: str) -> list[str]:
    return [f"{prefix}{t}_{w}d" for t in FUNNEL for w in WINDOWS_DAYS]


USER_FEATURES: dict[str, str] = {
    **{n: "int" for n in _count_names(USER_PREFIX)},
    "u_events_30d": "int",
    "u_view_to_click_30d": "float",
    "u_view_to_cart_30d": "float",
    "u_cart_to_purchase_30d": "float",
    "u_avg_price_paid": "float",
    "u_last_event_ts": "float",
    "u_first_event_ts": "float",
    "u_n_categories": "int",
    "u_top_category": "str",
    "u_top_category_share": "float",
    "u_category_affinity": "str",
}

# The user's recent items and their implicit ratings (Feast view ``user_recent``): online state,
# like a session's, so the offline table holds only each user's latest row (``user_recent``).
RECENT_FEATURES: dict[str, str] = {
    "u_recent_items": "str",  # JSON list, newest first, distinct
    "u_recent_ratings": "str",  # JSON {item: implicit rating 0-5} of the recent items, from all their events
}

# The live state of a session (Feast view ``session_state``): pushed on every /track, read by
# /session/recommend; intent is derived from it (``recops.models.intent``).
SESSION_FEATURES: dict[str, str] = {
    "s_user_id": "str",
    "s_items": "str",  # JSON list, newest first, distinct
    "s_categories": "str",  # JSON {category: events}
    "s_event_mix": "str",  # JSON {event_type: events}
    "s_n_events": "int",
    "s_n_items": "int",
    "s_first_ts": "float",
    "s_last_ts": "float",
    "s_dwell_seconds": "float",  # mean time between consecutive events
}

ITEM_FEATURES: dict[str, str] = {
    **{n: "int" for n in _count_names(ITEM_PREFIX)},
    "i_events_1d": "int",
    "i_events_7d": "int",
    "i_events_30d": "int",
    "i_events_total": "int",
    "i_trend": "float",
    "i_conversion_30d": "float",
    "i_last_event_ts": "float",
}

# Numeric user features the ranker reads (stored ones plus the request-time derived ones).
USER_MODEL_FEATURES = [n for n, t in USER_FEATURES.items() if t != "str" and not n.endswith("_ts")] + [
    "u_recency_hours",
    "u_tenure_days",
]
ITEM_MODEL_FEATURES = [n for n, t in ITEM_FEATURES.items() if not n.endswith("_ts")] + ["i_price", "i_age_days"]

_SHIFT = np.int64(1) << np.int64(42)  # entity code in the high bits, epoch milliseconds in the low bits


def _ms(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    return (pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]").astype("int64") // 1_000_000).to_numpy()


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.maximum(den, 1), 0.0)
    return np.clip(r, 0.0, 1.0)


def entity_features(
    events: pd.DataFrame,
    points: pd.DataFrame,
    key: str,
    prefix: str,
    item_category: pd.Series | None = None,
    categories: list[str] | None = None,
) -> pd.DataFrame:
    """Features of ``key`` entities at the ``(key, as_of)`` rows of ``points``.

    ``item_category`` (item_id -> category) and ``categories`` (the affinity vocabulary) are only
    used for user features (category affinity).

    Args:
        events: events with ``key``, ``timestamp`` and ``event_type`` (user features also read ``item_id``
            and ``value``, the price paid); rows without ``key`` are ignored. Any order.
        points: the ``(key, as_of)`` rows to compute features at; an event counts when its time is
            ``<= as_of``, and within window ``w`` when it is also ``> as_of - w``.
        key: the entity column, ``"user_id"`` or ``"item_id"``.
        prefix: ``USER_PREFIX`` computes ``USER_FEATURES``, anything else (``ITEM_PREFIX``) ``ITEM_FEATURES``.
        item_category: item_id -> category; ``None``: no category affinity (empty/zero affinity columns).
        categories: the affinity vocabulary (``category_vocabulary``), most common first; ``None``/empty:
            no category affinity.

    Returns:
        One row per row of ``points``, in that order: ``key`` (as ``str``), ``event_timestamp`` (``as_of``,
        UTC) and the features; ``*_event_ts`` are epoch seconds, NaN when the entity had no events yet.
    """
    ev = events[events[key].notna()]
    ents = pd.Index(pd.unique(pd.concat([ev[key], points[key]], ignore_index=True).astype(str)))
    ev_code = ents.get_indexer(ev[key].astype(str)).astype(np.int64)
    ev_ms = _ms(ev["timestamp"])
    order = np.lexsort((ev_ms, ev_code))
    ev_keys = ev_code[order] * _SHIFT + ev_ms[order]
    etype = ev["event_type"].to_numpy()[order]
    ev_ts = ev_ms[order] / 1000.0

    p_code = ents.get_indexer(points[key].astype(str)).astype(np.int64)
    p_ms = _ms(points["as_of"])
    hi = np.searchsorted(ev_keys, p_code * _SHIFT + p_ms, side="right")
    lo_all = np.searchsorted(ev_keys, p_code * _SHIFT, side="left")

    out = pd.DataFrame({key: points[key].astype(str).to_numpy(),
                        "event_timestamp": pd.to_datetime(points["as_of"], utc=True).to_numpy()})
    lo_w = {w: np.searchsorted(ev_keys, p_code * _SHIFT + p_ms - int(w * 86_400_000), side="right")
            for w in WINDOWS_DAYS}

    def cum(mask: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])

    counts: dict[tuple[str, int], np.ndarray] = {}
    for t in FUNNEL:
        c = cum(etype == t)
        for w in WINDOWS_DAYS:
            counts[(t, w)] = c[hi] - c[lo_w[w]]
            out[f"{prefix}{t}_{w}d"] = counts[(t, w)]
    c_all = np.arange(len(ev_keys) + 1)
    has = hi > lo_all
    out[f"{prefix}last_event_ts"] = np.where(has, ev_ts[np.maximum(hi - 1, 0)] if len(ev_ts) else 0.0, np.nan)

    if prefix == USER_PREFIX:
        out["u_events_30d"] = c_all[hi] - c_all[lo_w[30]]
        v, cl, ca, pu = (counts[(t, 30)] for t in (VIEW, CLICK, CART, PURCHASE))
        out["u_view_to_click_30d"] = _safe_ratio(cl, v)
        out["u_view_to_cart_30d"] = _safe_ratio(ca, v)
        out["u_cart_to_purchase_30d"] = _safe_ratio(pu, ca)
        is_p = etype == PURCHASE
        vals = np.nan_to_num(ev["value"].to_numpy(dtype=float)[order]) * is_p
        pv = np.concatenate([[0.0], np.cumsum(vals)])
        pc = cum(is_p & (vals > 0))
        n_paid = pc[hi] - pc[lo_all]
        out["u_avg_price_paid"] = np.where(n_paid > 0, (pv[hi] - pv[lo_all]) / np.maximum(n_paid, 1), 0.0)
        out["u_first_event_ts"] = np.where(has,
                                           ev_ts[np.minimum(lo_all, max(len(ev_ts) - 1, 0))] if len(ev_ts) else 0.0,
                                           np.nan)
        _add_category_affinity(out, ev, order, hi, lo_all, item_category, categories)
    else:
        out["i_events_1d"] = c_all[hi] - c_all[lo_w[1]]
        out["i_events_7d"] = c_all[hi] - c_all[lo_w[7]]
        out["i_events_30d"] = c_all[hi] - c_all[lo_w[30]]
        out["i_events_total"] = c_all[hi] - c_all[lo_all]
        act = lambda w: sum(counts[(t, w)] for t in BROWSE)
        out["i_trend"] = (act(1) * 7.0 + 1.0) / (act(7) + 1.0)
        out["i_conversion_30d"] = _safe_ratio(counts[(PURCHASE, 30)], counts[(VIEW, 30)])
    return out


def _add_category_affinity(out, ev, order, hi, lo, item_category, categories) -> None:
    if item_category is None or not categories:
        out["u_n_categories"] = 0
        out["u_top_category"] = ""
        out["u_top_category_share"] = 0.0
        out["u_category_affinity"] = "{}"
        return
    vocab = list(categories)[: MAX_CATEGORIES - 1] + ["other"]
    cat = ev["item_id"].map(item_category).fillna("other").to_numpy()[order]
    positive = ~np.isin(ev["event_type"].to_numpy()[order], list(NEGATIVE))
    code = pd.Index(vocab).get_indexer(cat)
    code[code < 0] = len(vocab) - 1
    onehot = np.zeros((len(cat) + 1, len(vocab)), dtype=np.int32)
    onehot[np.arange(1, len(cat) + 1)[positive], code[positive]] = 1
    np.cumsum(onehot, axis=0, out=onehot)
    vec = (onehot[hi] - onehot[lo]).astype(np.float64)
    total = vec.sum(axis=1)
    share = vec / np.maximum(total, 1)[:, None]
    out["u_n_categories"] = (vec > 0).sum(axis=1)
    top = share.argmax(axis=1)
    out["u_top_category"] = np.where(total > 0, np.asarray(vocab, dtype=object)[top], "")
    out["u_top_category_share"] = np.where(total > 0, share[np.arange(len(top)), top], 0.0)
    top5 = np.argsort(-share, axis=1)[:, :5]
    out["u_category_affinity"] = [
        json.dumps({vocab[j]: round(float(s[j]), 4) for j in idx if s[j] > 0}) for idx, s in zip(top5, share)
    ]


def recent_items(chronological: np.ndarray) -> str:
    """The newest ``HISTORY_LEN`` distinct items of a chronological run, as a JSON list.

    Args:
        chronological: item ids, oldest first (repeats allowed).

    Returns:
        A JSON list of at most ``HISTORY_LEN`` distinct item ids, newest first.
    """
    return json.dumps(list(dict.fromkeys(chronological[::-1].tolist()))[:HISTORY_LEN])


def user_recent(events: pd.DataFrame, points: pd.DataFrame,
                ratings: tuple[dict[str, float], float] | None = None) -> pd.DataFrame:
    """``RECENT_FEATURES`` of the users at the ``(user_id, as_of)`` rows of ``points``: the newest
    ``HISTORY_LEN`` distinct items and their implicit ratings (``ratings``: event-type weights and
    half-life in days, default the built-in ones; ``recops.ratings`` semantics) as of then.

    Args:
        events: events with ``user_id``, ``item_id``, ``event_type`` and ``timestamp``; anonymous rows
            (no ``user_id``) are ignored.
        points: the ``(user_id, as_of)`` rows; events at or before ``as_of`` count.
        ratings: ``(event-type weights, half-life in days)``; ``None``: the built-in defaults.

    Returns:
        One row per row of ``points``, in that order: ``user_id``, ``event_timestamp`` (``as_of``, UTC),
        ``u_recent_items`` (JSON list, newest first, distinct; taken from the user's last
        ``5 * HISTORY_LEN`` events) and ``u_recent_ratings`` (JSON ``{item: rating 0-5}``).
    """
    ev = events[events["user_id"].notna()]
    weights, half_life = ratings or (DEFAULT_EVENT_WEIGHTS, RATING_HALF_LIFE_DAYS)
    ev = ev.assign(_ts=_ms(ev["timestamp"]) / 1000.0).sort_values(["user_id", "_ts"], kind="stable")
    codes, names = pd.factorize(ev["item_id"].astype(str))
    w = event_weights(ev, weights)
    ts, users = ev["_ts"].to_numpy(), ev["user_id"].astype(str).to_numpy()
    as_of = _ms(points["as_of"]) / 1000.0
    lo_all = np.searchsorted(users, points["user_id"].astype(str).to_numpy(), side="left")
    hi_user = np.searchsorted(users, points["user_id"].astype(str).to_numpy(), side="right")
    recent, rated = [], []
    for lo, top, t in zip(lo_all, hi_user, as_of):
        h = lo + int(np.searchsorted(ts[lo:top], t, side="right"))
        mine = np.asarray(list(dict.fromkeys(codes[max(lo, h - 5 * HISTORY_LEN):h][::-1].tolist()))[:HISTORY_LEN],
                          dtype=np.int64)
        recent.append(json.dumps(names[mine].tolist()))
        rated.append(recent_ratings(mine, names, codes[lo:h], w[lo:h], ts[lo:h], t, half_life))
    return pd.DataFrame({"user_id": points["user_id"].astype(str).to_numpy(),
                         "event_timestamp": pd.to_datetime(points["as_of"], utc=True).to_numpy(),
                         "u_recent_items": recent, "u_recent_ratings": rated})


def recent_ratings(recent: np.ndarray, names: np.ndarray, codes: np.ndarray, weights: np.ndarray, ts: np.ndarray,
                   as_of: float, half_life_days: float) -> str:
    """The implicit ratings (``recops.ratings``: decayed weights summed per item, mapped to 0-5) of
    the ``recent`` item codes from all of the user's events (``codes``) on them, as a JSON object.

    Args:
        recent: distinct item codes to rate (newest first), indices into ``names``.
        names: item ids by code.
        codes: item codes of the user's events up to ``as_of`` (codes not in ``recent`` are ignored).
        weights: event-type weight of each event, aligned with ``codes``.
        ts: time of each event, epoch seconds, aligned with ``codes``.
        as_of: the time the ratings are decayed to, epoch seconds.
        half_life_days: decay half-life in days.

    Returns:
        A JSON object ``{item_id: rating 0-5}`` (4 decimals) in the order of ``recent``; ``"{}"`` when
        ``recent`` is empty.
    """
    if not len(recent):
        return "{}"
    order = np.argsort(recent)
    pos = np.minimum(np.searchsorted(recent[order], codes), len(recent) - 1)
    hit = recent[order][pos] == codes
    score = np.zeros(len(recent))
    score[order] = np.bincount(pos[hit], weights=weights[hit] * decay((as_of - ts[hit]) / 86400.0, half_life_days),
                               minlength=len(recent))
    return json.dumps({str(names[c]): round(float(r), 4) for c, r in zip(recent, to_rating(score))})


def session_states(events: pd.DataFrame, item_category: pd.Series | dict | None = None) -> pd.DataFrame:
    """The state of every session in ``events`` after its last event (``SESSION_FEATURES``), with
    ``session_id`` and ``event_timestamp`` (the last event's time). The same function builds the
    offline table and the state /track pushes, so both agree.

    Args:
        events: events with ``session_id``, ``user_id``, ``item_id``, ``event_type`` and ``timestamp``;
            rows without ``session_id`` are ignored.
        item_category: item_id -> category (``Series`` or ``dict``); unmapped items and ``None``: "unknown".

    Returns:
        One row per session: ``session_id``, ``event_timestamp`` (UTC) and ``SESSION_FEATURES``
        (``s_user_id`` is the session's last known user, "" when anonymous; times in epoch seconds).
        Empty (with those columns) when no event has a session.
    """
    ev = events[events["session_id"].notna()].sort_values(["session_id", "timestamp"], kind="stable")
    cols = ["session_id", "event_timestamp", *SESSION_FEATURES]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    cat = (ev["item_id"].map(item_category).fillna("unknown") if item_category is not None
           else pd.Series("unknown", index=ev.index))
    sid = ev["session_id"].astype(str).to_numpy()
    bounds = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1], True])
    ts = _ms(ev["timestamp"]) / 1000.0
    items, types, cats = ev["item_id"].astype(str).to_numpy(), ev["event_type"].to_numpy(), cat.astype(str).to_numpy()
    users = ev["user_id"].to_numpy()
    rows = []
    for a, b in pairwise(bounds):
        u = [x for x in users[a:b] if isinstance(x, str)]
        n = b - a
        rows.append((sid[a], ts[b - 1], u[-1] if u else "", recent_items(items[a:b]), _counts(cats[a:b]),
                     _counts(types[a:b]), n, len(set(items[a:b].tolist())), ts[a], ts[b - 1],
                     (ts[b - 1] - ts[a]) / (n - 1) if n > 1 else 0.0))
    out = pd.DataFrame(rows, columns=cols)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], unit="s", utc=True)
    return out


def _counts(values: np.ndarray) -> str:
    uniq, n = np.unique(values, return_counts=True)
    return json.dumps({str(u): int(c) for u, c in sorted(zip(uniq, n), key=lambda t: (-t[1], t[0]))})


def snapshot_points(events: pd.DataFrame, key: str, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """The times at which an entity's stored features change, for the offline (point-in-time) table.

    A snapshot is taken at the end of every day on which the entity had events and at the ends of
    the days on which those events leave the 1/7/30-day windows, so that a point-in-time lookup at
    any midnight returns exact values; plus one at ``until`` (the data's end) for every entity, the
    latest state that is materialized to the online store.

    Args:
        events: events with ``key`` and a tz-aware ``timestamp``; rows without ``key`` are ignored.
        key: the entity column, ``"user_id"`` or ``"item_id"``.
        until: the data's end; ``None``: the newest event's time. Day-end snapshots at or after it are dropped.

    Returns:
        Distinct ``(key, as_of)`` rows (``key`` as ``str``), for ``entity_features``/``user_recent``.
    """
    ev = events[events[key].notna()]
    until = until if until is not None else ev["timestamp"].max()
    day = ev["timestamp"].dt.floor("D")
    base = pd.DataFrame({key: ev[key].astype(str), "day": day}).drop_duplicates()
    frames = [base.assign(as_of=base["day"] + pd.Timedelta(days=1 + off)) for off in (0, 1, 7, 30)]
    pts = pd.concat(frames, ignore_index=True)[[key, "as_of"]]
    pts = pts[pts["as_of"] < until]
    latest = pd.DataFrame({key: pd.unique(ev[key].astype(str)), "as_of": until})
    return pd.concat([pts, latest], ignore_index=True).drop_duplicates().reset_index(drop=True)


def category_vocabulary(items: pd.DataFrame) -> list[str]:
    """The affinity vocabulary: categories by catalog size (ties by name), stable for one catalog.

    Args:
        items: the catalog, with a ``category`` column (missing: "unknown").

    Returns:
        The ``MAX_CATEGORIES - 1`` largest categories at most, largest first.
    """
    counts = items["category"].fillna("unknown").astype(str).value_counts()
    return sorted(counts.index, key=lambda c: (-counts[c], c))[: MAX_CATEGORIES - 1]


def user_features(events: pd.DataFrame, points: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """``USER_FEATURES`` at the ``(user_id, as_of)`` rows of ``points`` (see ``entity_features``).

    Args:
        events: the events (``user_id``, ``item_id``, ``event_type``, ``timestamp``, ``value``).
        points: the ``(user_id, as_of)`` rows.
        items: the catalog (``item_id``, ``category``) for category affinity; empty: no affinity.

    Returns:
        One row per point: ``user_id``, ``event_timestamp`` and the user features.
    """
    cat = items.set_index("item_id")["category"] if not items.empty else None
    return entity_features(events, points, "user_id", USER_PREFIX, cat,
                           category_vocabulary(items) if not items.empty else None)


def item_features(events: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """``ITEM_FEATURES`` at the ``(item_id, as_of)`` rows of ``points`` (see ``entity_features``).

    Args:
        events: the events (``item_id``, ``event_type``, ``timestamp``).
        points: the ``(item_id, as_of)`` rows.

    Returns:
        One row per point: ``item_id``, ``event_timestamp`` and the item features.
    """
    return entity_features(events, points, "item_id", ITEM_PREFIX)


def derive_values(last, first, now) -> tuple[np.ndarray, np.ndarray]:
    """Recency (hours) and tenure (days) at ``now`` from stored first/last event times (None/NaN: unknown).

    Args:
        last: last event time(s), epoch seconds (scalar or array-like; None/NaN/non-numeric: unknown).
        first: first event time(s), epoch seconds, aligned with ``last``.
        now: the request time, epoch seconds (a scalar or an array aligned with ``last``).

    Returns:
        ``(recency_hours, tenure_days)`` as float arrays; unknown recency is one year (8760 hours),
        unknown tenure 0.
    """
    last = np.asarray(pd.to_numeric(last, errors="coerce"), dtype=float)
    first = np.asarray(pd.to_numeric(first, errors="coerce"), dtype=float)
    recency = np.where(np.isnan(last), 24.0 * 365, (now - last) / 3600.0)
    tenure = np.where(np.isnan(first), 0.0, (now - first) / 86400.0)
    return recency, tenure


def derive_user(frame: pd.DataFrame, now: float | np.ndarray) -> pd.DataFrame:
    """Request-time features from stored timestamps (same code in training and serving).

    Args:
        frame: user feature rows with ``u_last_event_ts`` and ``u_first_event_ts`` (epoch seconds);
            modified in place.
        now: the request time(s), epoch seconds: one for all rows or one per row.

    Returns:
        ``frame`` itself, with ``u_recency_hours`` and ``u_tenure_days`` added.
    """
    frame["u_recency_hours"], frame["u_tenure_days"] = derive_values(frame["u_last_event_ts"],
                                                                     frame["u_first_event_ts"], now)
    return frame


def derive_user_dict(feats: dict, now: float) -> dict:
    """``derive_user`` for one user's online feature dict.

    Args:
        feats: one user's features (``u_last_event_ts``/``u_first_event_ts`` may be missing or None).
        now: the request time, epoch seconds.

    Returns:
        A copy of ``feats`` with ``u_recency_hours`` and ``u_tenure_days`` added.
    """
    rec, ten = derive_values(feats.get("u_last_event_ts"), feats.get("u_first_event_ts"), now)
    return {**feats, "u_recency_hours": float(rec), "u_tenure_days": float(ten)}
