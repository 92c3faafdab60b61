"""End to end: the real pipeline flow (Prefect) in a temp dir, then the real BentoML server over HTTP."""

import json
import time

import pandas as pd
import pytest

from recops import registry
from recops.generate import generate
from recops.store import EventStore
from recops.training import TRENDING_HALF_LIVES
from tests.conftest import END

pytestmark = pytest.mark.e2e


def test_pipeline_flow_ran_every_step(trained):
    settings, res = trained
    assert set(res) == {"ingest", "validate", "features", "train", "evaluate", "promote"}
    v = res["validate"]
    assert v["bad_rows"] > 0 and v["quarantined"] == v["bad_rows"] and v["loaded"] == v["rows"] - v["bad_rows"]
    store = EventStore(settings.event_store_uri)
    # the fresh store held exactly the loaded rows after validation (later tests track more events)
    assert v["total_events"] == v["loaded"] and store.count_events() >= v["loaded"]
    assert len(store.quarantined()) == v["bad_rows"]
    store.dispose()
    m = res["train"]["metrics"]
    assert m["ndcg_at_10"] > m["baseline_ndcg_at_10"], m  # the ranker beats popularity on the same split
    # evaluate ran on the data train saw: training's own evaluation of the challenger is reused
    ev = res["evaluate"]
    assert ev["challenger_reused"] and round(ev["challenger_metrics"]["ndcg_at_10"], 5) == m["ndcg_at_10"]
    assert res["promote"]["promoted"] and registry.alias_version(settings, registry.CHAMPION) == res["train"]["version"]


def test_flow_runs_are_recorded_by_prefect(trained):
    from prefect import get_client

    async def names():
        async with get_client() as c:
            runs = await c.read_flow_runs()
            flows = {f.id: f.name for f in await c.read_flows()}
            return {(flows[r.flow_id], r.state_type.value) for r in runs}

    import asyncio

    seen = asyncio.run(names())
    for step in ("pipeline", "ingest", "validate", "features", "train", "evaluate", "promote"):
        assert (step, "COMPLETED") in seen


def test_mlflow_run_has_metrics_features_and_model(trained):
    import mlflow

    settings, res = trained
    registry.setup(settings)
    run = mlflow.get_run(res["train"]["run_id"])
    logged, returned = run.data.metrics, res["train"]["metrics"]
    # the run holds the evaluation the train step reported: metrics at K, per segment, the baseline alongside
    for key in ("recall_at_10", "ndcg_at_10", "map_at_10", "coverage_at_10", "baseline_ndcg_at_10", "ndcg_at_1",
                "ndcg_at_5", "ndcg_at_20", "baseline_ndcg_at_20", "ndcg_at_10_heavy", "users_new",
                "baseline_ndcg_at_10_new"):
        assert logged[key] == pytest.approx(returned[key], abs=1e-5), key
    assert 0 < logged["ndcg_at_10"] <= 1 and 0 < logged["coverage_at_10"] <= 1
    assert logged["ndcg_at_10"] > logged["baseline_ndcg_at_10"]  # the planted structure beats popularity
    assert logged["recall_at_20"] >= logged["recall_at_10"] >= logged["recall_at_5"]
    assert logged["users_new"] + logged["users_light"] + logged["users_heavy"] > 0
    # hyper-parameters of the ranker, the generators and the rules, as trained
    params = run.data.params
    assert float(params["holdout_days"]) == settings.holdout_days
    assert float(params["ranker_learning_rate"]) == 0.05 and int(params["ranker_num_leaves"]) == 31
    # what training chose from the data, and why, in the run
    choices = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/choices.json")
    assert float(params["gen_popularity_half_life_days"]) == choices["trending_half_life_days"]["chose"]
    assert choices["trending_half_life_days"]["chose"] in TRENDING_HALF_LIVES
    assert params["cold_start"] == choices["cold_start"]["chose"] and params["cold_start_why"]
    assert params["scorer_known"] == choices["scorer_known"]["chose"]
    assert "known users" in choices["scorer_known"]["why"] and logged["valid_users_known"] > 0
    assert [w.split(":")[0] for w in choices["windows"]["chose"]][:2] == ["per_user", "per_user"]
    assert int(params["rule_max_per_category"]) == settings.max_per_category
    # the next-item model: the re-ranked rules serve exactly when they validated better than the rules
    reranked = logged["next_item_reranked_valid_mrr_at_20"] > logged["next_item_valid_mrr_at_20"]
    assert choices["next_item"]["chose"]["reranked"] == reranked
    assert params["next_item_model"] == ("RankedNextItem" if reranked else "NextItem")
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/metric_vs_k.png", "plots/ndcg_by_segment.png", "plots/feature_importance.png"}
    feats = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/features.json")
    assert "u_view_to_cart_30d" in feats["features"] and "covisit_score" in feats["features"]
    pyf = mlflow.pyfunc.load_model(res["train"]["model_uri"])
    out = pyf.predict(pd.DataFrame({"user_id": ["anyone"], "k": [3]}))
    assert list(out.columns) == ["user_id", "item_id", "rank", "score"] and len(out) == 3


def test_recommend_known_user(client, trained):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    user = store.events()["user_id"].value_counts().index[0]
    store.dispose()
    r = client.post("/recommend", json={"user_id": user, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] is False and len(body["items"]) == 7
    assert body["model_version"] == trained[1]["train"]["version"]
    assert all(it["reason"] for it in body["items"]) and [it["rank"] for it in body["items"]] == list(range(1, 8))
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    excl = [body["items"][0]["item_id"]]
    again = client.post("/recommend", json={"user_id": user, "k": 7, "exclude": excl}).json()
    assert excl[0] not in [it["item_id"] for it in again["items"]]


def test_unknown_user_gets_trending_fallback(client):
    r = client.post("/recommend", json={"user_id": "never-seen", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] is True and "unknown user" in body["fallback_reason"] and len(body["items"]) == 5


def test_recommendations_follow_tracked_events(client, trained):
    """A new user views items of one category: the very next request moves toward it."""
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    items = store.items()
    store.dispose()
    cat = items["category"].value_counts().index[3]
    chosen = items[items["category"] == cat]["item_id"].head(4).tolist()
    user = f"fresh-{time.time_ns()}"
    before = client.post("/recommend", json={"user_id": user, "k": 10}).json()
    assert before["fallback"] is True
    t = client.post("/track/batch", json=[{"user_id": user, "item_id": i, "event_type": "view", "session_id": "s-fresh"}
                                          for i in chosen])
    assert t.status_code == 200 and t.json()["stored"] == 4 and t.json()["online_updated"] == [user]
    after = client.post("/recommend", json={"user_id": user, "k": 10}).json()
    assert after["fallback"] is False
    cat_of = items.set_index("item_id")["category"]
    share = lambda body: sum(cat_of.get(it["item_id"]) == cat for it in body["items"]) / len(body["items"])
    assert share(after) > share(before), (share(before), share(after))
    # ... and toward the complements the generator planted for the viewed items (what is bought next)
    truth = generate(n_events=30_000, seed=11, bad_share=0.01, end=END).truth["complement"]
    comps = {truth[i] for i in chosen} - set(chosen)
    hits = lambda body: sum(it["item_id"] in comps for it in body["items"])
    assert hits(after) > hits(before), (hits(before), hits(after), comps)
    assert after["strategy"] == "session" and all(0 < it["confidence"] <= 1 for it in after["items"])
    assert all(0 < it["confidence"] <= 1 for it in after["items"]) and after["items"][0]["sources"]


def test_track_is_idempotent_and_durable(client, trained):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    n0 = store.count_events()
    ev = {"event_id": f"dup-{time.time_ns()}", "user_id": "u1", "item_id": "i1", "event_type": "click"}
    a = client.post("/track", json=ev).json()
    b = client.post("/track", json=ev).json()
    assert (a["stored"], b["stored"], b["duplicates"]) == (1, 0, 1)
    assert store.count_events() == n0 + 1
    unknown = client.post("/track", json={"user_id": "u1", "item_id": "not-in-catalog", "event_type": "view"}).json()
    assert unknown["unknown_items"] == ["not-in-catalog"] and store.count_events() == n0 + 2
    store.dispose()


def test_health_and_model(client, trained):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model_loaded"] and h["events"] > 0
    m = client.get("/model").json()
    assert m["version"] == trained[1]["train"]["version"] and "u_view_7d" in m["features"]
    spec = client.get("/docs.json").json()
    assert {"/recommend", "/track", "/track/batch", "/health", "/model", "/implicit-rating"} <= set(spec["paths"])
    # one docs page, BentoML's Swagger UI at / (FastAPI's /docs loads its assets from a CDN: blank offline)
    docs = client.get("/docs", follow_redirects=False)
    assert docs.status_code in (302, 307) and docs.headers["location"] == "/" and "/docs" not in spec["paths"]
    # the API's own title, version and description, not BentoML's ("None" outside a Bento, its team as contact)
    import recops

    assert spec["info"]["version"] == recops.__version__ and "contact" not in spec["info"]
    assert spec["info"]["title"] == "recops" and "Real-time behavioral recommendations" in spec["info"]["description"]


ENDPOINTS = {"/recommend": "post", "/session/recommend": "post", "/track": "post", "/track/batch": "post",
             "/predict": "post", "/deals": "post", "/next-items": "post", "/explain": "get", "/implicit-rating": "get",
             "/users/{user_id}/profile": "get", "/health": "get", "/model": "get", "/experiments": "get",
             "/experiments/{name}": "get"}


def test_openapi_documents_every_endpoint_with_models_and_examples(client):
    spec = client.get("/docs.json").json()

    def resolve(node, depth=0):
        """The node with $refs to components expanded (a few levels: enough to reach the fields)."""
        if isinstance(node, dict):
            if "$ref" in node and depth < 4:
                return resolve(spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]], depth + 1)
            return {k: resolve(v, depth) for k, v in node.items()}
        return [resolve(v, depth) for v in node] if isinstance(node, list) else node

    for path, method in ENDPOINTS.items():
        assert path in spec["paths"] and method in spec["paths"][path], path
        op = resolve(spec["paths"][path][method])
        assert op.get("description") or op.get("summary"), path
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok.get("properties") or ok.get("items"), (path, ok)  # a response model, not "any"
        if method == "post":
            assert op["requestBody"]["content"]["application/json"]["schema"], path
        elif path not in ("/health", "/model", "/experiments"):  # the two that take no input
            assert op["parameters"], path
        assert '"examples"' in json.dumps(op) or '"example"' in json.dumps(op), path  # examples shown in the docs
    # Swagger UI (OpenAPI 3.0) fills its sample bodies from `example`, not JSON Schema's `examples`
    body = resolve(spec["paths"]["/recommend"]["post"])["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["user_id"]["example"] == "u17"
    track = resolve(spec["paths"]["/track"]["post"])["requestBody"]["content"]["application/json"]["schema"]
    assert track["properties"]["item_id"]["example"] == "i42"
