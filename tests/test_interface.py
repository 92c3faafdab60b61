"""The served model's interface: every generator answers the same scoring call (``as_of`` included),
the optional ExplainsCandidates protocol, the declared parts of RecopsModel, and one request."""

import pickle

import numpy as np
import pandas as pd
import pytest

from recops.config import load_settings
from recops.features import item_features, snapshot_points
from recops.models.base import ExplainsCandidates
from recops.models.recommender import ItemTable, RecopsModel
from recops.models.request import RecommendRequest
from recops.models.sequential import NextItem
from recops.schema import normalize_events
from recops.training import make_generator

GENERATORS = ["popularity", "covisit", "itemknn", "ease", "session", "svd", "content", "demographic"]


@pytest.fixture(scope="module")
def data(synthetic):
    return normalize_events(synthetic.events), synthetic.items, synthetic.users


@pytest.mark.parametrize("name", GENERATORS)
def test_every_generator_answers_the_one_scoring_call(name, data, tmp_path):
    ev, items, users = data
    gen = make_generator(name, load_settings(home=tmp_path)).fit(ev, items, users)
    user = ev["user_id"].dropna().iloc[0]
    history = ev[ev["user_id"] == user]["item_id"].tolist()[::-1][:5]
    for as_of in (None, ev["timestamp"].max() - pd.Timedelta(days=3)):  # no generator may refuse a cut time
        idx, scores = gen.score_indices(history, 10, user_id=user, as_of=as_of)
        assert len(idx) == len(scores) <= 10 and (np.asarray(idx) >= 0).all()
        assert np.all(np.diff(scores) <= 1e-9), "best first"
    ids, _ = gen.score(history, 10, user_id=user)
    assert set(ids) <= set(gen.item_ids_)


def test_only_generators_that_can_name_a_source_explain_candidates(data, tmp_path):
    ev = data[0]
    s = load_settings(home=tmp_path)
    explaining = {n for n in GENERATORS if isinstance(make_generator(n, s), ExplainsCandidates)}
    assert explaining == {"covisit"} and isinstance(NextItem(), ExplainsCandidates)
    cv = make_generator("covisit", s).fit(ev)
    history = ev["item_id"].iloc[-3:].tolist()[::-1]
    proposed = list(cv.score(history, 5)[0])
    because = cv.strongest_source(history, proposed)
    assert because and set(because) <= set(proposed) and set(because.values()) <= set(history)


def _model(ev, items, **parts) -> RecopsModel:
    gens = {"popularity": make_generator("popularity", load_settings()).fit(ev)}
    feats = item_features(ev, snapshot_points(ev, "item_id").groupby("item_id").tail(1))
    return RecopsModel(gens, None, ItemTable.build(feats, items), **parts)


def test_a_model_pickled_before_its_parts_were_declared_loads_with_them_empty(data, tmp_path):
    ev, items, _ = data
    m = _model(ev, items, next_item=NextItem().fit(ev), scorer={"new": "popularity"})
    later = ("scorer", "calibration", "demographic", "next_item")  # parts declared after the first models
    old_state = {k: v for k, v in m.__getstate__().items() if k not in later}
    old = RecopsModel.__new__(RecopsModel)
    old.__setstate__(old_state)  # what unpickling a model saved before these parts existed does
    assert old.next_item is None and old.demographic is None and old.calibration is None and old.scorer == {}
    assert old.next_items(["x"], 3) == [] and old.feature_names == m.feature_names
    ask = RecommendRequest(k=5)
    assert [r.item_id for r in old.recommend(ask)] == [r.item_id for r in m.recommend(ask)]
    m.save(tmp_path / "m.pkl")
    back = RecopsModel.load(tmp_path / "m.pkl")
    assert back.scorer == {"new": "popularity"} and back.next_item is not None
    assert "_positions" not in pickle.loads(pickle.dumps(m)).__getstate__()


def test_the_request_alone_decides_what_is_left_out_and_how_many(data):
    ev, items, _ = data
    m = _model(ev, items)
    top = [r.item_id for r in m.recommend(RecommendRequest(k=6))]
    assert len(top) == 6
    fewer = [r.item_id for r in m.recommend(RecommendRequest(k=6, exclude=frozenset(top[:2])))]
    assert fewer[:4] == top[2:] and not set(top[:2]) & set(fewer)
    assert m.recommend(RecommendRequest(k=3, exclude=frozenset(m.items.ids))) == []
    with pytest.raises(AttributeError):
        RecommendRequest(k=1).k = 2  # frozen: one owner builds it, nobody edits it on the way
