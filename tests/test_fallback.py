"""Fallback: no champion, and a champion that raises (fault injection): 200 with fallback: true."""

import copy
import time

import lightgbm as lgb
import numpy as np
import pytest

from recops import registry, steps
from recops.config import load_settings
from tests.conftest import END, Server, auth, free_port

pytestmark = pytest.mark.e2e


def test_no_champion_answers_from_the_event_store(tmp_root):
    settings = load_settings(home=tmp_root / "no-champion")
    b = steps.ingest(settings, n_events=3_000, end=END, seed=3)
    steps.validate(settings, b["batch_id"])
    srv = Server(settings, free_port(), workers=1).wait()
    try:
        import httpx

        r = httpx.post(f"{srv.url}/recommend", json={"user_id": "u1", "k": 5}, timeout=30, headers=auth(settings))
        assert r.status_code == 200
        body = r.json()
        assert body["fallback"] is True and "no champion" in body["fallback_reason"]
        assert len(body["items"]) == 5 and body["model_version"] is None
        assert httpx.get(f"{srv.url}/health").json()["model_loaded"] is False
    finally:
        srv.stop()


def test_a_failing_champion_falls_back_and_recovers(client, trained):
    settings, res = trained
    good = res["train"]["version"]
    model = copy.deepcopy(registry.load_version(settings, good))
    # a ranker trained on 3 features: predict() raises on the real 50-column matrix
    x = np.random.default_rng(0).normal(size=(40, 3))
    model.ranker = lgb.train({"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 1},
                             lgb.Dataset(x, (x[:, 0] > 0).astype(int), group=[20, 20]), num_boost_round=2)
    bad = registry.log_model(settings, model, {"fault_injection": "feature-mismatch"}, {})["version"]
    client_ = registry.setup(settings)
    user = "u1"
    client.post("/track", json={"user_id": user, "item_id": "i1", "event_type": "view"})
    try:
        client_.set_registered_model_alias(settings.model_name, registry.CHAMPION, bad)
        body = _wait_for_version(client, user, bad)
        assert body["fallback"] is True and body["fallback_reason"].startswith("model error")
        assert len(body["items"]) == 5
    finally:
        client_.set_registered_model_alias(settings.model_name, registry.CHAMPION, good)
        client_.set_registered_model_alias(settings.model_name, registry.CHALLENGER, good)
    body = _wait_for_version(client, user, good)
    assert body["fallback"] is False


def _wait_for_version(client, user, version, timeout=30):
    t0 = time.time()
    while time.time() - t0 < timeout:
        body = client.post("/recommend", json={"user_id": user, "k": 5}).json()
        if body["model_version"] == version:
            return body
        time.sleep(0.3)
    raise AssertionError(f"the server did not hot-reload version {version} within {timeout}s")
