"""A synthetic behavioral-commerce event generator with planted structure that tests can check.

Planted structure (returned in ``SyntheticData.truth``):
- users have latent category tastes that correlate with their demographic segment;
- sessions browse -> click -> cart -> purchase at realistic funnel rates;
- sequential complements: after item A, the next item is often ``complement[A]``;
- popularity drifts over the period (some items rise, some fall);
- new users sign up and new items appear during the period;
- price-sensitive users pick and buy cheaper items;
- a configurable share of malformed rows (which validation must quarantine).

The work is vectorized across sessions, one session step at a time, so 1M events take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

REGIONS = np.array(["north", "south", "east", "west", "central"])
GENDERS = np.array(["F", "M"])
DEVICES = np.array(["mobile", "desktop", "tablet"])
CATEGORY_NAMES = np.array(
    ["electronics", "books", "fashion", "home", "sports", "beauty", "toys", "grocery", "garden", "music", "games",
     "pets", "auto", "office", "health", "jewelry"]
)


@dataclass
class SyntheticData:
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    truth: dict = field(default_factory=dict)


def _segment(age: np.ndarray, gender_idx: np.ndarray, region_idx: np.ndarray) -> np.ndarray:
    age_group = np.digitize(age, [30, 45, 60])  # 0..3
    return (age_group * len(GENDERS) + gender_idx) * len(REGIONS) + region_idx


def generate(
    n_events: int = 100_000,
    n_users: int | None = None,
    n_items: int | None = None,
    n_categories: int = 12,
    days: float = 60.0,
    end: str | pd.Timestamp | None = None,
    bad_share: float = 0.0,
    complement_prob: float = 0.35,
    seed: int = 42,
    shift_at: str | pd.Timestamp | None = None,
    shift: float = 0.0,
    popularity_drift: float = 1.2,
    new_share: float = 1.0,
) -> SyntheticData:
    """Generate about ``n_events`` valid events (plus ``bad_share`` malformed ones).

    Args:
        n_events: the target number of valid events (trimmed to it when the sessions yield more).
        n_users: None: ``max(50, n_events // 40)``.
        n_items: None: ``max(40, min(20_000, n_events // 150))``.
        n_categories: how many categories, at most len(CATEGORY_NAMES).
        days: the length of the period, in days.
        end: the end of the period (UTC); None: today's midnight UTC.
        bad_share: malformed rows appended, as a share of the valid events (at least one when > 0).
        complement_prob: the probability that a session step goes to the previous item's complement.
        seed: the random seed.
        shift_at: a planted shift: from this time on, category tastes move (every user's taste for
            category c is multiplied by ``exp(shift * z_c)``, z_c standard normal, then renormalised).
            None: tastes never move.
        shift: the size of that shift (0: none; 0.5: a clear move; 1: a large one).
        popularity_drift: the spread of each item's log-popularity change over the period (0: every
            item keeps its popularity: stationary data, with ``new_share=0``).
        new_share: scales the shares of items and users that appear during the period (1: the
            default 8% and 10%; 0: none).

    Returns:
        Events, items, users and the planted ``truth``: complement, user_top_category, taste (user ->
        their category tastes, a row summing to 1 over ``CATEGORY_NAMES[:n_categories]``),
        segment_categories, price_sensitivity, rising_items, new_users, new_items, start, end.
    """
    rng = np.random.default_rng(seed)
    n_users = n_users or max(50, n_events // 40)
    n_items = n_items or max(40, min(20_000, n_events // 150))
    n_categories = min(n_categories, len(CATEGORY_NAMES))
    end_ts = pd.Timestamp(end) if end is not None else pd.Timestamp.now(tz="UTC").normalize()
    end_ts = end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")
    end_s = end_ts.value / 1e9
    start_s = end_s - days * 86400.0

    # -- items ----------------------------------------------------------------------------------
    item_cat = rng.integers(0, n_categories, n_items)
    cat_price_level = rng.lognormal(3.0, 0.6, n_categories)
    price = np.round(cat_price_level[item_cat] * rng.lognormal(0.0, 0.5, n_items), 2)
    base_pop = rng.pareto(1.2, n_items) + 1.0
    drift = rng.normal(0.0, 1.0, n_items) * popularity_drift  # log-popularity change over the whole period
    is_new_item = rng.random(n_items) < 0.08 * new_share
    created = np.where(is_new_item, rng.uniform(start_s + 0.3 * (end_s - start_s), end_s - 86400, n_items),
                       start_s - rng.uniform(0, 365 * 86400, n_items))
    # Complements: an item in a "paired" category (c -> c+1), so sequences cross categories.
    complement = np.empty(n_items, dtype=np.int64)
    by_cat = [np.flatnonzero(item_cat == c) for c in range(n_categories)]
    for c in range(n_categories):
        pool = by_cat[(c + 1) % n_categories]
        if len(pool) == 0:
            pool = np.arange(n_items)
        complement[by_cat[c]] = rng.choice(pool, size=len(by_cat[c]))
    in_stock = rng.random(n_items) > 0.03

    # -- users ----------------------------------------------------------------------------------
    age = np.clip(rng.normal(38, 12, n_users), 18, 80).round()
    gender_idx = rng.integers(0, len(GENDERS), n_users)
    region_idx = rng.integers(0, len(REGIONS), n_users)
    segment = _segment(age, gender_idx, region_idx)
    n_segments = 4 * len(GENDERS) * len(REGIONS)
    seg_pref = rng.integers(0, n_categories, (n_segments, 2))  # each segment loves two categories
    alpha = np.full((n_users, n_categories), 0.3)
    alpha[np.arange(n_users), seg_pref[segment, 0]] += 4.0
    alpha[np.arange(n_users), seg_pref[segment, 1]] += 2.0
    taste = np.vstack([rng.dirichlet(a) for a in alpha]) if n_users <= 5000 else _dirichlet_rows(rng, alpha)
    price_sens = rng.beta(2, 2, n_users)
    activity = rng.lognormal(0, 1.0, n_users)
    is_new_user = rng.random(n_users) < 0.1 * new_share
    signup = np.where(is_new_user, rng.uniform(start_s + 0.6 * (end_s - start_s), end_s - 3600, n_users),
                      start_s - rng.uniform(0, 365 * 86400, n_users))
    peak_hour = rng.choice([9, 13, 20, 21, 22], n_users)

    # -- sessions -------------------------------------------------------------------------------
    touches_per_event = 1.0 / 1.75  # a touched item yields ~1.75 events on average
    n_sessions = max(1, int(n_events * touches_per_event / 6.0))
    sess_user = rng.choice(n_users, n_sessions, p=activity / activity.sum())
    sess_len = np.clip(rng.geometric(1 / 6.0, n_sessions), 1, 40)
    lo = np.maximum(signup[sess_user], start_s)
    day = np.floor(rng.uniform(lo, end_s - 3600) / 86400) * 86400
    hour = (peak_hour[sess_user] + rng.normal(0, 2.5, n_sessions)) % 24
    sess_start = np.clip(day + hour * 3600, lo, end_s - 3600)
    sess_device = rng.integers(0, len(DEVICES), n_sessions)

    n_buckets = 10
    cheap = np.zeros(n_items, dtype=bool)
    for c in range(n_categories):
        idx = by_cat[c]
        if len(idx):
            cheap[idx] = price[idx] <= np.median(price[idx])

    # per (bucket, category, cheap) cumulative item distributions, honouring creation dates + drift
    cdfs: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for b in range(n_buckets):
        t_start = start_s + b / n_buckets * (end_s - start_s)
        frac = (b + 0.5) / n_buckets
        w = base_pop * np.exp(drift * frac) * (created <= t_start)  # only items that exist all bucket long
        for c in range(n_categories):
            for ch in (0, 1):
                idx = by_cat[c][cheap[by_cat[c]] == bool(ch)] if ch else by_cat[c]
                ww = w[idx]
                if len(idx) == 0 or ww.sum() <= 0:
                    idx, ww = by_cat[c], np.ones(len(by_cat[c]))
                    if len(idx) == 0:
                        idx, ww = np.arange(n_items), np.ones(n_items)
                cdfs[(b, c, ch)] = (idx, np.cumsum(ww) / ww.sum())
    taste_cdf = np.cumsum(taste, axis=1)
    shift_ts = None if shift_at is None else pd.Timestamp(shift_at)
    shift_s = np.inf if shift_ts is None else (shift_ts if shift_ts.tzinfo else shift_ts.tz_localize("UTC")).value / 1e9
    moved = taste * np.exp(shift * np.random.default_rng(seed + 1).normal(0.0, 1.0, n_categories))
    moved /= moved.sum(axis=1, keepdims=True)
    moved_cdf = np.cumsum(moved, axis=1)

    max_len = int(sess_len.max())
    touch_sess, touch_item, touch_time = [], [], []
    cur_time = sess_start.copy()
    prev_item = np.full(n_sessions, -1)
    for step in range(max_len):
        active = np.flatnonzero(sess_len > step)
        u = sess_user[active]
        r = rng.random(len(active))
        chosen = np.empty(len(active), dtype=np.int64)
        has_prev = prev_item[active] >= 0
        use_comp = has_prev & (r < complement_prob)
        same_cat = has_prev & ~use_comp & (r < complement_prob + 0.3)
        fresh = ~use_comp
        chosen[use_comp] = complement[prev_item[active[use_comp]]]
        after = cur_time[active] >= shift_s
        cat = (np.where(after[:, None], moved_cdf[u], taste_cdf[u]) < rng.random(len(active))[:, None]).sum(1)
        cat = np.minimum(cat, n_categories - 1)
        cat[same_cat] = item_cat[prev_item[active[same_cat]]]
        bucket = np.clip(((cur_time[active] - start_s) / (end_s - start_s) * n_buckets).astype(int), 0, n_buckets - 1)
        wants_cheap = (rng.random(len(active)) < price_sens[u]).astype(int)
        key = (bucket * n_categories + cat) * 2 + wants_cheap
        f_idx = np.flatnonzero(fresh)
        for kv in np.unique(key[f_idx]):
            sel = f_idx[key[f_idx] == kv]
            b, rest = divmod(int(kv), n_categories * 2)
            c, ch = divmod(rest, 2)
            items_c, cdf = cdfs[(b, c, ch)]
            chosen[sel] = items_c[np.minimum(np.searchsorted(cdf, rng.random(len(sel))), len(items_c) - 1)]
        # a complement that does not exist yet falls back to the previous item's category pick
        not_yet = use_comp & (created[chosen] > cur_time[active])
        chosen[not_yet] = prev_item[active[not_yet]]
        touch_sess.append(active)
        touch_item.append(chosen)
        touch_time.append(cur_time[active].copy())
        prev_item[active] = chosen
        cur_time[active] += rng.exponential(45.0, len(active)) + 5.0

    t_sess = np.concatenate(touch_sess)
    t_item = np.concatenate(touch_item)
    t_time = np.concatenate(touch_time)
    t_user = sess_user[t_sess]
    n_t = len(t_sess)

    # -- funnel: view -> click -> cart -> purchase ----------------------------------------------
    match = np.where(t_time >= shift_s, moved[t_user, item_cat[t_item]],
                     taste[t_user, item_cat[t_item]]) * n_categories  # >1 when the user likes the category
    rel_price = price[t_item] / cat_price_level[item_cat[t_item]]
    price_pen = np.exp(-price_sens[t_user] * np.log1p(rel_price) * 1.5)
    p_click = np.clip(0.35 * np.sqrt(match), 0.05, 0.9)
    clicked = rng.random(n_t) < p_click
    p_cart = np.clip(0.18 * np.sqrt(match) * price_pen, 0.01, 0.8)
    carted = clicked & (rng.random(n_t) < p_cart)
    bought = carted & (rng.random(n_t) < 0.5 * price_pen + 0.1)
    removed = carted & ~bought & (rng.random(n_t) < 0.3)
    wished = ~carted & (rng.random(n_t) < 0.02 * match)

    parts = [(np.ones(n_t, bool), "view", 0.0), (clicked, "click", 4.0), (wished, "wishlist", 6.0),
             (carted, "add_to_cart", 20.0), (removed, "remove_from_cart", 60.0), (bought, "purchase", 90.0)]
    ev_idx, ev_type, ev_dt = [], [], []
    for mask, name, dt in parts:
        idx = np.flatnonzero(mask)
        ev_idx.append(idx)
        ev_type.append(np.full(len(idx), name, dtype=object))
        ev_dt.append(np.full(len(idx), dt))
    ev_idx = np.concatenate(ev_idx)
    ev_type = np.concatenate(ev_type)
    ev_ts = t_time[ev_idx] + np.concatenate(ev_dt) + rng.uniform(0, 3, len(ev_idx))
    ev_ts = np.minimum(ev_ts, end_s - 1)
    order = np.lexsort((ev_ts, t_sess[ev_idx]))
    ev_idx, ev_type, ev_ts = ev_idx[order], ev_type[order], ev_ts[order]
    if len(ev_idx) > n_events:  # trim whole-event tail to the requested size (keeps order)
        keep = np.sort(rng.choice(len(ev_idx), n_events, replace=False))
        ev_idx, ev_type, ev_ts = ev_idx[keep], ev_type[keep], ev_ts[keep]

    e_user = t_user[ev_idx]
    e_item = t_item[ev_idx]
    e_sess = t_sess[ev_idx]
    value = np.where(np.isin(ev_type, ["add_to_cart", "purchase", "remove_from_cart"]), price[e_item], np.nan)
    region_of = REGIONS[region_idx[e_user]]
    device_of = DEVICES[sess_device[e_sess]]
    context = pd.Series([f'{{"device": "{d}", "region": "{r}"}}' for d, r in zip(device_of, region_of)])
    events = pd.DataFrame({
        "event_id": pd.Series(np.arange(len(ev_idx))).map(lambda i: f"e{seed}-{i}"),
        "user_id": pd.Series(e_user).map(lambda i: f"u{i}"),
        "item_id": pd.Series(e_item).map(lambda i: f"i{i}"),
        "event_type": ev_type,
        "timestamp": pd.to_datetime(ev_ts, unit="s", utc=True),
        "session_id": pd.Series(e_sess).map(lambda i: f"s{seed}-{i}"),
        "value": value,
        "context": context,
    })
    if bad_share > 0:
        events = _corrupt(events, bad_share, rng, end_ts)

    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "category": CATEGORY_NAMES[item_cat],
        "title": [f"{CATEGORY_NAMES[c]} item {i}" for i, c in enumerate(item_cat)],
        "description": [f"A {'budget' if ch else 'premium'} {CATEGORY_NAMES[c]} product"
                        for c, ch in zip(item_cat, cheap)],
        "price": price,
        "in_stock": in_stock,
        "created_at": pd.to_datetime(created, unit="s", utc=True),
    })
    users = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n_users)],
        "age": age,
        "gender": GENDERS[gender_idx],
        "region": REGIONS[region_idx],
    })
    truth = {
        "complement": {f"i{i}": f"i{complement[i]}" for i in range(n_items)},
        "user_top_category": {f"u{i}": CATEGORY_NAMES[int(np.argmax(taste[i]))] for i in range(n_users)},
        "taste": dict(zip([f"u{i}" for i in range(n_users)], taste)),  # row views of one array: no copy
        "segment_categories": {int(s): [str(CATEGORY_NAMES[c]) for c in seg_pref[s]] for s in range(n_segments)},
        "price_sensitivity": {f"u{i}": float(price_sens[i]) for i in range(n_users)},
        "rising_items": [f"i{i}" for i in np.argsort(-drift)[: max(1, n_items // 20)]],
        "new_users": [f"u{i}" for i in np.flatnonzero(is_new_user)],
        "new_items": [f"i{i}" for i in np.flatnonzero(is_new_item)],
        "start": pd.Timestamp(start_s, unit="s", tz="UTC"),
        "end": end_ts,
    }
    return SyntheticData(events=events, items=items, users=users, truth=truth)


def _dirichlet_rows(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    g = rng.gamma(alpha)
    return g / g.sum(axis=1, keepdims=True)


BAD_KINDS = ("no_actor", "unknown_type", "future_ts", "ancient_ts", "bad_value", "null_item")


def _corrupt(events: pd.DataFrame, share: float, rng: np.random.Generator, end_ts: pd.Timestamp) -> pd.DataFrame:
    """Append malformed copies of random rows (each broken in one known way)."""
    n_bad = max(1, int(len(events) * share))
    bad = events.sample(n=n_bad, random_state=int(rng.integers(1 << 31)), replace=n_bad > len(events)).copy()
    bad["event_id"] = [f"bad-{i}" for i in range(n_bad)]
    kinds = rng.choice(BAD_KINDS, n_bad)
    bad["timestamp"] = bad["timestamp"].astype(object)
    bad["value"] = bad["value"].astype(object)
    for i, kind in enumerate(kinds):
        col = bad.columns.get_loc
        if kind == "no_actor":  # neither a user nor a session: nobody to attribute it to
            bad.iat[i, col("user_id")] = None
            bad.iat[i, col("session_id")] = None
        elif kind == "null_item":
            bad.iat[i, col("item_id")] = None
        elif kind == "unknown_type":
            bad.iat[i, col("event_type")] = "teleport"
        elif kind == "future_ts":
            bad.iat[i, col("timestamp")] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=400)
        elif kind == "ancient_ts":
            bad.iat[i, col("timestamp")] = pd.Timestamp("1971-01-01", tz="UTC")
        elif kind == "bad_value":
            bad.iat[i, col("value")] = -5.0
    bad["bad_kind"] = kinds
    out = pd.concat([events.assign(bad_kind=None), bad], ignore_index=True)
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
    out["value"] = pd.to_numeric(out["value"])
    return out.drop(columns="bad_kind")


def plant_sequences(events: pd.DataFrame, items: pd.DataFrame, sequence: list[str] | None = None,
                    n_sessions: int = 200, seed: int = 0, noise: float = 0.1, user_share: float = 0.0,
                    gap_seconds: float = 40.0) -> pd.DataFrame:
    """``events`` plus ``n_sessions`` view sessions that walk ``sequence`` (default: 4 random catalog
    items) in order, each step preceded with probability ``noise`` by a random other catalog item,
    so a test can check that a next-item model recovers the chain. A ``user_share`` of the sessions
    belong to random users of ``events``; the rest are anonymous (no user_id), as OTTO's are.

    Args:
        events: the events to add to (timestamp and user_id used); the sessions start in their time span.
        items: the catalog (item_id) the chain and the noise items come from.
        sequence: the chain of item ids; None: see above.
        n_sessions: how many sessions are planted.
        seed: the random seed.
        noise: the probability of a noise item before each chain step.
        user_share: the share of sessions given to a user.
        gap_seconds: the seconds between a session's consecutive views.

    Returns:
        ``events`` with the planted view events appended (a fresh index); their event and session ids
        start with ``planted-{seed}-``.
    """
    rng = np.random.default_rng(seed)
    catalog = items["item_id"].to_numpy(dtype=object)
    chain = np.asarray(sequence if sequence is not None else rng.choice(catalog, 4, replace=False), dtype=object)
    others = catalog[~np.isin(catalog, chain)]
    # slot 2j: a noise item (present with probability ``noise``), slot 2j + 1: chain[j]
    grid = np.empty((n_sessions, 2 * len(chain)), dtype=object)
    grid[:, 0::2] = rng.choice(others, grid[:, 0::2].shape)
    grid[:, 1::2] = chain
    present = np.ones(grid.shape, dtype=bool)
    present[:, 0::2] = rng.random(grid[:, 0::2].shape) < noise
    sess = np.broadcast_to(np.arange(n_sessions)[:, None], grid.shape)[present]
    step = (np.cumsum(present, axis=1) - 1)[present]
    span = len(chain) * 2 * gap_seconds
    t0, t1 = events["timestamp"].min().value / 1e9, events["timestamp"].max().value / 1e9 - span
    start = rng.uniform(t0, max(t0, t1), n_sessions)
    users = pd.unique(events["user_id"].dropna())
    owner = np.full(n_sessions, None, dtype=object)
    if len(users):
        mine = rng.random(n_sessions) < user_share
        owner[mine] = rng.choice(users, int(mine.sum()))
    planted = pd.DataFrame({
        "event_id": [f"planted-{seed}-{i}" for i in range(len(sess))],
        "user_id": owner[sess],
        "item_id": grid[present],
        "event_type": "view",
        "timestamp": pd.to_datetime(start[sess] + step * gap_seconds, unit="s", utc=True),
        "session_id": [f"planted-{seed}-{s}" for s in sess],
        "value": np.nan,
        "context": None,
    })
    return pd.concat([events, planted], ignore_index=True)
