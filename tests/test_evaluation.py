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
    x = np.vstack(x_parts)
    folds = [(NoiseRankerStub().predict(x), x, valid, labels, hist)]
    scorer, scores = choose_scorers(list(model.generators), folds, 10)
    assert scorer == {"known": "b", "new": "b"}, scores
    assert scores["valid_ndcg_known_b"] > scores["valid_ndcg_known_ranker"] + 0.2


def test_calibration_skips_users_without_candidates():
    """A validation user whose candidate list is empty (Online Retail has them) must not stop training."""
    from recops.training import calibrate

    x = np.random.default_rng(0).normal(size=(20, 3))
    users = [("a", (0, 10), 1), ("empty", (10, 10), 1), ("b", (10, 20), 1)]
    labels = {"a": (np.arange(10) == 0).astype(float), "empty": np.zeros(0), "b": (np.arange(10) == 3).astype(float)}
    iso = calibrate([(NoiseRankerStub().predict(x), x, users, labels, {})])
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


def test_per_user_split_under_the_serving_protocol_counts_coming_back_and_grades():
    """Serving protocol: an item viewed before the user's cut and bought after it is a test item
    (graded by its rating), items bought before the cut are excluded, not every training item."""
    rows = [("a", f"i{n}", "view", T + pd.Timedelta(days=n)) for n in range(10)]
    rows += [("a", "i0", "purchase", T + pd.Timedelta(days=2))]  # bought before the cut: never recommended
    rows += [("a", "i1", "purchase", T + pd.Timedelta(days=20))]  # viewed before, bought after: a test item
    s = per_user_split(_ev(rows), frac=0.2, min_items=5, exclude_types=("purchase",),
                       weights={"view": 1.0, "purchase": 5.0})
    assert s.test == {"a": {"i1", "i8", "i9"}}
    assert s.exclude == {"a": {"i0"}}
    assert s.grades["a"]["i1"] == 5 > s.grades["a"]["i8"] >= 1
    research = per_user_split(_ev(rows), frac=0.2, min_items=5)
    assert research.test == {"a": {"i8", "i9"}} and research.exclude is None


def _cold_start_case(by_gender: bool):
    """New users arriving daily for 60 days, each touching 5 items: of their gender's own 20
    (``by_gender``) or of that week's 20 whatever their gender."""
    rng = np.random.default_rng(3)
    rows, people = [], []
    for n in range(600):
        u, g, day = f"u{n}", "MF"[n % 2], n // 10
        people.append((u, 30, g, "north"))
        pool = [f"{g}{j}" for j in range(20)] if by_gender else [f"w{day // 7}-{j}" for j in range(20)]
        for i in rng.choice(pool, 5, replace=False):
            rows.append((u, i, "view", T + pd.Timedelta(days=day, hours=int(rng.integers(24)))))
    users = pd.DataFrame(people, columns=["user_id", "age", "gender", "region"])
    return global_split(_ev(rows), cut=T + pd.Timedelta(days=50)), users


def test_cold_start_uses_demographics_only_where_they_beat_trending():
    from recops.config import load_settings
    from recops.training import choose_cold_start

    settings = load_settings()
    split, users = _cold_start_case(by_gender=True)
    _, use, rep = choose_cold_start([split], pd.DataFrame(), users, settings)
    assert use and rep["cold_start"] == "demographic"
    assert rep["valid_ndcg_cold_demographic"] > rep["valid_ndcg_cold_trending"] and rep["valid_users_cold"] == 100
    split, users = _cold_start_case(by_gender=False)  # tastes follow the week, not the person
    half_life, use, rep = choose_cold_start([split], pd.DataFrame(), users, settings)
    assert not use and rep["cold_start"] == "trending" and "did not beat" in rep["cold_start_why"]
    # this week's items are what new users touch: the shortest half-life follows the week best
    assert half_life == 1.0 and rep["valid_ndcg_trending_hl1"] > rep["valid_ndcg_trending_hl30"]
    assert choose_cold_start([split], pd.DataFrame(), None, settings)[1] is False
    # a users file with regions only (a shop's countries) is validated alike
    _, _, rep = choose_cold_start([split], pd.DataFrame(), users.assign(age=None, gender=None), settings)
    assert rep["valid_users_cold"] == 100


def test_returning_windows_hold_out_returning_users_in_two_halves_of_one_fit(synthetic):
    from recops.config import load_settings
    from recops.training import returning_windows

    ev = normalize_events(synthetic.events)
    settings = load_settings()
    a, b = returning_windows(ev, settings)
    assert a.train is b.train and a.users and b.users and not set(a.users) & set(b.users)
    items_per_user = ev[ev["user_id"].notna()].groupby("user_id")["item_id"].nunique()
    assert (items_per_user.reindex(a.users + b.users) >= 5).all()
    for w in (a, b):  # each user is cut at their own time, and the serving protocol grades the test items
        u = w.users[0]
        assert (w.train[w.train["user_id"] == u]["timestamp"] < w.cut[u]).all()
        assert set(w.grades[u]) == w.test[u]
    settings.ranker_max_users = 10
    assert sum(len(w.test) for w in returning_windows(ev, settings)) == 10


def _pairs_case(old_age_days: float):
    """30 anchor items: 20 users who left ``old_age_days`` ago touched anchor then partner, 2 recent
    users touched anchor then a decoy; each test user touched the anchor and comes back for the partner."""
    from recops.evaluation import EvalSplit

    rows, test = [], {}
    for a in range(30):
        for n in range(20):
            t = T - pd.Timedelta(days=old_age_days) + pd.Timedelta(minutes=n)
            rows += [(f"old{a}_{n}", f"a{a}", "view", t), (f"old{a}_{n}", f"b{a}", "view", t + pd.Timedelta(minutes=1))]
        for n in range(2):
            t = T - pd.Timedelta(days=1) + pd.Timedelta(minutes=n)
            rows += [(f"new{a}_{n}", f"a{a}", "view", t), (f"new{a}_{n}", f"c{a}", "view", t + pd.Timedelta(minutes=1))]
        rows.append((f"u{a}", f"a{a}", "view", T))
        test[f"u{a}"] = {f"b{a}"}
    train = _ev(rows)
    return EvalSplit("global", train, test, {u: T + pd.Timedelta(hours=1) for u in test})


def test_tuning_moves_a_parameter_off_its_default_only_on_evidence():
    from recops.config import load_settings
    from recops.training import fit_generators, make_generator, tune_generators

    settings = load_settings()
    assert settings.covisit_half_life_days == [7.0, 30.0, 365.0]
    gens = {"covisit": make_generator("covisit", settings)}
    assert gens["covisit"].half_life_days == 30.0  # the grid's middle value, untuned
    # partners touched 200 days ago by many users: only the long half-life still ranks them first
    case = _pairs_case(200.0)
    tuned, chosen, fitted = tune_generators(gens, case, pd.DataFrame(), None, settings)
    assert chosen == {"covisit_half_life_days": 365.0} and tuned["covisit"].half_life_days == 365.0
    assert gens["covisit"].half_life_days == 30.0  # the given generators are not modified
    # the chosen value's fit on the tuning train is handed back, and equals a fresh fit of the tuned generator
    assert fitted["covisit"].half_life_days == 365.0
    fresh = fit_generators(tuned, case.train, pd.DataFrame(), None)["covisit"]
    assert fitted["covisit"].recommend("u0", 5, ["a0"]) == fresh.recommend("u0", 5, ["a0"]) != []
    assert fit_generators(tuned, case.train, pd.DataFrame(), None, fitted)["covisit"] is fitted["covisit"]
    # the same pairs one day old: every half-life ranks alike, so the default stays
    _, chosen, _ = tune_generators(gens, _pairs_case(1.0), pd.DataFrame(), None, settings)
    assert chosen == {"covisit_half_life_days": 30.0}


def test_evaluating_a_model_as_fitted_equals_refitting_it(synthetic):
    """Training scores its holdout with the generators ``train_on_split`` has just fitted on exactly the
    holdout's training events (``refit=False``): that must equal refitting them, for every default generator."""
    from recops.config import load_settings
    from recops.training import evaluate_model, inner_windows, train_on_split

    s = load_settings()
    split = per_user_split(normalize_events(synthetic.events))
    windows = inner_windows(split.train, per_user_split, 1)
    model = train_on_split(split.train, synthetic.items, synthetic.users, s, windows)
    assert set(model.generators) == set(s.generators)
    as_fitted = evaluate_model(model, split, synthetic.items, synthetic.users, s, with_baseline=False, refit=False)
    refitted = evaluate_model(model, split, synthetic.items, synthetic.users, s, with_baseline=False)
    assert len(as_fitted["per_user_ndcg"]) > 100
    np.testing.assert_array_equal(as_fitted["per_user_ndcg"], refitted["per_user_ndcg"])
