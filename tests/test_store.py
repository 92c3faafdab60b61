import pandas as pd
import pytest

from recops.schema import normalize_events
from recops.store import EventStore


def _events(n=5, **over):
    ts = pd.Timestamp("2026-10-01", tz="UTC")
    rows = [{"event_id": f"e{i}", "user_id": "u1", "item_id": f"i{i % 3}", "event_type": "view",
             "timestamp": ts + pd.Timedelta(minutes=i), "session_id": "s1", "value": None} for i in range(n)]
    for r in rows:
        r.update(over)
    return normalize_events(pd.DataFrame(rows))


@pytest.fixture
def store(tmp_path):
    s = EventStore(f"sqlite:///{tmp_path}/e.db")
    yield s
    s.dispose()


def test_writes_are_idempotent_on_event_id(store):
    assert store.add_events(_events(5)) == 5
    assert store.add_events(_events(5)) == 0
    assert store.count_events() == 5


def test_round_trip_keeps_timestamps_and_values(store):
    ev = _events(3)
    ev.loc[0, "value"] = 9.5
    store.add_events(ev)
    back = store.events().sort_values("event_id").reset_index(drop=True)
    assert (back["timestamp"] == ev.sort_values("event_id")["timestamp"].reset_index(drop=True)).all()
    assert back.loc[0, "value"] == 9.5 and str(back["timestamp"].dt.tz) == "UTC"


def test_indexes_exist(store):
    import sqlalchemy as sa

    names = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("events")}
    assert {"ix_events_user_ts", "ix_events_item_ts", "ix_events_session"} <= names


def test_user_state_orders_newest_first_and_flags_purchases(store):
    ev = _events(5)
    ev.loc[1, "event_type"] = "purchase"
    store.add_events(ev)
    hist, excl, _ = store.user_state(user_id="u1", n=2, exclude_types=("purchase",))
    assert hist == ["i1", "i0"]  # i1 at minute 4, i0 at minute 3
    assert excl == {"i1"}


def test_quarantine_keeps_row_and_reason(store):
    bad = _events(2)
    n = store.quarantine_rows(bad, pd.Series(["why-0", "why-1"], index=bad.index), batch_id="b1")
    q = store.quarantined()
    assert n == 2 and list(q["reason"]) == ["why-0", "why-1"] and q["row"].str.contains('"e0"').any()


def test_upsert_items_replaces(store):
    items = pd.DataFrame({"item_id": ["a"], "category": ["x"], "title": ["t"], "description": [""], "price": [1.0],
                          "in_stock": [True], "created_at": [pd.Timestamp("2026-01-01", tz="UTC")]})
    store.upsert_items(items)
    store.upsert_items(items.assign(price=2.0, in_stock=False))
    got = store.items()
    assert len(got) == 1 and got.loc[0, "price"] == 2.0 and not got.loc[0, "in_stock"]


def test_batch_load_stores_what_the_row_path_stores(tmp_path):
    """``add_events`` loads SQLite through the driver's executemany; the rows and the count must be
    those of ``insert_events`` (SQLAlchemy, RETURNING): missing users and values as NULL, context
    kept, an id repeated in the batch or already stored counted once."""
    from recops.store import _records

    ev = _events(6, context={"page": "home"})
    ev.loc[1, "user_id"] = None
    ev.loc[2, "value"] = 3.5
    ev.loc[3, "event_id"] = "e0"  # repeated within the batch
    bulk, rows = EventStore(f"sqlite:///{tmp_path}/bulk.db"), EventStore(f"sqlite:///{tmp_path}/rows.db")
    try:
        bulk.add_events(ev.iloc[:2])
        assert bulk.add_events(ev) == 3  # e0, e1 stored before; e0 again in the batch
        frame = ev.copy()
        frame["timestamp"] = (frame["timestamp"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        frame["ingested_at"] = 0.0
        assert len(rows.insert_events(_records(frame))) == 5
        got, want = (s.events().sort_values("event_id").reset_index(drop=True) for s in (bulk, rows))
        cols = [c for c in want.columns if c != "ingested_at"]
        pd.testing.assert_frame_equal(got[cols], want[cols])
        assert got.loc[got.event_id == "e1", "user_id"].isna().all() and got["value"].notna().sum() == 1
        assert got["context"].str.contains("home").all()
    finally:
        bulk.dispose()
        rows.dispose()
