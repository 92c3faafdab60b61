"""Crashes lose nothing: kill -9 of the whole server under mixed /track load loses no acknowledged
event, a restart resumes the online refreshes a crash left pending, and no child process outlives a
killed parent. On SQLite, and on the PostgreSQL on 127.0.0.1 (a database of its own)."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid

import httpx
import psutil
import pytest
import sqlalchemy as sa

from recops import steps
from recops.config import load_settings
from recops.featurestore import FeatureStoreClient
from recops.store import EventStore
from tests.conftest import END, Server, auth, free_port

pytestmark = pytest.mark.e2e
ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.scaleout)])
def home(request, tmp_root):
    """A home with events and features (no model: /track needs none), its event store on the backend."""
    tag = uuid.uuid4().hex[:8]
    url, admin = "", None
    if request.param == "postgresql":
        admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "recops_durable_{tag}"'))
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/recops_durable_{tag}"
    settings = load_settings(home=tmp_root / f"durable-{request.param}-{tag}", event_store_url=url)
    b = steps.ingest(settings, n_events=3_000, end=END, seed=9, bad_share=0.0)
    steps.validate(settings, b["batch_id"])
    steps.build_features(settings)
    yield settings
    if admin is not None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "recops_durable_{tag}" WITH (FORCE)'))
        admin.dispose()


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still running (not dead, not zombies) after waiting up to ``timeout``."""
    deadline = time.time() + timeout
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def test_kill_9_under_load_loses_no_acknowledged_event(home):
    settings = home
    srv = Server(settings, free_port()).wait()
    headers, tag = auth(settings, "track"), uuid.uuid4().hex[:8]
    acked: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(n: int) -> None:
        rng, k = random.Random(n), 0
        with httpx.Client(base_url=srv.url, timeout=10, headers=headers) as c:
            while not stop.is_set():
                size = 1 if rng.random() < 0.5 else rng.randint(2, 40)
                events = [{"event_id": f"{tag}-{n}-{k + j}", "user_id": f"{tag}-u{rng.randint(0, 50)}",
                           "item_id": f"i{rng.randint(1, 200)}", "event_type": rng.choice(["view", "click"])}
                          for j in range(size)]
                k += size
                try:
                    r = c.post("/track", json=events[0]) if size == 1 else c.post("/track/batch", json=events)
                except httpx.HTTPError:
                    return  # the server is gone: what it acknowledged is what counts
                if r.status_code == 200:
                    with lock:
                        acked.extend(e["event_id"] for e in events)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    procs = _tree(srv.proc.pid)
    for p in procs:  # the whole server at once: supervisor, worker, refresher
        p.send_signal(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    srv.proc.wait(timeout=10)
    assert not _gone(procs, 10)
    store = EventStore(settings.event_store_uri)
    try:
        stored = set(store.events(since=time.time() - 3600)["event_id"])
    finally:
        store.dispose()
    assert len(acked) > 100, len(acked)
    lost = set(acked) - stored
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged events lost"


def test_no_child_outlives_a_killed_server(home):
    settings = home
    srv = Server(settings, free_port()).wait()
    r = httpx.post(f"{srv.url}/track", json={"user_id": "orphan-check", "item_id": "i1", "event_type": "view"},
                   headers=auth(settings, "track"), timeout=30)
    assert r.status_code == 200  # the refresher child now runs
    procs = _tree(srv.proc.pid)
    assert len(procs) >= 3, procs  # supervisor, worker, refresher (and its resource tracker)
    procs[0].send_signal(signal.SIGKILL)  # the supervisor alone
    srv.proc.wait(timeout=10)
    alive = _gone(procs[1:], 15)
    assert not alive, [(p.pid, p.name(), p.cmdline()[-3:]) for p in alive]


def test_a_restart_resumes_the_refreshes_a_crash_left_pending(home):
    settings = home
    store, fs = EventStore(settings.event_store_uri), FeatureStoreClient(settings)
    user, ts = f"resume-{uuid.uuid4().hex[:8]}", time.time() - 60
    # what a server that died after storing, before refreshing, leaves behind
    store.insert_events([{"event_id": f"{user}-1", "user_id": user, "item_id": "i1", "event_type": "view",
                          "timestamp": ts, "session_id": None, "value": None, "context": None,
                          "ingested_at": ts, "request_id": None}], pending=([user], []))
    assert fs.online_user(user) is None and store.is_pending(user)
    srv = Server(settings, free_port()).wait()
    try:
        deadline = time.time() + 30
        while (fs.online_user(user) or {}).get("u_last_event_ts") is None:
            assert time.time() < deadline, "the pending refresh was not resumed"
            time.sleep(0.3)
        deadline = time.time() + 10
        while store.is_pending(user):
            assert time.time() < deadline, "the landed refresh left its mark"
            time.sleep(0.3)
    finally:
        srv.stop()
        store.dispose()
