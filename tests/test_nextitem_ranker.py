"""The re-ranked next-item model: it beats the rules it starts from on held-out sessions, keeps their
planted chain, answers the served path as batch scoring does, survives a pickle, and falls back to
the rules when there is too little data to learn an order from."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from recops.generate import generate, plant_sequences
from recops.models.nextitem_ranker import FEATURES, RankedNextItem
from recops.models.sequential import NextItem
from recops.nextitem import evaluate_next_item, split_sessions

from .conftest import END

CHAIN = ["i5", "i17", "i29", "i41"]


@pytest.fixture(scope="module")
def split():
    data = generate(n_events=20_000, seed=3, end=END)
    events = plant_sequences(data.events, data.items, CHAIN, n_sessions=150, seed=1, user_share=0.3)
    train, test = split_sessions(events, 0.2)
    return train, test, data.items


@pytest.fixture(scope="module")
def ranked(split):
    train, _, items = split
    return RankedNextItem(num_threads=1).fit(train, items)


def test_reranking_beats_the_rules_it_starts_from(split, ranked):
    train, test, _ = split
    rules = NextItem().fit(train)
    assert ranked.ranker_ is not None and ranked.ranker_.num_feature() == len(FEATURES)
    mine, theirs = evaluate_next_item(ranked, test), evaluate_next_item(rules, test)
    assert mine["n"] == theirs["n"] > 1_000
    assert mine["mrr"] > 1.02 * theirs["mrr"], (mine, theirs)
    assert mine["hr"] >= theirs["hr"]  # the candidates add recall; the order is the ranker's


def test_the_planted_chain_survives_reranking(ranked):
    for t in range(1, len(CHAIN)):
        recent = CHAIN[:t][::-1]
        assert ranked.predict(recent, 3)[0][0] == CHAIN[t], ranked.predict(recent, 3)
    assert ranked.strongest_rule(CHAIN[:2][::-1], CHAIN[2]) == CHAIN[1]  # reasons still come from the rules


def test_served_answer_equals_batch_scoring_and_survives_a_pickle(split, ranked):
    _, test, _ = split
    histories = [list(s["item_id"])[::-1][:10] for _, s in test.sort_values("timestamp").groupby("session_id")][:40]
    idx, scores = ranked.score_batch(histories, 20)
    again = pickle.loads(pickle.dumps(ranked))
    for n, h in enumerate(histories):
        served = ranked.predict(h, 20)
        assert [i for i, _ in served] == list(ranked.item_ids_[idx[n]])
        assert np.allclose([s for _, s in served], scores[n])
        assert again.predict(h, 20) == served
        assert h[0] not in {i for i, _ in served}  # never the item on screen
    assert ((scores >= 0) & (scores < 1)).all() and (scores[:, 0] > 0).mean() > 0.9


def test_too_little_data_falls_back_to_the_rules(split):
    train, _, items = split
    few = train[train["session_id"].isin(train["session_id"].unique()[:3])]
    model = RankedNextItem(num_threads=1).fit(few, items)
    rules = NextItem().fit(few)
    assert model.ranker_ is None
    history = [few["item_id"].iloc[-1]]
    assert model.predict(history, 10) == rules.predict(history, 10)


def test_a_training_query_sees_only_the_popularity_before_its_day(split, ranked):
    train = split[0]
    stamp = train["timestamp"].dt.tz_convert(None).to_numpy("datetime64[ns]")
    back = (ranked.end_ - stamp) // np.timedelta64(1, "D")  # whole days back from the end
    code = ranked.index_.get_indexer(train["item_id"])
    c = ranked.popular_[:50]
    r = np.zeros(len(c), dtype=np.int64)
    for day in (-1, 0, 3):
        got = ranked._popularity_before(np.array([day]), r, c)
        for j, window in enumerate((back > day, back == day + 1, (back > day) & (back <= day + 7))):
            counts = np.bincount(code[window & (code >= 0)], minlength=len(ranked.item_ids_))
            assert np.allclose(got[:, j], counts[c] / counts.sum()), (day, j)
    # a request after the data sees what serving sees
    assert np.allclose(ranked._popularity_before(np.array([-1]), r, c), ranked.popularity_[c])
