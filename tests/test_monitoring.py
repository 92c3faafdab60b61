"""The monitor: drift against the champion's training reference, and retraining that triggers itself
through a real Prefect server's automations (``recops schedule`` in a subprocess, as an operator runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recops.config import Settings, load_settings
from recops.generate import generate
from recops.monitoring import Reference, build_reference, drift
from recops.schema import normalize_events, normalize_items
from tests.conftest import Server, auth, free_port

END = pd.Timestamp("2026-11-01", tz="UTC")


def _epoch(ev: pd.DataFrame) -> np.ndarray:
    return (ev["timestamp"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def _looks(shift: float, hours: list[int], settings: Settings) -> list[dict]:
    cut = END - pd.Timedelta(days=6)
    d = generate(60_000, end=END, days=30, seed=5, shift_at=cut, shift=shift, popularity_drift=0.0, new_share=0.0)
    ev, items = normalize_events(d.events), normalize_items(d.items)
    t, c = _epoch(ev), cut.value / 1e9
    ref = build_reference(ev[t < c], items, settings)
    return [drift(ref, ev[(t >= c + h * 3600 - 86400) & (t < c + h * 3600)], items, settings) for h in hours]


def test_drift_flags_a_planted_shift_and_stays_quiet_on_stationary_data():
    s = Settings()
    hours = [30, 48, 72, 96]
    moved = _looks(2.0, hours, s)
    assert all(r["enough"] for r in moved) and moved[-1]["detected"], moved[-1]
    assert "drift_category" in moved[-1]["drifted"] and moved[-1]["drift_category"] > moved[-1]["drift_category_limit"]
    still = _looks(0.0, hours, s)
    assert not any(r["detected"] for r in still), [r["drifted"] for r in still]
    # the same windows score lower without the shift
    assert still[-1]["drift_category"] < moved[-1]["drift_category"]


def test_reference_round_trips(tmp_path):
    d = generate(5_000, end=END, days=20, seed=2)
    ref = build_reference(normalize_events(d.events), normalize_items(d.items), Settings())
    back = Reference.load(ref.save(tmp_path / "ref"))
    assert back.cut == ref.cut and back.known_users == ref.known_users and back.known_items == ref.known_items
    pd.testing.assert_frame_equal(back.frame, ref.frame)
    assert back.popularity.to_dict() == ref.popularity.to_dict()


# -- end to end: a real Prefect server, deployments served by `recops schedule`, automations -------
def _cli(env: dict, *args: str, timeout: float = 600) -> dict:
    recops = Path(sys.executable).with_name("recops")
    r = subprocess.run([str(recops), *args], check=False, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    out = "\n" + r.stdout  # the command's JSON is the last thing it prints (libraries may print before it)
    return json.loads(out[out.rfind("\n{"):]) if "\n{" in out else {}


def _ingest(env: dict, events: pd.DataFrame, items: pd.DataFrame, folder: Path, name: str) -> None:
    events.to_csv(folder / f"{name}.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    batch = _cli(env, "ingest", "--source", "file", "--path", str(folder / f"{name}.csv"), "--items",
                 str(folder / "items.csv"))
    _cli(env, "validate", batch["batch_id"])


def _runs(api: str, deployment: str) -> list[dict]:
    import httpx

    dep = httpx.get(f"{api}/deployments/name/retrain/{deployment}", timeout=5).json()
    return httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}}, timeout=5).json()


def _wait_for_run(api: str, trigger: str, timeout: float = 420) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        done = [r for r in _runs(api, "triggered-retrain") if r["parameters"].get("trigger") == trigger]
        if done and done[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED"):
            return done[0]
        time.sleep(2)
    raise TimeoutError(f"no {trigger} retrain finished in {timeout:.0f} s: {_runs(api, 'triggered-retrain')}")


@pytest.mark.e2e
def test_monitor_alarms_start_retrains_through_prefect_automations(tmp_path):
    import httpx
    import mlflow

    from recops import registry

    home = tmp_path / "home"
    settings = load_settings(home=home)
    port = free_port()
    env = {**os.environ, **settings.to_env(), "RECOPS_RETRAIN_COOLDOWN_HOURS": "0", "RECOPS_NUM_THREADS": "1"}
    for k in ("PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(k, None)
    # stationary for ten days after the champion's cut, then category tastes move
    cut, shift_at = END - pd.Timedelta(days=14), END - pd.Timedelta(days=4)
    d = generate(40_000, end=END, days=40, seed=9, shift_at=shift_at, shift=2.0, popularity_drift=0.0, new_share=0.0)
    ev = d.events.assign(timestamp=d.events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    t = pd.to_datetime(ev["timestamp"])
    _ingest(env, ev[t < cut], d.items, tmp_path, "before")
    first = _cli(env, "retrain", "--reason", "the first champion", "--force-promote")
    assert first["train"]["trigger"] == "manual" and first["promote"]["promoted"]

    sched = subprocess.Popen([str(Path(sys.executable).with_name("recops")), "schedule", "--port", str(port)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(240):  # the server's first start migrates its database
            try:
                if len(httpx.post(f"{api}/deployments/filter", json={}, timeout=2).json()) == 5:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert sched.poll() is None, sched.stdout.read()
            time.sleep(0.5)
        deps = {x["name"]: x for x in httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()}
        assert deps["nightly-retrain"]["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        assert deps["monitor"]["schedules"][0]["schedule"]["cron"] == "0 * * * *"
        automations = httpx.post(f"{api}/automations/filter", json={}, timeout=5).json()
        assert {a["trigger"]["expect"][0] for a in automations} == {
            "recops.drift.detected", "recops.volume.reached", "recops.performance.dropped"}

        # stationary days: three looks, no alarm, no retrain
        _ingest(env, ev[(t >= cut) & (t < shift_at)], d.items, tmp_path, "stationary")
        for day in (7, 8, 9):
            look = _cli(env, "monitor", "--at", (cut + pd.Timedelta(days=day)).isoformat())
            assert look["alarms"] == [] and look["drift"]["enough"], look["drift"]
        assert _runs(api, "triggered-retrain") == []

        # volume: N events tracked over HTTP after the champion's cut start one
        n, at = 25, (cut + pd.Timedelta(days=9, hours=1)).isoformat()
        base = _cli(env, "monitor", "--at", at)["new_events"]
        env_v = {**env, "RECOPS_RETRAIN_MIN_NEW_EVENTS": str(base + n)}
        assert _cli(env_v, "monitor", "--at", at)["alarms"] == []
        srv = Server(load_settings(home=home), free_port(), workers=1).wait()
        try:
            stamp = (cut + pd.Timedelta(days=9, minutes=30)).isoformat()
            r = httpx.post(f"{srv.url}/track/batch", timeout=30, headers=auth(srv.settings), json=[
                {"user_id": f"u{i}", "item_id": "i1", "event_type": "view", "timestamp": stamp} for i in range(n)])
            assert r.status_code == 200 and r.json()["stored"] == n
        finally:
            srv.stop()
        look = _cli(env_v, "monitor", "--at", at)
        assert look["new_events"] == base + n and look["alarms"] == ["volume"], look
        run = _wait_for_run(api, "volume")
        assert run["state_type"] == "COMPLETED" and "trigger:volume" in run["tags"], run
        assert run["parameters"]["evidence"]["new_events"] == base + n

        # tastes moved: at most as many looks as on the stationary days, until the drift alarm starts a retrain
        _ingest(env, ev[t >= shift_at], d.items, tmp_path, "shifted")
        looks = []
        for day in (2, 3, 4):
            look = _cli(env, "monitor", "--at", (shift_at + pd.Timedelta(days=day)).isoformat())
            looks.append({"day": day, "version": look["version"], "alarms": look["alarms"], **{
                k: v for k, v in look["drift"].items() if k == "drifted" or k.startswith("drift_")}})
            if look["alarms"]:
                break
        # (on a failure: the champion each look watched, so whether the volume retrain was promoted, and every
        # score and limit)
        assert look["alarms"] == ["drift"] and look["emitted"] == ["recops.drift.detected"], (looks, run["parameters"])
        assert "drift_category" in look["drift"]["drifted"]
        run = _wait_for_run(api, "drift")
        assert run["state_type"] == "COMPLETED" and "trigger:drift" in run["tags"], run
        assert run["parameters"]["evidence"]["drifted"] == look["drift"]["drifted"]

        # recorded on the registered versions and their training runs
        client = registry.setup(settings)
        versions = {str(v.version): v for v in client.search_model_versions(f"name='{settings.model_name}'")}
        # (a scheduled run may add its own when the test spans 03:00: the deployments run for real)
        assert {"drift", "manual", "volume"} <= {v.tags.get("trigger") for v in versions.values()}
        drifted = next(v for v in versions.values() if v.tags.get("trigger") == "drift")
        assert json.loads(drifted.tags["trigger_evidence"])["drifted"] == look["drift"]["drifted"]
        mlrun = mlflow.get_run(drifted.run_id)
        assert mlrun.data.tags["trigger"] == "drift" and mlrun.data.params["trigger"] == "drift"
        assert mlrun.info.run_name.startswith(f"v{drifted.version} · ") and mlrun.data.tags["mlflow.note.content"]
        assert mlrun.inputs.dataset_inputs and mlrun.info.end_time - mlrun.info.start_time > 5_000  # the training's

        # the monitoring runs: one per day of looks, linked to the version they watched
        mon = [r for r in mlflow.search_runs(experiment_names=[settings.mlflow_experiment + "-monitoring"],
                                             output_format="list")
               if r.data.tags["day"] <= f"{END:%Y-%m-%d}"]  # not the hourly deployment's own looks at today
        days = {(r.data.tags["day"], r.data.tags["model_version"]) for r in mon}
        assert len(days) == len(mon) and all(r.data.tags["model_version"] in versions for r in mon)
        assert all("drift_category" in r.data.metrics for r in mon)
        status = _cli(env, "status")
        assert status["monitor"]["alarms"] == ["drift"]
        assert [r["trigger"] for r in status["deployments"]["triggered-retrain"]["last_runs"]] == ["drift", "volume"]
    finally:
        os.killpg(sched.pid, 2)  # Ctrl-C: the deployments stop, then the server
        try:
            out, _ = sched.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(sched.pid, 9)
            raise
    assert "stopped" in out
    left = subprocess.run(["pgrep", "-f", f"port {port}"], check=False, capture_output=True, text=True).stdout.split()
    assert not left, f"processes left behind: {left}"


def _served(store, log, version: str, users: int, since: float, days: float, ctr: float, rng) -> None:
    """Lists served by ``version`` to ``users`` users over ``days`` days; each shown item clicked with ``ctr``."""
    clicks = []
    for u in range(users):
        for n in range(6):
            at = since + rng.uniform(0, days * 86400)
            rid = f"r-{version}-{u}-{n}-{since}"
            log.add({"request_id": rid, "served_at": at, "unit": f"u{u}", "user_id": f"u{u}", "session_id": None,
                     "endpoint": "/recommend", "experiment": None, "variant": None, "model_version": version,
                     "strategy": "personalized", "fallback": False, "fallback_reason": None, "error": False,
                     "latency_ms": 3.0}, [(f"i{k}", None) for k in range(5)])
            clicks += [{"event_id": f"c-{rid}-{k}", "user_id": f"u{u}", "item_id": f"i{k}", "event_type": "click",
                        "timestamp": at + 5, "session_id": None, "value": None, "context": None, "ingested_at": at,
                        "request_id": rid} for k in range(5) if rng.random() < ctr]
    log.flush()
    store.insert_events(clicks)


@pytest.mark.parametrize("later_ctr, dropped", [(0.10, True), (0.20, False)])
def test_performance_drop_is_flagged_only_when_significant(tmp_path, later_ctr, dropped):
    from recops.impressions import ImpressionLog
    from recops.monitoring import performance
    from recops.store import EventStore

    s = load_settings(home=tmp_path)
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    log = ImpressionLog(store.engine)
    rng = np.random.default_rng(1)
    end = END.value / 1e9
    _served(store, log, "3", 200, end - 8 * 86400, 7, 0.20, rng)  # the baseline week
    _served(store, log, "3", 200, end - 86400, 1, later_ctr, rng)  # the window
    _served(store, log, "2", 200, end - 86400, 1, 0.01, rng)  # another version's lists do not count
    res = performance(store.engine, "3", end, s)
    log.close()
    store.dispose()
    assert res["detected"] is dropped and ("ctr" in res["dropped"]) is dropped, res
    # CTR: clicked shown items per list (five items shown)
    assert res["ctr_baseline"] == pytest.approx(5 * 0.20, abs=0.1) and res["ctr_now"] == pytest.approx(5 * later_ctr,
                                                                                                        abs=0.1)
