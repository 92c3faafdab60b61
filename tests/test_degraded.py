"""Degraded, never broken: each outage is flagged in the answer and counted in /metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recops.store import EventStore
from tests.conftest import Server, auth, free_port

pytestmark = pytest.mark.e2e


def test_an_unreachable_registry_at_start_serves_the_local_copy(client, trained):
    settings, _ = trained
    copy = Path(settings.home) / "serving" / "champion" / "version.json"
    deadline = time.time() + 60  # the shared server keeps its copy in the background after loading
    while not copy.exists():
        assert time.time() < deadline, "no local copy of the champion was kept"
        time.sleep(0.5)
    version = json.loads(copy.read_text())["version"]
    user = EventStore(settings.event_store_uri).events()["user_id"].value_counts().index[0]
    healthy = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert healthy["degraded"] is False and healthy["degraded_reason"] is None

    srv = Server(settings, free_port(), env={"RECOPS_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, workers=1).wait()
    try:
        with httpx.Client(base_url=srv.url, timeout=60, headers=auth(settings)) as c:
            rec = c.post("/recommend", json={"user_id": user, "k": 5}).json()
            health = c.get("/health").json()
            metrics = c.get("/metrics").text
    finally:
        srv.stop()
    assert rec["model_version"] == version and not rec["fallback"] and len(rec["items"]) == 5, rec
    assert rec["degraded"] and "registry is unreachable" in rec["degraded_reason"], rec
    assert rec["items"] == healthy["items"]  # the same model, so the same list
    assert health["model_version"] == version and "unreachable" in health["degraded"]
    counted = {s.labels["cause"]: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "recops_degraded_answers_total" and s.labels["endpoint"] == "/recommend"}
    assert counted == {"registry": 1.0}
