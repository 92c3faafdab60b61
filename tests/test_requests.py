"""The one place a RecommendRequest is built (recops.serving.requests), on the trained pipeline's
stores: what a request knows about a user or a session, and what it leaves out."""

import json
import uuid

import pandas as pd
import pytest

from recops.models.intent import infer_intent
from recops.services.schemas import TrackEvent
from recops.serving import Serving
from recops.vocabulary import CART, HISTORY_LEN, VIEW

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def serving(trained):
    settings, _ = trained
    s = Serving(settings)
    yield s
    s.close()


def test_a_users_request_holds_their_fresh_history_and_every_exclusion(serving, trained):
    settings, _ = trained
    ev = serving.store.events()
    excluding = ev[ev["event_type"].isin(settings.exclude_event_types)]
    user = excluding["user_id"].value_counts().index[0]
    mine = ev[ev["user_id"] == user]
    last = mine.groupby("item_id")["timestamp"].max().reset_index().sort_values(["timestamp", "item_id"],
                                                                                  ascending=[False, True])
    gone = serving.catalog.out_of_stock
    assert gone, "the synthetic catalog has items out of stock"

    req = serving.requests.for_user(user, 7, exclude=["caller-excluded"])
    assert req.k == 7 and req.user_id == user and req.strategy == "personalized"
    assert list(req.history) == last["item_id"].tolist()[:HISTORY_LEN]
    bought = set(excluding[excluding["user_id"] == user]["item_id"])
    assert bought <= req.exclude and gone <= req.exclude and "caller-excluded" in req.exclude
    assert req.exclude == bought | gone | {"caller-excluded"}
    assert req.features["u_tenure_days"] > 0 and req.rules.exclude_event_types == tuple(settings.exclude_event_types)
    recs = serving.champion.require().model.recommend(req)
    assert len(recs) == 7 and not {r.item_id for r in recs} & req.exclude
    # the endpoint answers from the same request
    assert [it.item_id for it in serving.recommendations.recommend(user, 7, exclude=["caller-excluded"]).items] == \
        [r.item_id for r in recs]
    assert serving.requests.for_user(f"nobody-{uuid.uuid4().hex}", 5) is None  # a cold start


def test_a_sessions_request_reads_its_visit_and_hides_what_it_carted(serving):
    items = serving.catalog.items
    items = items[items["in_stock"]]
    cat = items["category"].value_counts().index[0]
    a, b = items[items["category"] == cat]["item_id"].head(2)
    sid = f"req-{uuid.uuid4().hex}"
    t0 = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=2)
    t1 = t0 + pd.Timedelta(seconds=30)
    serving.tracking.track([TrackEvent(session_id=sid, item_id=a, event_type=VIEW, timestamp=t0),
                            TrackEvent(session_id=sid, item_id=b, event_type=CART, timestamp=t1)])
    visit = serving.requests.visit(sid)
    assert json.loads(visit["s_items"]) == [b, a]  # newest first
    intent = infer_intent(visit)
    req = serving.requests.for_session(sid, visit, intent, 5, exclude=["x"])
    assert intent.name == req.intent == "transactional" and req.user_id is None and req.strategy == "session"
    assert req.history == req.session_items == (b, a)
    assert b in req.exclude and a not in req.exclude and "x" in req.exclude
    assert req.category_shares == {cat: 1.0} and req.features["u_tenure_days"] >= 0
    body = serving.recommendations.session_recommend(sid, 5)
    assert not body.fallback and b not in [it.item_id for it in body.items] and body.intent == "transactional"


def test_the_warm_up_runs_the_request_path_and_leaves_no_trace(serving):
    from recops.serving.runtime import WARM_ID

    before = (serving.store.count_events(), serving.store.pending_count()[0], serving.impressions.pending(),
              serving.impressions.written)
    assert serving.warm() > 0
    assert (serving.store.count_events(), serving.store.pending_count()[0], serving.impressions.pending(),
            serving.impressions.written) == before
    assert serving.store.user_state(user_id=WARM_ID).history == [] and serving.store.user_row(WARM_ID) is None
