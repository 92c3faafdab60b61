"""Online experiments over real HTTP: the shared server serves an A/B test and an interleaving test
between the trained champion and a second registered version, and the store's counts must equal
what these tests sent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recops import registry
from recops.experiments import lifecycle, stats
from recops.experiments.assignment import CHALLENGER, CONTROL
from tests.conftest import Server, auth, each_worker, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def versions(trained, client):
    """v1 is the champion; v2 is the same trained model registered again (a real second version).
    Afterwards no experiment runs, and the server has seen that (the next module's tests see no variant)."""
    import mlflow

    settings, result = trained
    registry.setup(settings)
    v2 = mlflow.register_model(f"runs:/{result['train']['run_id']}/model", settings.model_name).version
    champion = registry.alias_version(settings, registry.CHAMPION)
    yield settings, champion, str(v2)
    store = lifecycle.records(settings)
    if store.running():
        lifecycle.stop(settings, store.running().name, store=store, reason="tests done")
    _served(client, None)
    assert registry.alias_version(settings, registry.CHAMPION) == champion  # no test promoted


def _served(client, name: str | None, share: float | None = None, timeout: float = 60) -> None:
    """Wait until every worker of the server serves this experiment (None: none) at this share."""
    t0 = time.time()
    workers = _workers(client)
    try:
        for c in workers:
            while True:
                h = c.get("/health").json()
                if h["experiment"] == name and (share is None or h["experiment_share"] == share):
                    break
                if time.time() - t0 > timeout:
                    raise TimeoutError(f"worker {h['worker']} did not pick up experiment {name} (share {share}): {h}")
                time.sleep(0.3)
    finally:
        for c in workers:
            c.close()


def _workers(client) -> list:
    """A client of each worker of ``client``'s server, with its token."""
    return each_worker(str(client.base_url).rstrip("/"), {"Authorization": client.headers["authorization"]})


def _known_users(trained, n: int) -> list[str]:
    from recops.store import EventStore

    ev = EventStore(trained[0].event_store_uri).events()
    return ev["user_id"].dropna().value_counts().index[:n].tolist()


def test_lists_carry_a_request_id_outside_experiments(client):
    a, b = (client.post("/recommend", json={"user_id": "u1", "k": 3}).json() for _ in range(2))
    assert a["request_id"] and a["request_id"] != b["request_id"]
    assert a["experiment"] is None and a["variant"] is None and all(i["team"] is None for i in a["items"])


@pytest.fixture(scope="module")
def ab(versions, client):
    settings, _, v2 = versions
    st = lifecycle.start(settings, "http-ab", v2, share=0.5)
    _served(client, "http-ab", 0.5)
    return settings, lifecycle.records(settings).get(st["name"])


def test_variant_is_sticky_and_is_the_hash(ab, client, trained):
    _settings, exp = ab
    users = _known_users(trained, 40)
    seen = {}
    for u in users:
        r = client.post("/recommend", json={"user_id": u, "k": 5}).json()
        assert r["experiment"] == "http-ab" and r["variant"] == exp.variant_of(u)
        seen[u] = r["variant"]
    assert set(seen.values()) == {CONTROL, CHALLENGER}
    u = users[0]
    assert {client.post("/recommend", json={"user_id": u, "k": 3}).json()["variant"] for _ in range(100)} == {seen[u]}
    workers = _workers(client)
    try:
        for c in workers:  # every worker assigns alike
            assert {u: c.post("/recommend", json={"user_id": u, "k": 3}).json()["variant"] for u in users} == seen
    finally:
        for c in workers:
            c.close()


def _variants(client, name):
    """The experiment's per-variant figures once every worker has written the lists it served (each
    worker queues its own impressions; ``GET /experiments/{name}`` writes the answering worker's)."""
    workers = _workers(client)
    try:
        for c in workers:
            r = c.get(f"/experiments/{name}")
            assert r.status_code == 200, r.text
    finally:
        for c in workers:
            c.close()
    return r.json()["variants"]


def test_impressions_and_attributed_clicks_are_counted_exactly(ab, client, trained):
    _settings, _exp = ab
    before = _variants(client, "http-ab")
    users = _known_users(trained, 60)[20:50]
    sent = {CONTROL: [0, 0], CHALLENGER: [0, 0]}  # lists, clicks
    clicks = []
    for n, u in enumerate(users):
        for m in range(2):
            r = client.post("/recommend", json={"user_id": u, "k": 5}).json()
            assert not r["fallback"]
            sent[r["variant"]][0] += 1
            if (n + m) % 3:  # click two of every three lists on their second item, naming the list
                clicks.append({"user_id": u, "item_id": r["items"][1]["item_id"], "event_type": "click",
                               "request_id": r["request_id"]})
                sent[r["variant"]][1] += 1
    # a click on an item no list showed, and a view of a shown item, are not clicks on recommendations
    clicks.append({"user_id": users[0], "item_id": "no-such-item", "event_type": "click"})
    clicks.append({"user_id": users[0], "item_id": r["items"][0]["item_id"], "event_type": "view",
                   "request_id": r["request_id"]})
    assert client.post("/track/batch", json=clicks).status_code == 200
    after = _variants(client, "http-ab")
    for v in (CONTROL, CHALLENGER):
        assert after[v]["impressions"] - before[v]["impressions"] == sent[v][0], v
        assert after[v]["clicks"] - before[v]["clicks"] == sent[v][1], v


def test_fallback_lists_are_counted_apart_and_never_succeed(ab, client):
    before = _variants(client, "http-ab")
    sent = {CONTROL: 0, CHALLENGER: 0}
    for n in range(12):
        r = client.post("/recommend", json={"user_id": f"ab-nobody-{n}", "k": 4}).json()
        assert r["fallback"] and r["variant"] in sent
        sent[r["variant"]] += 1
        client.post("/track", json={"user_id": f"ab-nobody-{n}", "item_id": r["items"][0]["item_id"],
                                    "event_type": "click", "request_id": r["request_id"]})
    after = _variants(client, "http-ab")
    for v in (CONTROL, CHALLENGER):
        assert after[v]["fallback_impressions"] - before[v]["fallback_impressions"] == sent[v]
        assert after[v]["clicks"] == before[v]["clicks"] and after[v]["impressions"] == before[v]["impressions"]


def test_ramp_keeps_the_challengers_users(ab, client):
    settings, _exp = ab
    users = [f"ramp-user-{n}" for n in range(150)]

    def challengers() -> set[str]:
        return {u for u in users if client.post("/session/recommend", json={"session_id": u, "k": 2}).json()[
            "variant"] == CHALLENGER}

    lifecycle.ramp(settings, "http-ab", 0.1)
    _served(client, "http-ab", 0.1)
    at10 = challengers()
    lifecycle.ramp(settings, "http-ab", 0.5)
    _served(client, "http-ab", 0.5)
    at50 = challengers()
    assert at10 <= at50 and len(at50) > len(at10) > 0


def test_split_passes_the_srm_check(ab, client):
    _, exp = ab
    over_http = [f"srm-{n}" for n in range(150)]
    for u in over_http:  # what the server answers is the hash ...
        assert client.post("/session/recommend", json={"session_id": u, "k": 1}).json()["variant"] == exp.variant_of(u)
    split = [exp.variant_of(f"srm-{n}") for n in range(10_000)]  # ... so the hash's split is the served split
    n_chal = split.count(CHALLENGER)
    assert stats.srm_p_value([10_000 - n_chal, n_chal], [1 - exp.share, exp.share]) > stats.SRM_ALPHA


def test_a_restarted_server_gives_everyone_the_same_variant(ab, client, trained):
    settings, exp = ab
    users = _known_users(trained, 15)
    first = {u: client.post("/recommend", json={"user_id": u, "k": 2}).json()["variant"] for u in users}
    second = Server(settings, free_port()).wait()
    try:
        import httpx

        with httpx.Client(base_url=second.url, timeout=30, headers=auth(settings)) as c2:
            _served(c2, "http-ab", 0.5)
            answers = {u: c2.post("/recommend", json={"user_id": u, "k": 2}).json() for u in users}
            assert {u: a["variant"] for u, a in answers.items()} == first
    finally:
        second.stop()  # SIGTERM at once: the impressions still queued are written by the shutdown hook
    from recops.impressions import load_impressions
    from recops.store import EventStore

    imps, _ = load_impressions(EventStore(settings.event_store_uri).engine, exp.started_at)
    assert {a["request_id"] for a in answers.values()} <= set(imps["request_id"])


def _cli(settings, *args) -> subprocess.CompletedProcess:
    recops = Path(sys.executable).with_name("recops")
    return subprocess.run([str(recops), *args], env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_bad_requests_get_errors_and_change_nothing(ab, client, versions):
    settings, _exp = ab
    _, _champion, v2 = versions
    before = client.get("/experiments").json()
    assert client.get("/experiments/no-such-test").status_code == 404
    assert "no experiment named" in client.get("/experiments/no-such-test").json()["error"]
    r = _cli(settings, "experiment", "start", "other", "--challenger", "999")
    assert r.returncode == 2 and "no version 999" in r.stderr, r.stderr
    r = _cli(settings, "experiment", "ramp", "http-ab", "1.5")
    assert r.returncode == 2 and "within [0, 1]" in r.stderr, r.stderr
    r = _cli(settings, "experiment", "start", "other", "--challenger", v2)
    assert r.returncode == 2 and "is running" in r.stderr, r.stderr
    assert client.get("/experiments").json() == before
    r = _cli(settings, "experiment", "status", "http-ab", "--json")
    assert r.returncode == 0 and '"variants"' in r.stdout


def test_interleaved_lists_hold_both_teams_once_each(ab, client, trained, versions):
    settings, _ = ab
    _, champion, v2 = versions
    lifecycle.stop(settings, "http-ab")
    _served(client, None)
    lifecycle.start(settings, "http-il", v2, method="interleave", share=1.0)
    _served(client, "http-il", 1.0)
    teams, clicked = set(), 0
    for u in _known_users(trained, 12):
        r = client.post("/recommend", json={"user_id": u, "k": 8}).json()
        ids = [i["item_id"] for i in r["items"]]
        assert r["variant"] == "interleaved" and len(ids) == len(set(ids)) == 8
        assert r["model_version"] == f"{champion}+{v2}" and [i["rank"] for i in r["items"]] == list(range(1, 9))
        teams |= {i["team"] for i in r["items"]}
        item = next(i for i in r["items"] if i["team"] == CHALLENGER)
        client.post("/track", json={"user_id": u, "item_id": item["item_id"], "event_type": "click",
                                    "request_id": r["request_id"]})
        clicked += 1
    assert teams == {CONTROL, CHALLENGER}
    st = client.get("/experiments/http-il").json()
    assert st["variants"]["interleaved"]["team_credit"] == {CONTROL: 0.0, CHALLENGER: float(clicked)}
    assert st["interleaving"]["preferring"] == 12 and st["interleaving"]["challenger_win_share"] == 1.0
