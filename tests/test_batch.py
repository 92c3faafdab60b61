"""Batch scoring from the CLI: `recops train --events FILE`, `recops recommend --users FILE`, and the
batch lists equal what the BentoML service answers for the same users and state."""

import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from recops.cli import app
from recops.generate import plant_sequences
from recops.store import EventStore

pytestmark = pytest.mark.e2e


@pytest.fixture
def clean_env():
    """The CLI exports its settings (RECOPS_*) for flow runs; keep them out of other tests."""
    before = dict(os.environ)
    yield
    for k in set(os.environ) - set(before):
        del os.environ[k]
    os.environ.update(before)


def test_train_on_any_events_file_then_score_users_from_a_file(prefect_harness, synthetic, tmp_path, clean_env):
    ev = synthetic.events.dropna(subset=["user_id", "item_id", "event_type", "timestamp"])
    ev = ev[ev["event_type"].isin(["view", "click", "add_to_cart", "purchase"])]
    ev = ev[["user_id", "item_id", "event_type", "timestamp", "session_id", "value"]].rename(
        columns={"user_id": "customer"})
    ev.to_csv(tmp_path / "events.csv", index=False)
    synthetic.items.to_csv(tmp_path / "items.csv", index=False)
    home = str(tmp_path / "home")
    runner = CliRunner()
    r = runner.invoke(app, ["--home", home, "train", "--events", str(tmp_path / "events.csv"),
                            "--items", str(tmp_path / "items.csv"), "--map", "user_id=customer"])
    assert r.exit_code == 0, r.output
    buyers = ev.loc[ev["event_type"] == "purchase", "customer"].value_counts().index[:20].tolist()
    pd.DataFrame({"user_id": buyers + ["never-seen"]}).to_csv(tmp_path / "users.csv", index=False)
    r = runner.invoke(app, ["--home", home, "recommend", "--users", str(tmp_path / "users.csv"), "--k", "7",
                            "--out", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "out.csv", dtype={"user_id": str, "item_id": str})
    assert list(out.columns) == ["user_id", "item_id", "rank", "score"]
    assert (out.groupby("user_id").size() == 7).all() and set(out["user_id"]) == set(buyers) | {"never-seen"}
    assert (out.groupby("user_id")["rank"].apply(list)
            == pd.Series([list(range(1, 8))] * 21, index=sorted(set(out["user_id"])))).all()
    assert set(out["item_id"]) <= set(synthetic.items["item_id"])
    bought = ev[ev["event_type"] == "purchase"].groupby("customer")["item_id"].agg(set)
    assert not any(i in bought.get(u, set()) for u, i in zip(out["user_id"], out["item_id"]))  # no repeats
    # bad input: a clear message and a non-zero exit, nothing written
    pd.DataFrame({"customer": ["a"], "x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    r = runner.invoke(app, ["--home", home, "recommend", "--users", str(tmp_path / "bad.csv"),
                            "--out", str(tmp_path / "no.csv")])
    assert r.exit_code == 1 and "needs a user_id column" in r.output and not (tmp_path / "no.csv").exists()
    r = runner.invoke(app, ["--home", home, "train", "--events", str(tmp_path / "missing.csv")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_batch_scoring_gives_the_served_top_k(client, trained, tmp_path, monkeypatch):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    counts = store.events()["user_id"].value_counts()
    store.dispose()
    users = counts.index[[0, 5, 50, len(counts) // 2, len(counts) - 1]].tolist() + ["nobody-knows-me"]
    served = {}
    for u in users:
        r = client.post("/recommend", json={"user_id": u, "k": 10})
        assert r.status_code == 200
        served[u] = [it["item_id"] for it in r.json()["items"]]
    pd.DataFrame({"user_id": users}).to_csv(tmp_path / "users.csv", index=False)
    for k, v in settings.to_env().items():
        monkeypatch.setenv(k, v)
    from recops.flows.pipeline import recommend_flow

    res = recommend_flow(str(tmp_path / "users.csv"), str(tmp_path / "out.csv"), k=10, alias="champion")
    out = pd.read_csv(tmp_path / "out.csv", dtype={"user_id": str, "item_id": str}).sort_values(["user_id", "rank"])
    batch = out.groupby("user_id")["item_id"].agg(list).to_dict()
    assert res["version"] == client.get("/model").json()["version"]
    assert all(len(served[u]) == 10 for u in users)
    assert batch == served


def test_session_only_training_and_next_items_recover_a_planted_sequence(prefect_harness, synthetic, tmp_path,
                                                                         clean_env):
    """Anonymous shoppers only (a session_id, no user_id): `recops train --events` trains on them, and
    `recops next-items` recovers the chain A -> B -> C -> D planted in the data, step by step."""
    items = synthetic.items["item_id"]
    chain = items.iloc[[5, 17, 29, 41]].tolist()
    ev = plant_sequences(synthetic.events.dropna(subset=["item_id", "event_type", "timestamp", "session_id"]),
                         synthetic.items, chain, n_sessions=150, seed=3)
    ev = ev[ev["event_type"].isin(["view", "click", "add_to_cart", "purchase"])]
    ev[["session_id", "item_id", "event_type", "timestamp"]].to_csv(tmp_path / "sessions.csv", index=False)
    home = str(tmp_path / "home")
    runner = CliRunner()
    r = runner.invoke(app, ["--home", home, "train", "--events", str(tmp_path / "sessions.csv")])
    assert r.exit_code == 0, r.output

    walk = pd.DataFrame({"session_id": ["new"] * 4, "item_id": chain,
                         "timestamp": pd.date_range("2026-11-02", periods=4, freq="min", tz="UTC")})
    walk.to_csv(tmp_path / "walk.csv", index=False)
    r = runner.invoke(app, ["--home", home, "next-items", "--sessions", str(tmp_path / "walk.csv"), "--k", "5",
                            "--out", str(tmp_path / "next.csv")])
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "next.csv", dtype={"session_id": str, "item_id": str})
    assert list(out.columns) == ["session_id", "step", "item_id", "rank"]
    assert sorted(out["step"].unique()) == [1, 2, 3, 4] and (out.groupby("step").size() == 5).all()
    top = out[out["rank"] == 1].set_index("step")["item_id"]
    assert [top[1], top[2], top[3]] == chain[1:]  # step t: given the first t items, item t+1 ranks first

    pd.DataFrame({"session_id": ["s"], "item_id": ["i1"]}).to_csv(tmp_path / "bad.csv", index=False)
    r = runner.invoke(app, ["--home", home, "next-items", "--sessions", str(tmp_path / "bad.csv"),
                            "--out", str(tmp_path / "no.csv")])
    assert r.exit_code == 1 and "timestamp" in r.output and not (tmp_path / "no.csv").exists()


def test_a_six_day_click_log_trains_with_defaults(prefect_harness, tmp_path, clean_env):
    """A YOOCHOOSE-shaped file (tab-separated SessionId, ItemId, Time in epoch seconds, no event
    types, six days): no mapping and no setting; the holdout is chosen from the data."""
    from recops.generate import generate

    ev = generate(n_events=6000, days=6, end="2026-11-01", seed=4).events
    ev = ev[ev["event_type"].isin(["view", "click"])].dropna(subset=["session_id", "item_id", "timestamp"])
    log = pd.DataFrame({"SessionId": ev["session_id"], "ItemId": ev["item_id"],
                        "Time": ev["timestamp"].astype("int64") / 1e9})
    log.to_csv(tmp_path / "clicks.txt", sep="\t", index=False)
    r = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "train", "--events", str(tmp_path / "clicks.txt")])
    assert r.exit_code == 0, r.output
    assert "split_cut" in r.output and "2026-10-3" in r.output  # a cut inside the six days, not a week back
