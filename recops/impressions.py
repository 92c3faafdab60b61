"""Served lists (impressions) and the outcomes attributed to them, in the event store's database.

Every list ``/recommend`` and ``/session/recommend`` answer is an impression: its request id, who
asked (the unit: user id, or session id for an anonymous visitor), the experiment and variant, the
model version, whether the fallback answered, the latency, and each item with its position and team.
The server writes them in batches from a background thread (``ImpressionLog``); closing the log
writes what is pending, so a clean shutdown loses none.

An outcome (a click, cart or purchase) is attributed to the impression named by its ``request_id``
when that list held the item; without one, to the unit's latest impression that held the item within
the attribution window (``attribution`` below).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa

from recops.store import create_tables, events, metadata

log = logging.getLogger("recops.impressions")

impressions = sa.Table(
    "impressions",
    metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("served_at", sa.Float, nullable=False, comment="UTC epoch seconds"),
    sa.Column("unit", sa.String(128), nullable=False, comment="the user id, or the session id of an anonymous visit"),
    sa.Column("user_id", sa.String(128), nullable=True),
    sa.Column("session_id", sa.String(128), nullable=True),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("experiment", sa.String(64), nullable=True),
    sa.Column("variant", sa.String(16), nullable=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("strategy", sa.String(32), nullable=False),
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("fallback_reason", sa.Text, nullable=True),
    sa.Column("error", sa.Boolean, nullable=False, comment="the model failed and the fallback answered"),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Index("ix_impressions_experiment", "experiment", "served_at"),
    sa.Index("ix_impressions_served", "served_at"),
)

impression_items = sa.Table(
    "impression_items",
    metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True, comment="1 = first"),
    sa.Column("item_id", sa.String(128), nullable=False),
    sa.Column("team", sa.String(16), nullable=True, comment="interleaving: the model that contributed the item"),
)

IMPRESSION_TABLES = [impressions, impression_items]
_MAX_PENDING = 200_000  # past this many unwritten lists (the database down for long), the oldest are dropped


class ImpressionLog:
    """Impressions written in batches by a background thread; ``close`` writes what is pending."""

    def __init__(self, engine: sa.Engine, flush_seconds: float = 0.5):
        self.engine = engine
        create_tables(engine, IMPRESSION_TABLES)
        self.flush_seconds = flush_seconds
        self._pending: list[tuple[dict, list[dict]]] = []
        self._lock = threading.Lock()  # guards _pending
        self._write_lock = threading.Lock()  # one writer at a time (the thread, flush, close)
        self._stop = threading.Event()
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="impression-log", daemon=True)
        self._thread.start()

    def add(self, row: dict, items: Sequence[tuple[str, str | None]]) -> None:
        """Queue one served list (returns at once; the thread writes it).

        Args:
            row: the impression's columns (``impressions`` table) but its items.
            items: the list, best first: (item id, team or None).
        """
        shown = [{"request_id": row["request_id"], "position": n + 1, "item_id": i, "team": t}
                 for n, (i, t) in enumerate(items)]
        with self._lock:
            self._pending.append((row, shown))
            if len(self._pending) > _MAX_PENDING:
                del self._pending[0]
                self.dropped += 1

    def pending(self) -> int:
        """How many lists wait to be written.

        Returns:
            The count.
        """
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write every pending list now.

        Returns:
            How many were written; on a database error they stay pending (``last_error`` says why).
        """
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(impressions), [r for r, _ in batch])
                    shown = [s for _, items in batch for s in items]
                    if shown:
                        conn.execute(sa.insert(impression_items), shown)
            except Exception as exc:
                with self._lock:
                    self._pending[:0] = batch
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("could not write %d impressions; they stay pending", len(batch))
                return 0
            self.written += len(batch)
            self.last_error = None
            return len(batch)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what is pending."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


def load_impressions(engine: sa.Engine, since: float, until: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The impressions served in [since, until) and their items.

    Args:
        engine: the event store's engine.
        since: UTC epoch seconds (inclusive).
        until: UTC epoch seconds (exclusive); None: up to now.

    Returns:
        (impressions, their items): the tables' columns, one row per list and per shown item.
    """
    create_tables(engine, IMPRESSION_TABLES)
    cond = impressions.c.served_at >= since
    if until is not None:
        cond = sa.and_(cond, impressions.c.served_at < until)
    with engine.connect() as conn:
        imps = pd.read_sql(sa.select(impressions).where(cond), conn)
        shown = pd.read_sql(sa.select(impression_items).join(impressions, impressions.c.request_id
                                                             == impression_items.c.request_id).where(cond), conn)
    return imps, shown


def load_outcomes(engine: sa.Engine, types: Sequence[str], since: float, until: float | None = None) -> pd.DataFrame:
    """The events of the given types in [since, until), with their request ids.

    Args:
        engine: the event store's engine.
        types: the event types (clicks, carts, purchases).
        since: UTC epoch seconds (inclusive).
        until: UTC epoch seconds (exclusive); None: no bound.

    Returns:
        event_id, user_id, session_id, item_id, event_type, timestamp (epoch seconds), value, request_id.
    """
    e = events.c
    cond = sa.and_(e.event_type.in_(list(types)), e.timestamp >= since)
    if until is not None:
        cond = sa.and_(cond, e.timestamp < until)
    with engine.connect() as conn:
        return pd.read_sql(sa.select(e.event_id, e.user_id, e.session_id, e.item_id, e.event_type, e.timestamp,
                                     e.value, e.request_id).where(cond), conn)


def attributed_outcomes(engine: sa.Engine, imps: pd.DataFrame, shown: pd.DataFrame, since: float,
                        until: float | None, window_seconds: float) -> pd.DataFrame:
    """The clicks, carts and purchases of [since, until) attributed to these lists (``attribution``).

    Args:
        engine: the event store's engine.
        imps: the lists (``load_impressions``), possibly filtered.
        shown: their items.
        since: the outcomes' period start (epoch seconds).
        until: its end; None: no bound.
        window_seconds: the attribution window for outcomes without a ``request_id``.

    Returns:
        What ``attribution`` returns.
    """
    from recops.vocabulary import CART_ACTIVITY, ENGAGE

    return attribution(imps, shown, load_outcomes(engine, (*ENGAGE, *CART_ACTIVITY), since, until), window_seconds)


def attribution(imps: pd.DataFrame, shown: pd.DataFrame, outcomes: pd.DataFrame, window_seconds: float) -> pd.DataFrame:
    """Each outcome on a shown item, matched to the impression it came from.

    An outcome with a ``request_id`` goes to that impression when the list held the item (an id
    that names another list, or an item the list did not hold, attributes nothing). One without
    goes to the latest impression of its user or session that held the item, served at most
    ``window_seconds`` before it.

    Args:
        imps: impressions (request_id, unit, served_at, ...).
        shown: their items (request_id, position, item_id, team).
        outcomes: events (event_id, user_id, session_id, item_id, event_type, timestamp, value, request_id).
        window_seconds: the attribution window.

    Returns:
        One row per attributed outcome: event_id, request_id, item_id, team, event_type, value.
    """
    cols = ["event_id", "request_id", "item_id", "team", "event_type", "value"]
    if outcomes.empty or shown.empty:
        return pd.DataFrame(columns=cols)
    listed = shown.merge(imps[["request_id", "unit", "served_at"]], on="request_id")
    has_id = outcomes["request_id"].notna()
    direct = outcomes[has_id].merge(listed[["request_id", "item_id", "team"]], on=["request_id", "item_id"])
    loose = outcomes[~has_id]
    by_unit = pd.concat([loose.assign(unit=loose["user_id"]), loose.assign(unit=loose["session_id"])])
    by_unit = by_unit[by_unit["unit"].notna()].drop(columns="request_id")
    matched = pd.DataFrame(columns=cols)
    if not by_unit.empty:
        left = by_unit.assign(timestamp=by_unit["timestamp"].astype(float)).sort_values("timestamp")
        right = listed[["unit", "item_id", "served_at", "request_id", "team"]].sort_values("served_at")
        right = right.assign(served_at=right["served_at"].astype(float))
        m = pd.merge_asof(left, right, left_on="timestamp", right_on="served_at", by=["unit", "item_id"],
                          direction="backward", tolerance=float(window_seconds))
        m = m[m["request_id"].notna()].sort_values("served_at")
        matched = m.drop_duplicates("event_id", keep="last")  # the latest of its user's and session's lists
    return pd.concat([direct[cols], matched[cols]], ignore_index=True)


def per_unit(imps: pd.DataFrame, attributed: pd.DataFrame, engage: Sequence[str], convert: Sequence[str],
             revenue: Sequence[str]) -> pd.DataFrame:
    """Per unit and variant: lists, clicked items, converted items and revenue from attributed outcomes.

    A list's item counts once per kind of outcome (two clicks on one shown item are one click).

    Args:
        imps: impressions with ``unit``, ``variant``, ``fallback``.
        attributed: what ``attribution`` returned.
        engage: the event types that are clicks.
        convert: the event types that are conversions (cart, purchase).
        revenue: the event types whose value is revenue (purchase).

    Returns:
        One row per (unit, variant, fallback): impressions, clicks, conversions, revenue.
    """
    keys = ["unit", "variant", "fallback"]
    base = imps.assign(variant=imps["variant"].fillna("none"))
    counts = base.groupby(keys, dropna=False).size().rename("impressions").reset_index()
    if attributed.empty:
        return counts.assign(clicks=0, conversions=0, revenue=0.0)
    a = attributed.merge(base[["request_id", *keys]], on="request_id")
    a["value"] = pd.to_numeric(a["value"], errors="coerce").fillna(0.0)
    clicks = a[a["event_type"].isin(engage)].drop_duplicates(["request_id", "item_id"]).groupby(keys).size()
    conv = a[a["event_type"].isin(convert)].drop_duplicates(["request_id", "item_id"]).groupby(keys).size()
    rev = a[a["event_type"].isin(revenue)].groupby(keys)["value"].sum()
    out = counts.set_index(keys)
    out["clicks"] = clicks.reindex(out.index).fillna(0).astype(int)
    out["conversions"] = conv.reindex(out.index).fillna(0).astype(int)
    out["revenue"] = rev.reindex(out.index).fillna(0.0).astype(float)
    return out.reset_index()


def team_credit_per_unit(imps: pd.DataFrame, attributed: pd.DataFrame, types: Sequence[str],
                         value: bool = False) -> pd.DataFrame:
    """Interleaving: per unit, the credit each team's items earned (fallback lists excluded).

    Args:
        imps: impressions with ``unit`` and ``fallback``.
        attributed: what ``attribution`` returned (with ``team``).
        types: the event types that earn credit.
        value: credit by the events' value (revenue) instead of by distinct items.

    Returns:
        unit, control, challenger: the credits, one row per unit with an interleaved list.
    """
    ok = imps[~imps["fallback"].astype(bool)]
    units = pd.DataFrame({"unit": ok["unit"].unique()})
    a = attributed[attributed["event_type"].isin(types) & attributed["team"].notna()]
    a = a.merge(ok[["request_id", "unit"]], on="request_id")
    if not value:
        a = a.drop_duplicates(["request_id", "item_id"]).assign(value=1.0)
    credit = a.pivot_table(index="unit", columns="team", values="value", aggfunc="sum", fill_value=0.0)
    out = units.set_index("unit").join(credit).fillna(0.0)
    for team in ("control", "challenger"):
        if team not in out:
            out[team] = 0.0
    return out[["control", "challenger"]].reset_index()


def p99(values: pd.Series) -> float:
    """The 99th percentile (NaN for none).

    Args:
        values: the latencies.

    Returns:
        The percentile.
    """
    return float(np.percentile(values, 99)) if len(values) else float("nan")

