"""Experiments as data, attribution of outcomes to served lists, and the ab-evaluate flow's policy on
seeded experiments (a real MLflow registry, real Prefect flow runs, a real SQLite event store)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd
import pytest

from recops import registry
from recops.config import load_settings
from recops.experiments import lifecycle
from recops.experiments.assignment import CHALLENGER, CONTROL
from recops.experiments.records import ExperimentError, ExperimentStore
from recops.impressions import ImpressionLog, attribution
from recops.store import EventStore
from tests.test_lifecycle import _tiny_model


@pytest.fixture
def home(tmp_path):
    """A fresh home whose registry holds three versions, v1 the champion."""
    s = load_settings(home=tmp_path / "ab", experiment_ramp=[0.1, 0.3, 0.6, 1.0])
    s.ensure_dirs()
    for _ in range(3):
        registry.log_model(s, _tiny_model(), {}, {})
    registry.setup(s).set_registered_model_alias(s.model_name, registry.CHAMPION, "1")
    return s


def _state(store: ExperimentStore) -> tuple:
    return [(e.name, e.status, e.share) for e in store.list()], [len(store.history(e.name)) for e in store.list()]


def test_bad_requests_change_nothing(home):
    store = lifecycle.records(home)
    lifecycle.start(home, "first", "2", share=0.1, store=store)
    before = _state(store)
    bad = [
        {"name": "second", "challenger": "2"},  # another is running
        {"name": "first", "challenger": "3"},  # the name is taken (and one runs)
    ]
    for kw in bad:
        with pytest.raises(ExperimentError):
            lifecycle.start(home, store=store, **kw)
    with pytest.raises(ExperimentError, match="within"):
        lifecycle.ramp(home, "first", 1.5, store=store)
    with pytest.raises(ExperimentError, match="no experiment"):
        lifecycle.ramp(home, "nope", 0.5, store=store)
    with pytest.raises(ExperimentError, match="not both"):
        lifecycle.stop(home, "first", promote=True, rollback=True, store=store)
    assert _state(store) == before
    lifecycle.stop(home, "first", store=store)
    after_stop = _state(store)
    for kw, msg in [({"challenger": "9"}, "no version 9"), ({"challenger": "@nobody"}, "alias"),
                    ({"challenger": "1"}, "is the control"), ({"challenger": "2", "share": -0.1}, "within"),
                    ({"challenger": "2", "method": "bandit"}, "method"),
                    ({"challenger": "2", "metric": "ndcg"}, "metric"),
                    ({"challenger": "x y"}, "version number")]:
        with pytest.raises(ExperimentError, match=msg):
            lifecycle.start(home, "again", store=store, **kw)
    with pytest.raises(ExperimentError, match="not running"):
        lifecycle.ramp(home, "first", 0.5, store=store)
    assert _state(store) == after_stop


def test_history_records_every_change(home):
    store = lifecycle.records(home)
    lifecycle.start(home, "h", "@challenger", share=0.1, store=store)  # @challenger is v3 (the last trained)
    assert store.get("h").challenger == "3" and store.get("h").control == "1"
    lifecycle.ramp(home, "h", 0.3, store=store)
    lifecycle.stop(home, "h", rollback=True, store=store)
    h = store.history("h")
    assert [x["action"] for x in h] == ["start", "ramp", "rollback"]
    assert [x["share"] for x in h] == [0.1, 0.3, 0.0] and h[-1]["status"] == "rolled_back"
    assert all(b["at"] >= a["at"] for a, b in itertools.pairwise(h))


def test_attribution_by_request_id_then_latest_list_in_window():
    t = 1_000_000.0
    imps = pd.DataFrame({"request_id": ["r1", "r2", "r3"], "unit": ["u", "u", "v"], "served_at": [t, t + 100, t]})
    shown = pd.DataFrame({"request_id": ["r1", "r1", "r2", "r3"], "position": [1, 2, 1, 1],
                          "item_id": ["a", "b", "a", "a"], "team": [None] * 4})
    ev = pd.DataFrame({
        "event_id": ["e1", "e2", "e3", "e4", "e5", "e6"],
        "user_id": ["u", "u", "u", "u", "v", None],
        "session_id": [None, None, None, None, None, "s"],
        "item_id": ["a", "a", "b", "c", "a", "a"],
        "event_type": ["click"] * 6,
        "timestamp": [t + 200, t + 50, t + 200, t + 10, t + 90_000, t + 5],
        "value": [None] * 6,
        "request_id": ["r1", None, None, None, None, None],
    })
    got = attribution(imps, shown, ev, window_seconds=86_400).set_index("event_id")["request_id"].to_dict()
    # e1 names r1 (which held a) though r2 is later; e2 is before r2: r1; e3 only r1 held b; e4 no list held c;
    # e5 is 25 h after v's list: outside the window; e6 is a session nobody served
    assert got == {"e1": "r1", "e2": "r1", "e3": "r1"}


def test_impression_log_close_writes_everything(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    log = ImpressionLog(store.engine, flush_seconds=60)  # the thread would not write before close
    for n in range(1234):
        log.add({"request_id": f"r{n}", "served_at": time.time(), "unit": f"u{n % 7}", "user_id": f"u{n % 7}",
                 "session_id": None, "endpoint": "recommend", "experiment": None, "variant": None,
                 "model_version": "1", "strategy": "personalized", "fallback": False, "fallback_reason": None,
                 "error": False, "latency_ms": 3.0}, [("a", None), ("b", None)])
    log.close()
    from recops.impressions import load_impressions

    imps, shown = load_impressions(store.engine, 0)
    assert len(imps) == 1234 and len(shown) == 2468 and log.pending() == 0


def _seed(s, name: str, users: list[str], ctr: dict[str, float], rng: np.random.Generator, lists: int = 4) -> None:
    """Serve each user ``lists`` lists per their variant and click the first item with the variant's CTR."""
    store = EventStore(s.event_store_uri)
    exp = ExperimentStore(store.engine).get(name)
    log = ImpressionLog(store.engine, flush_seconds=60)
    events, now = [], time.time()
    for u in users:
        v = exp.variant_of(u)
        for n in range(lists):
            rid = f"{name}-{u}-{n}-{exp.share}"
            log.add({"request_id": rid, "served_at": now, "unit": u, "user_id": u, "session_id": None,
                     "endpoint": "recommend", "experiment": name, "variant": v, "model_version": "1",
                     "strategy": "personalized", "fallback": False, "fallback_reason": None, "error": False,
                     "latency_ms": 3.0}, [(f"i{n}", None), (f"i{n + 1}", None)])
            if rng.random() < ctr[v]:
                events.append({"event_id": f"c-{rid}", "user_id": u, "item_id": f"i{n}", "event_type": "click",
                               "timestamp": now + 0.5, "session_id": None, "value": None, "context": None,
                               "ingested_at": now, "request_id": rid})
    log.close()
    if events:
        store.insert_events(events)


def test_ab_evaluate_flow_ramps_promotes_rolls_back_and_continues(home, prefect_harness):
    import mlflow

    from recops.flows.pipeline import ab_evaluate_flow

    store = lifecycle.records(home)
    rng = np.random.default_rng(3)

    def evaluate():
        import os

        old = dict(os.environ)
        os.environ.update(home.to_env())
        try:
            return ab_evaluate_flow()
        finally:
            os.environ.clear()
            os.environ.update(old)

    # planted better: ramps 0.1 -> 0.3 -> 0.6, then promotes (the @champion alias moves to v2)
    lifecycle.start(home, "better", "2", share=0.1, store=store)
    actions = []
    for stage in range(6):
        _seed(home, "better", [f"b{stage}-{i}" for i in range(2500)], {CONTROL: 0.2, CHALLENGER: 0.35}, rng)
        res = evaluate()
        actions.append(res["decision"]["action"])
        if store.get("better").status != "running":
            break
    assert actions == ["ramp", "ramp", "promote"], actions
    assert [h["share"] for h in store.history("better") if h["action"] == "ramp"] == [0.3, 0.6]
    assert registry.alias_version(home, registry.CHAMPION) == "2"
    tags = registry.setup(home).get_model_version(home.model_name, "2").tags
    assert tags["promotion_decision"] == "promoted" and "online experiment" in tags["promotion_reason"]
    assert '"experiment": "better"' in tags["online_experiment"]
    runs = mlflow.search_runs(experiment_names=[lifecycle.mlflow_experiment_name("better")])
    assert len(runs) == 3 and set(runs["tags.decision"]) == {"ramp", "promote"}
    assert {"metrics.lift", "metrics.p_value", "metrics.srm_p_value", "metrics.control_ctr"} <= set(runs.columns)

    # planted worse (against the new champion v2): rolls back to share 0
    lifecycle.start(home, "worse", "3", share=0.5, store=store)
    _seed(home, "worse", [f"w-{i}" for i in range(1500)], {CONTROL: 0.35, CHALLENGER: 0.2}, rng)
    res = evaluate()
    assert res["decision"]["action"] == "rollback", res["decision"]
    assert store.get("worse").status == "rolled_back" and store.get("worse").share == 0.0
    assert registry.alias_version(home, registry.CHAMPION) == "2"

    # A/A: the same click rate in both: it continues
    lifecycle.start(home, "aa", "3", share=0.5, store=store)
    _seed(home, "aa", [f"a-{i}" for i in range(1500)], {CONTROL: 0.25, CHALLENGER: 0.25}, rng)
    res = evaluate()
    assert res["decision"]["action"] == "continue", res["decision"]
    assert store.get("aa").status == "running"
    st = lifecycle.status(home, "aa", store)
    assert st["decision"]["action"] == "continue"
    assert st["variants"][CONTROL]["users"] + st["variants"][CHALLENGER]["users"] == 1500


def _figures(ctrl: dict, chal: dict, p=0.5, lift=0.01, srm=False) -> dict:
    base = {"users": 500, "impressions": 1000, "fallback_impressions": 0, "error_rate": 0.0, "fallback_rate": 0.0,
            "p99_latency_ms": 20.0}
    return {"variants": {CONTROL: {**base, **ctrl}, CHALLENGER: {**base, **chal}}, "srm": srm,
            "srm_p_value": 1e-6 if srm else 0.5, "p_value": p, "lift": lift}


def test_policy_precedence(home):
    from recops.experiments import policy
    from recops.experiments.records import Experiment

    now = time.time()
    exp = Experiment("p", "1", "2", "ab", 0.1, "salt", "ctr", ["error_rate", "fallback_rate", "p99_latency_ms"],
                     "running", now - 3600, now - 3600)
    decide = lambda f, e=exp, at=now: policy.decide(e, f, home, at)
    assert decide(_figures({}, {"error_rate": 0.05}, p=1e-6, lift=0.3)).action == "rollback"  # guardrail first
    assert decide(_figures({}, {"p99_latency_ms": 90.0})).action == "rollback"
    assert decide(_figures({}, {"p99_latency_ms": 90.0, "impressions": 300})).action == "continue"  # too few lists
    assert decide(_figures({}, {}, p=1e-6, lift=0.3, srm=True)).action == "hold"
    d = decide(_figures({}, {}, p=1e-6, lift=0.3))
    assert d.action == "ramp" and d.share == 0.3  # the next step of experiment_ramp [0.1, 0.3, 0.6, 1.0]
    assert decide(_figures({}, {}, p=1e-6, lift=-0.3)).action == "rollback"
    at_last = Experiment(**{**exp.__dict__, "share": 0.6})
    assert decide(_figures({}, {}, p=1e-6, lift=0.3), at_last).action == "promote"  # next would be full traffic
    assert decide(_figures({}, {}), exp, now + 15 * 86400).action == "stop"  # past experiment_max_days
    assert decide(_figures({}, {})).action == "continue"


def test_cuped_narrows_the_lift_when_past_activity_predicts_clicks(home):
    from recops.experiments.analysis import Observations, summarize
    from recops.experiments.records import Experiment

    rng = np.random.default_rng(5)
    n = 4000
    keen = rng.lognormal(0, 1, n)  # how much each user clicks, before and during the experiment
    units = [f"u{i}" for i in range(n)]
    variant = [CHALLENGER if i % 2 else CONTROL for i in range(n)]
    lists = rng.integers(3, 8, n)
    clicks = rng.binomial(lists, np.minimum(0.9, 0.1 * keen))
    per_unit = pd.DataFrame({"unit": units, "variant": variant, "fallback": False, "impressions": lists,
                             "clicks": clicks, "conversions": 0, "revenue": 0.0})
    obs = Observations(pd.DataFrame({"variant": variant, "error": False, "fallback": False, "latency_ms": 1.0}),
                       per_unit, pd.DataFrame(columns=["unit", "control", "challenger"]),
                       pd.Series(rng.poisson(10 * keen), index=units, dtype=float))
    exp = Experiment("c", "1", "2", "ab", 0.5, "s", "ctr", [], "running", 0.0, 0.0)
    plain, adjusted = summarize(exp, obs, home, cuped=False), summarize(exp, obs, home, cuped=True)
    assert adjusted["look"]["variance"] < 0.7 * plain["look"]["variance"]
    assert abs(adjusted["lift"] - plain["lift"]) < 3 * plain["look"]["variance"] ** 0.5  # the same lift, sharper
