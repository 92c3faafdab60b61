import math

import numpy as np
import pandas as pd

from recops.evaluation import (
    evaluate,
    generator_recommender,
    global_split,
    intra_list_diversity,
    novelty,
    per_user_split,
    recommend_all,
)
from recops.models.popularity import Popularity
from recops.schema import normalize_events

T = pd.Timestamp("2026-10-01", tz="UTC")


def _ev(rows):
    return normalize_events(pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"]))


def test_per_user_split_holds_out_the_last_fifth_of_distinct_items():
    rows = [("a", f"i{n}", "view", T + pd.Timedelta(days=n)) for n in range(10)]
    rows += [("a", "i0", "view", T + pd.Timedelta(days=20))]  # a repeat after the cut leaves training too
    rows += [("b", f"i{n}", "view", T + pd.Timedelta(days=n)) for n in range(3)]  # too few items: train only
    s = per_user_split(_ev(rows), frac=0.2, min_items=5)
    assert s.test == {"a": {"i8", "i9"}}
    assert s.cut["a"] == T + pd.Timedelta(days=8)
    tr_a = s.train[s.train["user_id"] == "a"]
    assert set(tr_a["item_id"]) == {f"i{n}" for n in range(8)} and (tr_a["timestamp"] < s.cut["a"]).all()
    assert (s.train["user_id"] == "b").sum() == 3


def test_global_split_tests_only_new_items():
    rows = [("a", "x", "view", T), ("a", "x", "view", T + pd.Timedelta(days=9)),
            ("a", "y", "view", T + pd.Timedelta(days=9)), ("b", "x", "view", T + pd.Timedelta(days=9))]
    s = global_split(_ev(rows), cut=T + pd.Timedelta(days=5))
    assert s.test == {"a": {"y"}, "b": {"x"}} and len(s.train) == 1


def test_novelty_and_diversity_by_hand():
    pop = pd.Series({"p": 8, "r": 1})
    assert novelty({"u": ["p", "r"]}, pop, 8) == (0 + 3) / 2
    cat = pd.Series({"a": "x", "b": "x", "c": "y"})
    assert math.isclose(intra_list_diversity({"u": ["a", "b", "c"]}, cat), 2 / 3)


def test_evaluate_reports_everything_and_ranks_a_perfect_list_first(synthetic):
    ev = normalize_events(synthetic.events)
    split = per_user_split(ev)
    perfect = {u: sorted(t)[:10] for u, t in split.test.items()}
    res = evaluate(perfect, split, synthetic.items)
    assert res["hitrate@10"] == 1.0 and res["ndcg@10"] > 0.9
    pop = Popularity().fit(split.train)
    base = evaluate(recommend_all(generator_recommender(pop), split, 20), split, synthetic.items)
    assert 0 < base["ndcg@10"] < res["ndcg@10"]
    lo, hi = base["ndcg@10_ci"]
    assert lo <= base["ndcg@10"] <= hi
    for key in ("recall@5", "map@20", "mrr@10", "coverage@10", "novelty@10", "diversity@10", "ndcg@10_heavy",
                "users_light"):
        assert key in base
    assert sum(base[f"users_{s}"] for s in ("new", "light", "heavy")) == base["users"]
    # nothing a user saw in training is recommended
    recs = recommend_all(generator_recommender(pop), split, 20)
    seen = split.seen()
    assert all(not (set(r) & seen.get(u, set())) for u, r in recs.items())
    assert np.isclose(base["coverage@10"], len({i for r in recs.values() for i in r[:10]}) /
                      len(pd.unique(pd.concat([split.train["item_id"],
                                               pd.Series([i for t in split.test.values() for i in t])]))))


def test_split_trained_ranker_beats_its_generators_alone(synthetic):
    """The LambdaRank model over several generators, trained on labelled windows carved out of
    train, is chosen over its generators on validation and beats each alone on the same split."""
    from recops.config import load_settings
    from recops.models.covisit import CoVisitation
    from recops.training import inner_windows, recommend_at_cuts, train_on_split

    ev = normalize_events(synthetic.events)
    split = per_user_split(ev)
    gens = {"popularity": Popularity(half_life_days=7.0), "covisit": CoVisitation()}
    model = train_on_split(split.train, synthetic.items, synthetic.users, load_settings(),
                           inner_windows(split.train, per_user_split, 3), gens)
    assert model.scorer == {"known": "ranker"} and model.meta["ranker"]["ranker_windows"] == 3
    ours = evaluate(recommend_at_cuts(model, split, synthetic.items, 10), split, synthetic.items, ks=(10,))["ndcg@10"]
    for g in gens.values():
        alone = evaluate(recommend_all(generator_recommender(g.fit(split.train)), split, 10), split, synthetic.items,
                         ks=(10,))
        assert ours > alone["ndcg@10"], (ours, alone["ndcg@10"])


class NoiseRankerStub:
    """Fault injection: a ranker that learned nothing (random scores)."""

    def predict(self, x, num_threads=1):
        return np.random.default_rng(len(x)).normal(size=len(x))


def test_scorer_choice_falls_back_to_the_best_generator_when_the_ranker_learned_nothing():
    from recops.models.recommender import ItemTable, RecopsModel
    from recops.training import choose_scorers

    class Fixed:  # a fitted generator stand-in: the choice only reads the rank columns
        def score(self, history, k, user_id=None):
            return np.array([]), np.array([])

    model = RecopsModel({"a": Fixed(), "b": Fixed()}, None,
                        ItemTable.build(pd.DataFrame({"item_id": ["x"]}), pd.DataFrame()))
    rng = np.random.default_rng(0)
    x_parts, valid, labels, hist, start = [], [], {}, {}, 0
    for n in range(200):
        rel = rng.random(30) < 0.1
        rank_b = np.argsort(np.argsort(-(rel + rng.random(30) * 0.5))) + 1  # generator b knows the labels
        rank_a = rng.permutation(30) + 1
        x = np.column_stack([np.zeros(30), rank_a, np.zeros(30), rank_b])
        x_parts.append(x)
        u = f"u{n}"
        labels[u], hist[u] = rel.astype(float), ["something"] if n % 2 else []
        valid.append((u, (start, start + 30), max(int(rel.sum()), 1)))
        start += 30
    scorer, scores = choose_scorers(list(model.generators),
                                    [(NoiseRankerStub(), np.vstack(x_parts), valid, labels, hist)], 10)
    assert scorer == {"known": "b", "new": "b"}, scores
    assert scores["valid_ndcg_known_b"] > scores["valid_ndcg_known_ranker"] + 0.2


def test_calibration_skips_users_without_candidates():
    """A validation user whose candidate list is empty (Online Retail has them) must not stop training."""
    from recops.training import calibrate

    x = np.random.default_rng(0).normal(size=(20, 3))
    users = [("a", (0, 10), 1), ("empty", (10, 10), 1), ("b", (10, 20), 1)]
    labels = {"a": (np.arange(10) == 0).astype(float), "empty": np.zeros(0), "b": (np.arange(10) == 3).astype(float)}
    iso = calibrate([(NoiseRankerStub(), x, users, labels, {})])
    p = iso.predict([0.0, -3.0, -100.0])
    assert 0.0 <= p.min() and p.max() <= 1.0 and p[0] >= p[1] >= p[2]


def test_the_holdout_adapts_to_the_data_span():
    from recops.evaluation import HOLDOUT_SHARE, holdout_cut

    rng = np.random.default_rng(0)
    end = pd.Timestamp("2026-11-01", tz="UTC")
    for days, unit, held in ((6, "h", HOLDOUT_SHARE), (60, "D", 7 / 60), (400, "D", HOLDOUT_SHARE)):
        ts = pd.Series(end - pd.to_timedelta(rng.uniform(0, days * 86400, 5000), unit="s"))
        cut = holdout_cut(ts)
        assert cut == cut.floor(unit) and ts.min() < cut < ts.max()
        share = float((ts >= cut).mean())  # the last week, or the last tenth where a week holds less
        assert held - 0.01 <= share < held + (0.01 if unit == "h" else 1 / days + 0.015), (days, share)
    s = global_split(normalize_events(pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2"], "item_id": ["a", "b", "a", "c"], "event_type": "view",
        "timestamp": pd.to_datetime(["2026-10-27 10:00", "2026-10-28 09:00", "2026-10-27 12:00", "2026-11-01 08:00"],
                                    utc=True)})), holdout_days=0)
    assert set(s.test) == {"u2"}  # a six-day log: no 7-day default stops it
