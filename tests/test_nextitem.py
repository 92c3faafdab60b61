"""Next-item prediction: the model recovers a planted chain, prefixes mean what they say, metrics
count what they should, and there is always a full list."""

from __future__ import annotations

import pandas as pd
import pytest

from recops.generate import generate, plant_sequences
from recops.models.sequential import NextItem
from recops.nextitem import evaluate_next_item, prefix_predictions, split_events, split_sessions
from recops.schema import EVENT_COLUMNS

from .conftest import END

CHAIN = ["i5", "i17", "i29", "i41"]


@pytest.fixture(scope="module")
def planted():
    data = generate(n_events=20_000, seed=3, end=END)
    return data, plant_sequences(data.events, data.items, CHAIN, n_sessions=150, seed=1, user_share=0.3)


def _sessions(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """A session frame from (session_id, item_id, minute) rows."""
    return pd.DataFrame({"session_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                         "timestamp": pd.to_datetime([r[2] for r in rows], unit="m", utc=True)})


def test_plant_sequences_adds_valid_chain_sessions(planted):
    data, events = planted
    added = events.iloc[len(data.events):]
    assert list(events.columns) == EVENT_COLUMNS and events["event_id"].is_unique
    assert added["session_id"].nunique() == 150 and added["user_id"].isna().mean() > 0.5
    for _, s in added.sort_values("timestamp").groupby("session_id"):
        walked = [i for i in s["item_id"] if i in CHAIN]
        assert walked == CHAIN  # the chain, in order, noise items in between at most


@pytest.mark.parametrize("allow_repeats", [False, True])
def test_planted_chain_is_recovered_step_by_step(planted, allow_repeats):
    model = NextItem(allow_repeats=allow_repeats).fit(planted[1])
    for t in range(1, len(CHAIN)):
        recent = CHAIN[:t][::-1]  # newest first
        assert model.predict(recent, 5)[0][0] == CHAIN[t], (recent, model.predict(recent, 5))
    # direction matters: after the second item comes the third, not the first
    assert model.predict([CHAIN[1]], 1)[0][0] == CHAIN[2]
    assert model.strongest_rule(CHAIN[:2][::-1], CHAIN[2]) == CHAIN[1]
    assert model.strongest_rule(CHAIN[:2][::-1], "no-such-item") is None


def test_prefix_predictions_steps_follow_the_collapsed_session():
    sessions = _sessions([("s1", "a", 0), ("s1", "b", 1), ("s1", "b", 2), ("s1", "c", 3),
                          ("s2", "a", 0), ("s2", "b", 1), ("s3", "c", 5), ("s3", "d", 6)])
    model = NextItem(window=3, backward_weight=0.0, allow_repeats=True).fit(sessions)
    out = prefix_predictions(model, sessions, k=2)
    assert list(out.columns) == ["session_id", "step", "item_id", "rank"]
    # s1 is a, b, c (the repeated b is one step): steps 1..3, the last one after the whole session
    steps = out.groupby("session_id")["step"].unique().map(list).to_dict()
    assert steps == {"s1": [1, 2, 3], "s2": [1, 2], "s3": [1, 2]}
    assert set(out.groupby(["session_id", "step"])["rank"].apply(tuple)) == {(1, 2)}
    first = out[out["rank"] == 1].set_index(["session_id", "step"])["item_id"]
    assert (first[("s1", 1)], first[("s1", 2)], first[("s1", 3)]) == ("b", "c", "d")  # a -> b -> c -> d
    newest = out[(out["session_id"] == "s1") & (out["step"] == 3)]
    assert "c" not in set(newest["item_id"])  # the item just touched is never proposed
    assert prefix_predictions(model, sessions, k=2, final=False)["step"].max() == 2


def test_evaluate_counts_hits_and_reciprocal_ranks():
    test = _sessions([("s1", "a", 0), ("s1", "b", 1), ("s1", "c", 2), ("s2", "x", 0), ("s2", "a", 1)])
    # targets: b (after a), c (after b, a), a (after x); this ranker always says ["b", "a", "c"]
    res = evaluate_next_item(lambda histories, k: [["b", "a", "c"]] * len(histories), test, k=2)
    assert res["n"] == 3
    assert res["hr"] == pytest.approx(2 / 3)  # b at rank 1, a at rank 2, c beyond k=2
    assert res["mrr"] == pytest.approx((1 + 0.5) / 3)


def test_context_is_history_not_target():
    events = _sessions([("s1", "a", 0), ("s1", "b", 1), ("s1", "c", 2), ("s1", "d", 3), ("s2", "a", 4)])
    train, test = split_events(events, test_share=0.4)
    assert len(test) == 2 and (test["timestamp"] >= train["timestamp"].max()).all()
    seen = []
    res = evaluate_next_item(lambda h, k: seen.extend(h) or [["d"]] * len(h), test, k=1, context=train)
    assert res["n"] == 1 and res["hr"] == 1.0 and seen == [["c", "b", "a"]]


def test_session_only_data_and_split_by_session_end(planted):
    events = planted[1]
    anonymous = events[events["user_id"].isna()].assign(user_id=None)
    train, test = split_sessions(anonymous, test_share=0.25)
    ends = anonymous.groupby("session_id")["timestamp"].max()
    assert ends[train["session_id"].unique()].max() <= ends[test["session_id"].unique()].min()
    model = NextItem(allow_repeats=True).fit(train)
    res = evaluate_next_item(model, test, k=20)
    assert res["n"] > 50 and res["hr"] > 0.3


def test_unknown_history_gets_a_full_popular_list(planted):
    model = NextItem().fit(planted[1])
    recs = model.predict(["never-seen", "nor-this"], 20)
    assert len(recs) == 20 and len({i for i, _ in recs}) == 20
    assert all(s == 0.0 for _, s in recs)  # pure backfill
    assert recs[0][0] == model.item_ids_[model.popular_[0]]
    idx, _scores = model.score_indices([CHAIN[0]], 20)
    assert len(idx) == 20 and CHAIN[0] not in set(model.item_ids_[idx])  # the newest item is never proposed
    assert model.predict([CHAIN[0]], 3, exclude=[CHAIN[1]])[0][0] != CHAIN[1]


def test_training_chooses_the_next_item_settings_on_the_newest_sessions(synthetic):
    from recops.models.nextitem_ranker import RankedNextItem
    from recops.nextitem import NEXT_ITEM_GRID, choose_next_item

    model, rep = choose_next_item(synthetic.events, synthetic.items, num_threads=1)
    assert rep["params"] in NEXT_ITEM_GRID and len(rep["tried"]) == len(NEXT_ITEM_GRID)
    assert rep["valid_mrr"] == max(rep["tried"].values()) > 0 and rep["valid_predictions"] > 100
    assert model.backward_weight == rep["params"]["backward_weight"]
    # the re-ranked rules were scored on the same newest sessions; the better of the two serves
    ranker = rep["ranker"]
    assert ranker["valid_mrr"] > 0 and ranker["iterations"] > 0
    assert ranker["serves"] == (ranker["valid_mrr"] > rep["valid_mrr"]) == isinstance(model, RankedNextItem)
    assert set(model.item_ids_) == set(synthetic.events["item_id"].dropna())  # refitted on every event
    few = synthetic.events[synthetic.events["session_id"] == synthetic.events["session_id"].iloc[0]]
    _, rep = choose_next_item(few, num_threads=1)
    assert rep["params"] == {} and "too few sessions" in rep["reason"]


def test_top_per_row_keeps_each_rows_largest_in_order_ties_by_storage():
    import numpy as np
    import scipy.sparse as sp

    from recops.models.sequential import top_per_row

    rng = np.random.default_rng(3)
    m = sp.random(300, 400, density=0.2, format="csr", random_state=4)
    m.data = np.round(m.data * 6)  # many ties, some at the cut
    m.data[m.indptr[5]: m.indptr[6]] = 0  # an empty row
    m.eliminate_zeros()
    for k in (0, 1, 7, 80, 1000):
        got = top_per_row(m, k)
        for r in rng.choice(m.shape[0], 40, replace=False).tolist() + [5]:
            s, e = m.indptr[r], m.indptr[r + 1]
            want = np.lexsort((np.arange(e - s), -m.data[s:e]))[:k]  # value descending, then storage order
            g = slice(got.indptr[r], got.indptr[r + 1])
            assert np.array_equal(got.indices[g], m.indices[s:e][want]), (k, r)
            assert np.array_equal(got.data[g], m.data[s:e][want]), (k, r)
