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
