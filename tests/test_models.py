import numpy as np
import pandas as pd

from recops.features import item_features, snapshot_points
from recops.models.base import top_k
from recops.models.covisit import CoVisitation
from recops.models.metrics import bootstrap_ci, per_user_metrics
from recops.models.popularity import Popularity
from recops.models.recommender import ItemTable, RecopsModel, train_ranker
from recops.models.request import RecommendRequest
from recops.schema import normalize_events


def test_popularity_prefers_recent_and_weighted():
    t = pd.Timestamp("2026-10-10", tz="UTC")
    ev = normalize_events(pd.DataFrame({
        "user_id": ["a", "b", "c", "d"], "item_id": ["old", "old", "new", "buy"],
        "event_type": ["view", "view", "view", "purchase"],
        "timestamp": [t - pd.Timedelta(days=30), t - pd.Timedelta(days=30), t, t]}))
    p = Popularity(half_life_days=7).fit(ev)
    assert [i for i, _ in p.recommend("x", 3)] == ["buy", "new", "old"]
    assert [i for i, _ in p.recommend("x", 2, exclude={"buy"})] == ["new", "old"]


def test_popularity_answers_as_of_a_past_time():
    """Offline evaluation at a user's cut asks what was popular then, from events before it only."""
    t = pd.Timestamp("2026-10-01", tz="UTC")
    rows = [(f"u{n}", "early", "view", t + pd.Timedelta(hours=n)) for n in range(20)]
    rows += [(f"v{n}", "late", "view", t + pd.Timedelta(days=20, hours=n)) for n in range(30)]
    ev = normalize_events(pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"]))
    p = Popularity(half_life_days=3).fit(ev)
    assert list(p.score([], 2)[0]) == ["late", "early"]  # now
    assert list(p.score([], 2, as_of=t + pd.Timedelta(days=5))[0]) == ["early"]  # "late" did not exist yet
    assert list(p.score([], 2, as_of=t + pd.Timedelta(days=40))[0]) == ["late", "early"]
    assert len(p.score([], 2, as_of=t - pd.Timedelta(days=1))[0]) == 0


def test_covisitation_recovers_planted_complements(synthetic):
    ev = normalize_events(synthetic.events)
    cv = CoVisitation().fit(ev)
    comp = synthetic.truth["complement"]
    sample = ev["item_id"].value_counts().index[:50]
    hits = np.mean([comp[i] in [j for j, _ in cv.similar_items(i, 5)] for i in sample])
    assert hits > 0.8, hits


def test_directional_covisitation_knows_the_order():
    t = pd.Timestamp("2026-10-10", tz="UTC")
    rows = [("u", f"s{n}", it, "view", t + pd.Timedelta(seconds=k))
            for n in range(5) for k, it in enumerate(["a", "b"])]
    ev = normalize_events(pd.DataFrame(rows, columns=["user_id", "session_id", "item_id", "event_type", "timestamp"]))
    d = CoVisitation(directional=True).fit(ev)
    assert d.similar_items("a", 1)[0][0] == "b" and d.similar_items("b", 1) == []
    assert CoVisitation().fit(ev).similar_items("b", 1)[0][0] == "a"


def test_top_k_is_deterministic_on_ties():
    ids, _scores = top_k(np.array(list("abcd"), dtype=object), np.array([1.0, 2.0, 2.0, 0.5]), 3)
    assert list(ids) == ["b", "c", "a"]


def test_metrics_on_a_hand_computed_case():
    m = per_user_metrics({"u": ["x", "a", "y"]}, {"u": {"a", "b"}}, k=3)
    assert m["recall"][0] == 0.5 and m["hitrate"][0] == 1.0 and m["mrr"][0] == 0.5
    assert abs(m["ndcg"][0] - (1 / np.log2(3)) / (1 + 1 / np.log2(3))) < 1e-12
    assert abs(m["map"][0] - 0.25) < 1e-12
    lo, hi = bootstrap_ci(np.array([0.0, 1.0] * 50))
    assert lo < 0.5 < hi


def test_ranker_learns_a_planted_signal_and_serves(synthetic):
    """A feature that decides relevance must become the ranker's most important one."""
    rng = np.random.default_rng(0)
    n_groups, per = 200, 20
    x = rng.normal(size=(n_groups * per, 4))
    y = (x[:, 2] > 1.0).astype(float)
    model = train_ranker(x, y, np.full(n_groups, per), ["a", "b", "signal", "d"], num_threads=1)
    assert np.argmax(model.feature_importance("gain")) == 2

    ev = normalize_events(synthetic.events)
    gens = {"popularity": Popularity().fit(ev), "covisit": CoVisitation().fit(ev)}
    feats = item_features(ev, snapshot_points(ev, "item_id").groupby("item_id").tail(1))
    rm = RecopsModel(gens, None, ItemTable.build(feats, synthetic.items))
    hist = ev[ev["user_id"] == ev["user_id"].iloc[0]]["item_id"].tolist()[::-1][:5]
    gone = rm.items.out_of_stock()
    assert gone  # the synthetic catalog has items out of stock
    recs = rm.recommend(RecommendRequest(k=5, user_id="u", history=tuple(hist), exclude=frozenset({hist[0]}) | gone))
    assert len(recs) == 5 and hist[0] not in [r.item_id for r in recs] and all(r.reason for r in recs)
    assert not gone & {r.item_id for r in recs}


def test_reason_cites_the_history_item_that_contributes_most():
    t = pd.Timestamp("2026-10-10", tz="UTC")
    rows = [(f"s{n}", it, t + pd.Timedelta(seconds=k)) for n in range(4) for k, it in enumerate(["a", "c"])]
    rows += [(f"r{n}", it, t + pd.Timedelta(seconds=k)) for n in range(6) for k, it in enumerate(["b", "c"])]
    ev = normalize_events(pd.DataFrame([("u", s, i, "view", ts) for s, i, ts in rows],
                                       columns=["user_id", "session_id", "item_id", "event_type", "timestamp"]))
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "category": ["x", "x", "y"], "title": ["A", "B", "C"],
                          "price": [1.0] * 3})
    m = RecopsModel({"covisit": CoVisitation().fit(ev)}, None,
                    ItemTable.build(pd.DataFrame({"item_id": ["a", "b", "c"]}), items))
    # b co-occurs with c 6 times, a 4 times: b wins when newest, a wins when b is older (6/2 < 4)
    assert "B" in m.recommend(RecommendRequest(k=1, user_id="u", history=("b", "a")))[0].reason
    assert "A" in m.recommend(RecommendRequest(k=1, user_id="u", history=("a", "b")))[0].reason


def test_spd_inverse_in_either_precision_and_refuses_a_matrix_that_is_not_positive_definite():
    """EASE inverts its Gram matrix by Cholesky in single precision: within single precision's reach of
    the double-precision inverse, both triangles filled; an indefinite matrix is an error, not garbage."""
    import pytest

    from recops.models.ease import spd_inverse

    rng = np.random.default_rng(0)
    x = (rng.random((400, 60)) < 0.1).astype(float)
    g = x.T @ x + 5.0 * np.eye(60)
    want = np.linalg.inv(g)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        got = spd_inverse(g.astype(dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())
    with pytest.raises(np.linalg.LinAlgError):
        spd_inverse(np.array([[1.0, 2.0], [2.0, 1.0]]))
