"""API tokens: scopes, hashed storage, the CLI, and the real server's 401 / 403 over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from recops.auth import (
    ADMIN,
    READ,
    TRACK,
    Buckets,
    TokenError,
    TokenStore,
    Verifier,
    api_tokens,
    parse_scopes,
    required_scope,
)
from tests.conftest import Server, auth, free_port


@pytest.fixture
def tokens(tmp_path) -> TokenStore:
    return TokenStore(sa.create_engine(f"sqlite:///{tmp_path / 'tokens.db'}"))


def test_routes_need_their_scope():
    assert required_scope("/recommend") == READ and required_scope("/users/u1/profile") == READ
    assert required_scope("/track") == TRACK and required_scope("/track/batch") == TRACK
    assert required_scope("/experiments") == ADMIN and required_scope("/experiments/x") == ADMIN
    assert required_scope("/something-new") == ADMIN  # what no rule names needs the most
    for open_path in ("/health", "/readyz", "/livez", "/docs.json", "/", "/static_content/swagger-ui.css"):
        assert required_scope(open_path) is None, open_path


def test_scopes_are_checked():
    assert parse_scopes("read, track") == {READ, TRACK}
    with pytest.raises(TokenError, match="unknown scope writer"):
        parse_scopes("read,writer")
    with pytest.raises(TokenError, match="no scope"):
        parse_scopes(" , ")


def test_the_store_keeps_only_a_digest_and_revokes(tokens):
    key = tokens.create("shop", frozenset({READ}))
    assert key.startswith("rk_") and len(key) > 40
    with tokens.engine.connect() as conn:
        row = conn.execute(sa.select(api_tokens)).one()
    assert key not in str(tuple(row)) and len(row.digest) == 64
    verifier = Verifier(tokens, refresh_seconds=0)
    assert verifier.check(key) == ("shop", frozenset({READ}), None)
    assert verifier.check(key + "x") is None and verifier.check("") is None
    with pytest.raises(TokenError, match="exists"):
        tokens.create("shop", frozenset({READ}))
    with pytest.raises(TokenError, match="bad token name"):
        tokens.create("a b", frozenset({READ}))
    tokens.revoke("shop")
    assert verifier.check(key) is None
    with pytest.raises(TokenError, match="no active token"):
        tokens.revoke("shop")
    assert [t["name"] for t in tokens.list()] == ["shop"] and tokens.list()[0]["revoked_at"] is not None


def test_a_verifier_sees_a_new_token_at_once_and_a_revoked_one_after_its_refresh(tokens):
    verifier = Verifier(tokens, refresh_seconds=0.5)
    assert verifier.check("rk_nothing") is None  # reads the (empty) table now
    key = tokens.create("late", frozenset({TRACK}))
    assert verifier.check(key) is not None  # not held: looked up at once
    tokens.revoke("late")
    assert verifier.check(key) is not None  # known, and not re-read yet
    time.sleep(0.55)
    assert verifier.check(key) is None


def test_a_bucket_allows_its_burst_then_its_rate():
    b = Buckets()
    assert [b.take("a", rate=10, burst=3) for _ in range(3)] == [0, 0, 0]
    wait = b.take("a", rate=10, burst=3)
    assert 0 < wait <= 0.1
    assert b.take("b", rate=10, burst=3) == 0  # callers have their own buckets
    time.sleep(wait + 0.01)
    assert b.take("a", rate=10, burst=3) == 0
    assert all(b.take("c", rate=0, burst=1) == 0 for _ in range(100))  # 0: no limit


def _recops(home: Path, *args) -> subprocess.CompletedProcess:
    recops = Path(sys.executable).with_name("recops")
    return subprocess.run([str(recops), "--home", str(home), *args], capture_output=True, text=True, timeout=120,
                          check=False, env={k: v for k, v in os.environ.items() if not k.startswith("RECOPS_")})


def test_the_cli_prints_the_token_alone_on_the_last_line(tmp_path):
    r = _recops(tmp_path, "token", "create", "--scope", "read,track", "--name", "shop")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("rk_") and " " not in key
    listed = _recops(tmp_path, "token", "list").stdout
    assert "shop\tread,track\tdefault rate" in listed and "active" in listed and key not in listed
    bad = _recops(tmp_path, "token", "create", "--scope", "root", "--name", "x")
    assert bad.returncode == 2 and "unknown scope root" in bad.stderr
    assert _recops(tmp_path, "token", "revoke", "shop").returncode == 0
    assert "revoked" in _recops(tmp_path, "token", "list").stdout
    again = _recops(tmp_path, "token", "revoke", "shop")
    assert again.returncode == 2 and "no active token" in again.stderr


@pytest.mark.e2e
def test_the_server_answers_401_and_403_and_keeps_its_doors_open(server, trained):
    settings, _ = trained
    body = {"user_id": "u1", "k": 3}
    event = {"user_id": "auth-user", "item_id": "i1", "event_type": "view"}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        none = c.post("/recommend", json=body)
        assert none.status_code == 401 and "needs a token" in none.json()["error"]
        assert none.headers["www-authenticate"].startswith("Bearer")
        wrong = c.post("/recommend", json=body, headers={"Authorization": "Bearer rk_not-a-token"})
        assert wrong.status_code == 401 and "not an active" in wrong.json()["error"]
        assert c.post("/recommend", json=body, headers=auth(settings, "read")).status_code == 200
        denied = c.post("/track", json=event, headers=auth(settings, "read"))
        assert denied.status_code == 403 and "lacks the scope 'track'" in denied.json()["error"]
        assert c.post("/track", json=event, headers=auth(settings, "track")).status_code == 200
        assert c.post("/recommend", json=body, headers=auth(settings, "track")).status_code == 403
        assert c.get("/experiments", headers=auth(settings, "read")).status_code == 403
        assert c.get("/experiments", headers=auth(settings, "admin")).status_code == 200
        for open_path in ("/health", "/readyz", "/docs.json", "/metrics"):  # /metrics: open by default
            assert c.get(open_path).status_code == 200, open_path
        spec = c.get("/docs.json").json()
        assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
        op = spec["paths"]["/track"]["post"]
        assert op["security"] == [{"token": []}] and {"401", "403"} <= set(op["responses"])
        assert "security" not in spec["paths"]["/health"]["get"]

        # a new token works at once; a revoked one stops working within auth_refresh_seconds
        store = TokenStore(sa.create_engine(settings.event_store_uri))
        name = f"revoke-me-{time.time_ns()}"
        key = store.create(name, frozenset({READ}))
        assert c.post("/recommend", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        store.revoke(name)
        deadline = time.time() + settings.auth_refresh_seconds + 5
        while c.post("/recommend", json=body, headers={"Authorization": f"Bearer {key}"}).status_code != 401:
            assert time.time() < deadline, "a revoked token still works"
            time.sleep(0.2)


@pytest.mark.e2e
def test_rate_limits_and_body_size_get_429_and_413(server, trained):
    from prometheus_client.parser import text_string_to_metric_families

    settings, _ = trained
    store = TokenStore(sa.create_engine(settings.event_store_uri))
    key = store.create(f"slow-{time.time_ns()}", frozenset({READ, TRACK}), rate=2)  # burst 4

    def refused(c) -> dict[str, float]:
        return {s.labels["status"]: s.value for f in text_string_to_metric_families(c.get("/metrics").text)
                for s in f.samples if s.name == "recops_refused_total"}

    with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        before = refused(c)
        codes = [c.get("/model").status_code for _ in range(8)]
        assert codes.count(429) >= 3 and codes[0] == 200, codes
        r = c.get("/model")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "2 requests/s" in r.json()["error"]
        time.sleep(1.1)
        assert c.get("/model").status_code == 200  # refilled

        big = b"[" + b",".join([b'{"user_id":"u1","item_id":"i1","event_type":"view"}'] * 90_000) + b"]"
        assert len(big) > settings.max_body_bytes
        r = c.post("/track/batch", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]
        chunked = c.post("/track/batch", content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        small = c.post("/track/batch", content=iter([b'[{"user_id":"u1","item_id":"i1","event_type":"view"}]']),
                       headers={"content-type": "application/json"})
        assert small.status_code == 200, small.text  # a chunked body within the limit goes through
        after = refused(c)
    assert after["429"] - before["429"] >= 4 and after["413"] - before["413"] == 2


@pytest.mark.e2e
def test_auth_off_is_explicit_and_warned(trained):
    settings, _ = trained
    srv = Server(settings, free_port(), env={"RECOPS_AUTH": "false"}, workers=1).wait()
    try:
        r = httpx.post(f"{srv.url}/recommend", json={"user_id": "u1", "k": 3}, timeout=30)
        assert r.status_code == 200
        assert "security" not in httpx.get(f"{srv.url}/docs.json", timeout=30).json()["paths"]["/recommend"]["post"]
    finally:
        srv.stop()
    assert "auth is off" in srv.log_path.read_text()
