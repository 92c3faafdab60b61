"""What breaks, and what is lost, when things fail: recops driven the way a user drives it (`recops
token create`, `recops serve`, the HTTP API), with default settings, while processes are killed.

1. kill -9 under load, on SQLite and on PostgreSQL (127.0.0.1): 4 clients send mixed /track and
   /track/batch with unique event ids; after a few seconds the whole server (supervisor, worker,
   refresher) is killed at once. Acknowledged events, and how many of them the store lacks.
2. schemathesis (every check, a fresh seed each run) against the real server: findings, and the 5xx
   answers in the server's access log.
3. The model registry goes away: an MLflow tracking server (a process of this run) is killed while
   /recommend is under load, a second recops server starts during the outage, then MLflow comes back.
   Answers, their non-2xx and degraded shares during the outage, the second server's start time and
   whether it served the champion (from its local copy), and the time from MLflow's return until the
   answers are no longer degraded.
4. The online store goes away: a Redis server of this run (the home's online store) is killed with -9
   under mixed /recommend and /track load, then started again, empty. Answers, non-2xx, degraded
   share, events acknowledged and lost, and the time until answers are no longer degraded.
5. The event store goes away: a PostgreSQL cluster of this run (the home's event store) is stopped
   hard under the same load, then started again. /recommend answers (non-2xx, degraded share), /track's
   503s (each with Retry-After), acknowledged events lost, and the time until /track stores again.

Ends with one JSON line. Usage: python bench/chaos.py [--events 20000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import httpx
import psutil
import sqlalchemy as sa
from serving import free_port, wait_ready

from recops import steps
from recops.config import load_settings
from recops.store import EventStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.faults import PgCluster, RedisServer  # the same fault injection as the tests

BIN = Path(sys.executable).parent
PHASES = ("kill", "registry", "redis", "postgresql")
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
END = "2026-11-01"


def env_of(s, port: int) -> dict:
    return {**os.environ, **s.to_env(), "BENTOML_HOME": str(Path(s.home) / "bentoml" / f"port-{port}")}


def token(s, scopes: str) -> str:
    """``recops token create``, as a user makes one: the token is the last line."""
    cmd = [str(BIN / "recops"), "token", "create", "--scope", scopes, "--name", f"chaos-{time.time_ns()}"]
    out = subprocess.run(cmd, env={**os.environ, **s.to_env()}, capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def serve(s, port: int, log: Path) -> tuple[subprocess.Popen, float]:
    """``recops serve --port``; returns the process and its start-up time (until /readyz answers)."""
    with open(log, "w") as f:
        p = subprocess.Popen([str(BIN / "recops"), "serve", "--port", str(port)], env=env_of(s, port), stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return p, wait_ready(p, port, timeout=180)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from None


def kill_tree(pid: int) -> None:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        kill_tree(p.pid)


def kill_under_load(s, seconds: float) -> dict:
    """4 clients of mixed /track and /track/batch; kill -9 of the whole server; acknowledged vs stored."""
    port = free_port()
    proc, _ = serve(s, port, Path(s.home) / "kill.log")
    headers, tag = {"Authorization": f"Bearer {token(s, 'track')}"}, uuid.uuid4().hex[:8]
    acked: list[str] = []
    lock, halt = threading.Lock(), threading.Event()

    def client(n: int) -> None:
        rng, k = random.Random(n), 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as c:
            while not halt.is_set():
                size = 1 if rng.random() < 0.5 else rng.randint(2, 40)
                evs = [{"event_id": f"{tag}-{n}-{k + j}", "user_id": f"{tag}-u{rng.randint(0, 50)}",
                        "item_id": f"i{rng.randint(1, 200)}", "event_type": rng.choice(["view", "click"])}
                       for j in range(size)]
                k += size
                try:
                    r = c.post("/track", json=evs[0]) if size == 1 else c.post("/track/batch", json=evs)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked.extend(e["event_id"] for e in evs)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    kill_tree(proc.pid)
    halt.set()
    for t in threads:
        t.join(timeout=30)
    proc.wait(timeout=10)
    store = EventStore(s.event_store_uri)
    try:
        with store.engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT event_id FROM events WHERE event_id LIKE :p"),
                                      {"p": f"{tag}-%"}).scalars())
    finally:
        store.dispose()
    return {"acknowledged": len(acked), "lost": len(set(acked) - stored),
            "stored_unacknowledged": len(stored - set(acked))}


def contract(s) -> dict:
    port = free_port()
    log = Path(s.home) / "contract.log"
    proc, _ = serve(s, port, log)
    try:
        r = subprocess.run([str(BIN / "schemathesis"), "--config-file", str(Path(__file__).parents[1] / "tests" /
                            "schemathesis.toml"), "run", f"http://127.0.0.1:{port}/docs.json", "--checks", "all",
                            "-H", f"Authorization: Bearer {token(s, 'admin')}", "-w", "1", "--no-color"],
                           capture_output=True, text=True, timeout=900, check=False, cwd=s.home)
    finally:
        stop(proc)
    out = r.stdout + r.stderr
    cases = re.search(r"(\d+) generated", out)
    found = re.search(r"(\d+) unique failures?", out)
    seed = re.search(r"Seed: (\d+)", out)
    return {"cases": int(cases.group(1)) if cases else 0, "findings": int(found.group(1)) if found else 0,
            "exit_code": r.returncode, "server_5xx": len(re.findall(r"status=5\d\d", log.read_text())),
            "seed": seed.group(1) if seed else None}


def mlflow_server(home: Path, port: int) -> subprocess.Popen:
    p = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{home / 'mlflow-server.db'}",
                          "--artifacts-destination", str(home / "mlartifacts"), "--serve-artifacts"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            time.sleep(0.5)
    raise TimeoutError("mlflow server did not start")


def load(url: str, headers: dict, users: list[str], seconds: float, track: list[str] | None = None) -> dict:
    """/recommend from 2 clients for ``seconds``: answers, non-2xx, degraded share. With ``track`` (item
    ids), each client also sends a /track (a view, a unique event id) after each /recommend: counted by
    status, the acknowledged event ids kept under ``"acked"``."""
    counts = {"answers": 0, "non_2xx": 0, "degraded": 0, "fallback": 0}
    if track:
        counts.update(tracked=0, track_2xx=0, track_503_retry_after=0, track_other=0, acked=[])
    lock, tag = threading.Lock(), uuid.uuid4().hex[:8]

    def client(n: int) -> None:
        rng = random.Random(n)
        end = time.time() + seconds
        with httpx.Client(base_url=url, timeout=30, headers=headers) as c:
            k = 0
            while time.time() < end:
                user = rng.choice(users)
                r = c.post("/recommend", json={"user_id": user, "k": 10})
                with lock:
                    counts["answers"] += 1
                    if r.status_code // 100 != 2:
                        counts["non_2xx"] += 1
                    else:
                        body = r.json()
                        counts["degraded"] += bool(body["degraded"])
                        counts["fallback"] += bool(body["fallback"])
                if not track:
                    continue
                k += 1
                eid = f"chaos-{tag}-{n}-{k}"
                t = c.post("/track", json={"event_id": eid, "user_id": user, "item_id": rng.choice(track),
                                           "event_type": "view"})
                with lock:
                    counts["tracked"] += 1
                    if t.status_code // 100 == 2:
                        counts["track_2xx"] += 1
                        counts["acked"].append(eid)
                    elif t.status_code == 503 and int(t.headers.get("retry-after", "0")) >= 1:
                        counts["track_503_retry_after"] += 1
                    else:
                        counts["track_other"] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts["degraded_share"] = round(counts["degraded"] / max(counts["answers"], 1), 3)
    return counts


def trained_home(home: Path, n_events: int, seed: int, **settings):
    """Settings of a home with a promoted champion trained on synthetic events, as a user makes one."""
    s = load_settings(home=home, **settings)
    b = steps.ingest(s, n_events=n_events, end=END, seed=seed, bad_share=0.0)
    steps.validate(s, b["batch_id"])
    steps.build_features(s)
    version = steps.train(s)["version"]
    steps.promote(s)
    return s, version


def lost(s, phases: list[dict]) -> int:
    """How many events the phases' /track acknowledged are not in the event store (their id lists are
    replaced by their counts)."""
    acked = set()
    for ph in phases:
        acked |= set(ph.pop("acked", []))
    store = EventStore(s.event_store_uri)
    try:
        with store.engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT event_id FROM events WHERE event_id LIKE 'chaos-%'")).scalars())
    finally:
        store.dispose()
    return len(acked - stored)


def store_outage(root: Path, n_events: int, seconds: float, which: str) -> dict:
    """The online store (``redis``: a Redis server of this run) or the event store (``postgresql``: a
    PostgreSQL cluster of this run) killed under mixed /recommend and /track load, then started again."""
    service = RedisServer() if which == "redis" else PgCluster()
    service.start()
    proc = None
    try:
        conf = {"online_store": "redis", "redis_url": service.url} if which == "redis" else {
            "event_store_url": service.url}
        s, version = trained_home(root / f"outage-{which}", n_events, 6, **conf)
        store = EventStore(s.event_store_uri)
        users = store.events()["user_id"].dropna().value_counts().index[:200].tolist()
        items = store.items()["item_id"].head(100).tolist()
        store.dispose()
        headers = {"Authorization": f"Bearer {token(s, 'read,track')}"}
        port = free_port()
        proc, _ = serve(s, port, root / f"serve-{which}.log")
        url = f"http://127.0.0.1:{port}"
        out: dict = {"champion": version, "before": load(url, headers, users, seconds, items)}
        service.kill()
        out["outage"] = load(url, headers, users, seconds, items)
        service.start()
        t0 = time.time()
        while time.time() - t0 < 120:
            if which == "redis":
                back = not httpx.post(f"{url}/recommend", json={"user_id": users[0], "k": 10}, headers=headers,
                                      timeout=30).json()["degraded"]
            else:
                back = httpx.post(f"{url}/track", json={"user_id": users[0], "item_id": items[0], "event_type": "view"},
                                  headers=headers, timeout=30).status_code == 200
            if back:
                break
            time.sleep(0.2)
        out["recovery_seconds"] = round(time.time() - t0, 1)
        out["after"] = load(url, headers, users, seconds, items)
        out["lost"] = lost(s, [out["before"], out["outage"], out["after"]])
    finally:
        if proc is not None:
            stop(proc)
        service.kill() if which == "redis" else service.remove()
    return out


def registry_outage(root: Path, n_events: int, seconds: float) -> dict:
    """The registry (an MLflow server of this run) killed under /recommend load and brought back; then
    schemathesis on the same home."""
    home = root / "registry"
    home.mkdir(parents=True)
    mport = free_port()
    ml = mlflow_server(home, mport)
    s, version = trained_home(home, n_events, 4, mlflow_tracking_uri=f"http://127.0.0.1:{mport}",
                              mlflow_artifact_root="mlflow-artifacts:")
    store = EventStore(s.event_store_uri)
    users = store.events()["user_id"].dropna().value_counts().index[:200].tolist()
    store.dispose()
    headers = {"Authorization": f"Bearer {token(s, 'read')}"}
    port = free_port()
    proc, _ = serve(s, port, home / "serve.log")
    out: dict = {"champion": version, "reload_interval_seconds": s.reload_interval_seconds}
    second = None
    try:
        url = f"http://127.0.0.1:{port}"
        out["before"] = load(url, headers, users, seconds)
        kill_tree(ml.pid)
        ml.wait(timeout=10)
        out["outage"] = load(url, headers, users, max(seconds, s.reload_interval_seconds + 5))
        sport = free_port()
        second, started = serve(s, sport, home / "serve-second.log")
        out["second_server_start_seconds"] = round(started, 1)
        r = httpx.post(f"http://127.0.0.1:{sport}/recommend", json={"user_id": users[0], "k": 10}, headers=headers,
                       timeout=60).json()
        out["second_server"] = {"model_version": r["model_version"], "fallback": r["fallback"],
                                "degraded": r["degraded"], "reason": r["degraded_reason"]}
        ml = mlflow_server(home, mport)
        t0 = time.time()
        while httpx.post(f"{url}/recommend", json={"user_id": users[0], "k": 10}, headers=headers,
                         timeout=30).json()["degraded"]:
            if time.time() - t0 > 120:
                break
            time.sleep(0.2)
        out["recovery_seconds"] = round(time.time() - t0, 1)
        out["after"] = load(url, headers, users, seconds)
        out["schemathesis"] = contract(s)  # on the same home, with the registry back
    finally:
        stop(proc)
        if second is not None:
            stop(second)
        kill_tree(ml.pid)
    return out


def kill_home(root: Path, backend: str, n_events: int):
    """A home with events and features (no model: /track needs none), its event store on ``backend``."""
    url, db = "", None
    if backend == "postgresql":
        db = f"recops_chaos_{uuid.uuid4().hex[:8]}"
        with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{db}"'))
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
    s = load_settings(home=root / f"kill-{backend}", event_store_url=url)
    b = steps.ingest(s, n_events=n_events, end=END, seed=9, bad_share=0.0)
    steps.validate(s, b["batch_id"])
    steps.build_features(s)
    return s, db


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", nargs="*", choices=PHASES, default=list(PHASES), help="run these phases only")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="recops-bench-chaos-"))
    out: dict = {"bench": "chaos", "events": args.events, "kill_9": {}}
    t0 = time.time()
    try:
        for backend in ("sqlite", "postgresql") if "kill" in args.only else ():
            s, db = kill_home(root, backend, args.events)
            try:
                out["kill_9"][backend] = kill_under_load(s, args.seconds)
            finally:
                if db:
                    with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as c:
                        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            k = out["kill_9"][backend]
            print(f"kill -9 under load ({backend}): {k['acknowledged']:,} events acknowledged, {k['lost']} lost "
                  f"(target 0); {k['stored_unacknowledged']} stored without an answer", flush=True)
        if "registry" in args.only:
            registry_phase(root, args, out)
        for which, name in (("redis", "online_store_outage"), ("postgresql", "event_store_outage")):
            if which not in args.only:
                continue
            out[name] = o = store_outage(root, args.events, args.seconds, which)
            print(f"{name} ({which} killed under /recommend + /track load): before {o['before']}\n  during "
                  f"{o['outage']}\n  back: recovered after {o['recovery_seconds']} s; after {o['after']}\n  "
                  f"acknowledged events lost: {o['lost']} (target 0)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))


def registry_phase(root: Path, args, out: dict) -> None:
    """The registry outage and schemathesis after it, printed and added to ``out``."""
    out["registry_outage"] = r = registry_outage(root, args.events, args.seconds)
    print(f"registry outage: before {r['before']}\n  during {r['outage']}\n  a server started during it: "
          f"{r['second_server_start_seconds']} s, {r['second_server']}\n  MLflow back: answers not degraded "
          f"after {r['recovery_seconds']} s (reload interval {r['reload_interval_seconds']} s); after {r['after']}",
          flush=True)
    out["schemathesis"] = c = r.pop("schemathesis")
    print(f"schemathesis (all checks, seed {c['seed']}): {c['cases']:,} cases, {c['findings']} findings "
          f"(target 0), {c['server_5xx']} 5xx in the server's log (target 0)", flush=True)


if __name__ == "__main__":
    main()
