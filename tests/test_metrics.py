"""/metrics over real HTTP: every count read back exactly, next to BentoML's own series."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from recops.serving.recommend import MODEL_ERROR, NEW_SESSION, NO_CANDIDATES, UNKNOWN_USER, fallback_kind
from recops.serving.state import ModelSlot
from recops.store import EventStore
from tests.conftest import Server, free_port


def scrape(client) -> dict[tuple[str, frozenset], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def total(samples: dict, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def test_fallback_reasons_have_fixed_names():
    slot_reason = f"{ModelSlot.NO_MODEL} champion model: not loaded"
    assert [fallback_kind(r) for r in (None, UNKNOWN_USER, NEW_SESSION, NO_CANDIDATES, f"{MODEL_ERROR}: KeyError",
                                       slot_reason, "something new")] == \
        ["none", "unknown_user", "new_session", "no_candidates", "model_error", "no_model", "other"]


@pytest.mark.e2e
def test_metrics_count_requests_answers_and_events_exactly(client, trained):
    settings, _ = trained
    store = EventStore(settings.event_store_uri)
    known = store.events()["user_id"].value_counts().index[:4].tolist()
    item = store.items()["item_id"].iloc[0]
    store.dispose()
    tag = time.time_ns()
    # another server on the same home (a replica, a restart beside it) must not freeze this one's counts
    Server(settings, free_port(), workers=1).wait().stop()
    before = scrape(client)

    answers = Counter()
    for n in range(7):  # known users, then unknown ones, then sessions nobody has seen
        body = client.post("/recommend", json={"user_id": known[n % 4], "k": 5}).json()
        answers["/recommend", body["strategy"], body["variant"] or "none", fallback_kind(body["fallback_reason"])] += 1
        assert body["fallback"] is False
    for n in range(3):
        body = client.post("/recommend", json={"user_id": f"metrics-new-{tag}-{n}", "k": 5}).json()
        answers["/recommend", body["strategy"], body["variant"] or "none", fallback_kind(body["fallback_reason"])] += 1
        assert body["fallback_reason"] == UNKNOWN_USER
    for n in range(2):
        body = client.post("/session/recommend", json={"session_id": f"metrics-s-{tag}-{n}", "k": 5}).json()
        answers["/session/recommend", body["strategy"], body["variant"] or "none",
                fallback_kind(body["fallback_reason"])] += 1
        assert body["fallback_reason"] == NEW_SESSION
    bad = client.post("/recommend", json={"user_id": known[0], "k": 5, "weights": {"no-such-signal": 1}})
    assert bad.status_code == 400

    ev = lambda n, item_id=item: {"event_id": f"metrics-{tag}-{n}", "user_id": f"metrics-u-{tag}",
                                  "item_id": item_id, "event_type": "view"}
    assert client.post("/track", json=ev(0)).json()["stored"] == 1
    assert client.post("/track", json=ev(0)).json()["duplicates"] == 1
    batch = client.post("/track/batch", json=[ev(1), ev(2), ev(3, "not-in-catalog"), ev(0)]).json()
    assert (batch["accepted"], batch["stored"], batch["duplicates"]) == (4, 3, 1)
    assert client.post("/track/batch", json=[]).status_code == 400
    for _ in range(100):  # the refresher's backlog drains
        if client.get("/health").json()["online_refresh"]["pending"] == 0:
            break
        time.sleep(0.1)
    after = scrape(client)

    def diff(name: str, **labels) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # BentoML's own series: every request, by endpoint and status code, with its latency observed
    assert diff("bentoml_service_request_total", endpoint="/recommend") == 11
    assert diff("bentoml_service_request_total", endpoint="/recommend", http_response_code="400") == 1
    assert diff("bentoml_service_request_duration_seconds_count", endpoint="/recommend") == 11
    assert diff("bentoml_service_request_total", endpoint="/track") == 2
    assert diff("bentoml_service_request_total", endpoint="/track/batch", http_response_code="400") == 1
    # recops's: each list by what answered it, as the answers said
    for (endpoint, strategy, variant, why), n in answers.items():
        assert diff("recops_answers_total", endpoint=endpoint, strategy=strategy, variant=variant, fallback=why) == n
    assert diff("recops_answers_total") == 12
    assert diff("recops_answers_total", endpoint="/recommend", fallback="unknown_user", strategy="trending") == 3
    assert diff("recops_answers_total", endpoint="/session/recommend", fallback="new_session") == 2
    assert {o: diff("recops_events_total", outcome=o) for o in ("accepted", "stored", "duplicate", "unknown_item")} \
        == {"accepted": 6, "stored": 4, "duplicate": 2, "unknown_item": 1}
    # read when scraped
    assert total(after, "recops_online_refresh_backlog") == 0 and total(after, "recops_online_refresh_lag_seconds") == 0
    assert total(after, "recops_model_info", version=client.get("/model").json()["version"], alias="champion") == 1
    assert 0 < total(after, "recops_champion_age_seconds") < 24 * 3600
    store = EventStore(settings.event_store_uri)
    assert total(after, "recops_quarantined_rows") == store.count_quarantined() > 0  # the pipeline's bad rows
    store.dispose()
