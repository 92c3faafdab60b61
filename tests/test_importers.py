import pandas as pd
import pytest

from recops.importers import load_generic, load_movielens, load_online_retail, load_otto
from tests.conftest import needs_shared


@pytest.mark.shared_data
def test_movielens():
    ds = load_movielens(needs_shared("movielens-100k"))
    assert len(ds.events) == 100_000 and (ds.events["event_type"] == "rate").all()
    assert ds.events["value"].between(1, 5).all() and ds.events["event_id"].is_unique
    assert len(ds.users) == 943 and ds.users["gender"].isin(["M", "F"]).all()
    assert len(ds.items) == 1682 and ds.items["category"].ne("unknown").mean() > 0.99


@pytest.mark.shared_data
def test_online_retail():
    ds = load_online_retail(needs_shared("online-retail"))
    assert len(ds.events) == 20_000 and ds.events["event_id"].is_unique
    assert set(ds.events["event_type"]) <= {"purchase", "remove_from_cart"}
    anon = ds.events["user_id"].isna()
    assert anon.any() and ds.events.loc[anon, "session_id"].notna().all()
    assert ds.items["category"].nunique() > 50 and ds.items["price"].notna().all()


@pytest.mark.shared_data
def test_otto():
    ds = load_otto(needs_shared("otto"))
    assert len(ds.events) == 862 and ds.events["user_id"].isna().all()
    assert set(ds.events["event_type"]) <= {"click", "add_to_cart", "purchase"}


def test_generic_csv_with_mapping(tmp_path):
    f = tmp_path / "ev.csv"
    pd.DataFrame({"who": ["a", "b"], "what": ["x", "y"], "action": ["buy", "look"],
                  "when": [1.7e9, 1.7e9 + 5]}).to_csv(f, index=False)
    ds = load_generic(f, mapping={"user_id": "who", "item_id": "what", "event_type": "action", "timestamp": "when"},
                      event_type_map={"buy": "purchase", "look": "view"}, timestamp_unit="s")
    assert list(ds.events["event_type"]) == ["purchase", "view"] and ds.events["timestamp"].notna().all()
    with pytest.raises(ValueError, match="missing"):
        load_generic(f, mapping={"user_id": "who"})


def test_a_tab_separated_click_log_loads_without_a_mapping(tmp_path):
    p = tmp_path / "clicks.txt"  # YOOCHOOSE as the session-rec framework prepares it
    p.write_text("SessionId\tItemId\tTime\n3\t214716935\t1396437466.94\n3\t214832672\t1396438212.318\n"
                 "7\t214716935\t1396441000.5\n")
    ds = load_generic(p)
    ev = ds.events.sort_values("timestamp")
    assert list(ev["session_id"]) == ["3", "3", "7"] and set(ev["event_type"]) == {"click"}
    assert ev["user_id"].isna().all() and list(ev["item_id"])[:2] == ["214716935", "214832672"]
    assert ev["timestamp"].iloc[0] == pd.Timestamp(1396437466.94, unit="s", tz="UTC")  # epoch seconds, by size


def test_numeric_timestamps_in_milliseconds_are_read_as_such(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("user_id;item_id;event_type;ts\nu1;i1;view;1700000000000\nu1;i2;purchase;1700000060000\n")
    ev = load_generic(p).events.sort_values("timestamp")
    assert list(ev["timestamp"]) == [pd.Timestamp("2023-11-14 22:13:20", tz="UTC"),
                                     pd.Timestamp("2023-11-14 22:14:20", tz="UTC")]
