"""Promotion decisions on a real MLflow registry, the scheduled deployment, and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recops import registry, steps
from recops.config import load_settings
from recops.models.popularity import Popularity
from recops.models.recommender import ItemTable, RecopsModel


def _tiny_model():
    ev = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event_type": ["view"], "value": [None],
                       "timestamp": [pd.Timestamp("2026-10-01", tz="UTC")]})
    items = pd.DataFrame({"item_id": ["i"], "category": ["c"], "price": [1.0]})
    return RecopsModel({"popularity": Popularity().fit(ev)}, None,
                       ItemTable.build(pd.DataFrame({"item_id": ["i"]}), items))


@pytest.fixture
def reg(tmp_path):
    s = load_settings(home=tmp_path / "reg")
    s.ensure_dirs()
    return s


def _evaluated(s, champion: str, delta: float) -> str:
    v = registry.log_model(s, _tiny_model(), {}, {})["version"]
    registry.setup(s).set_model_version_tag(s.model_name, v, "eval_vs_champion",
                                            json.dumps({"champion": champion, "ndcg_delta": delta,
                                                        "ci95": [delta - 0.01, delta + 0.01]}))
    return v


def test_promotion_rules(reg):
    s = reg
    with pytest.raises(steps.StepFailed, match="no @challenger"):
        steps.promote(s)
    v1 = registry.log_model(s, _tiny_model(), {}, {})["version"]
    first = steps.promote(s)
    assert first["promoted"] and "first model" in first["reason"] and registry.alias_version(s, "champion") == v1

    worse = _evaluated(s, v1, -0.05)
    res = steps.promote(s)
    assert not res["promoted"] and "kept champion" in res["reason"] and registry.alias_version(s, "champion") == v1
    tags = registry.setup(s).get_model_version(s.model_name, worse).tags
    assert tags["promotion_decision"] == "rejected" and "-0.05" in tags["promotion_reason"]

    forced = steps.promote(s, force=True)
    assert forced["promoted"] and "forced" in forced["reason"] and registry.alias_version(s, "champion") == worse

    better = _evaluated(s, worse, 0.0)
    assert steps.promote(s)["promoted"] and registry.alias_version(s, "champion") == better

    stale = _evaluated(s, v1, 0.2)  # evaluated against a champion that is no longer champion
    res = steps.promote(s)
    assert not res["promoted"] and "evaluate again" in res["reason"] and stale != registry.alias_version(s, "champion")


def test_unevaluated_challenger_is_not_promoted(reg):
    s = reg
    registry.log_model(s, _tiny_model(), {}, {})
    steps.promote(s)
    registry.log_model(s, _tiny_model(), {}, {})
    res = steps.promote(s)
    assert not res["promoted"] and "run evaluate first" in res["reason"]


def test_validation_threshold_fails_the_step_and_loads_nothing(reg):
    s = load_settings(home=reg.home, max_bad_share=0.01)
    b = steps.ingest(s, n_events=2_000, end="2026-11-01", bad_share=0.10)
    with pytest.raises(steps.StepFailed, match="failed validation"):
        steps.validate(s, b["batch_id"])
    from recops.store import EventStore

    store = EventStore(s.event_store_uri)
    assert store.count_events() == 0 and len(store.quarantined()) > 0
    store.dispose()


def test_deployments_have_their_crons_and_triggers():
    from recops.flows.deployments import deployments

    deps = {d.name: d for d in deployments({"nightly-retrain": "15 2 * * *"})}
    assert set(deps) == {"nightly-retrain", "weekly-retrain", "monitor", "ab-evaluate", "triggered-retrain"}
    crons = {n: d.schedules[0].schedule.cron for n, d in deps.items() if d.schedules}
    assert crons == {"nightly-retrain": "15 2 * * *", "weekly-retrain": "0 4 * * 0", "monitor": "0 * * * *",
                     "ab-evaluate": "0 * * * *"}
    assert deps["nightly-retrain"].parameters == {"trigger": "schedule"}
    triggered = deps["triggered-retrain"]
    assert {e for t in triggered.triggers for e in t.expect} == {
        "recops.drift.detected", "recops.volume.reached", "recops.performance.dropped"}
    assert {t.parameters["trigger"] for t in triggered.triggers} == {"drift", "volume", "performance"}
    assert triggered.concurrency_limit == 1
    assert "monitor" not in {d.name for d in deployments({"monitor": ""})}  # an empty cron leaves it out


def test_cli_help_and_status(tmp_path):
    recops = Path(sys.executable).with_name("recops")
    out = subprocess.run([str(recops), "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("ingest", "validate", "features", "train", "evaluate", "promote", "pipeline", "serve", "schedule",
                "demo"):
        assert cmd in out
    st = subprocess.run([str(recops), "--home", str(tmp_path / "h"), "status"], capture_output=True, text=True,
                        check=True)
    assert json.loads(st.stdout)["events"] == 0
    bad = subprocess.run([str(recops), "--profile", "cloud", "status"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "profile" in (bad.stderr + bad.stdout)


def test_holdout_fingerprint_follows_what_the_evaluation_depends_on(synthetic, tmp_path):
    from recops.schema import with_actors
    from recops.training import holdout_fingerprint

    ev, items = with_actors(synthetic.events), synthetic.items
    s = load_settings(home=tmp_path / "h")
    base = holdout_fingerprint(ev, items, synthetic.users, s)
    same = holdout_fingerprint(ev.copy(), items.copy(), synthetic.users.copy(), load_settings(home=tmp_path / "h"))
    assert same == base
    out_of_stock = items.assign(in_stock=items["in_stock"].where(items.index != 0, ~items["in_stock"]))
    changed = [holdout_fingerprint(ev.iloc[:-1], items, synthetic.users, s),  # one event fewer
               holdout_fingerprint(ev, out_of_stock, synthetic.users, s),  # the business rules exclude another item
               holdout_fingerprint(ev, items, None, s),  # no users file
               holdout_fingerprint(ev, items, synthetic.users, load_settings(home=tmp_path / "h", k=5))]
    assert base not in changed and len(set(changed)) == len(changed)
