"""Shared fixtures: one Prefect harness, one trained pipeline, one real BentoML server per session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="recops-tests-"))
# Before Prefect, MLflow, GX or BentoML are imported anywhere.
os.environ.update({
    "PREFECT_HOME": str(_TMP / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "BENTOML_HOME": str(_TMP / "bentoml"),
})
for var in [k for k in os.environ if k.startswith("RECOPS_")]:
    del os.environ[var]
os.environ["RECOPS_NUM_THREADS"] = "1"  # training's LightGBM: the server and the tests share two cores

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
END = "2026-11-01"  # synthetic data ends here (fixed, so tests are deterministic)


def needs_shared(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP


@pytest.fixture(scope="session")
def synthetic():
    from recops.generate import generate

    return generate(n_events=30_000, end=END, seed=7)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def trained(prefect_harness, tmp_root):
    """The real pipeline flow run once on small synthetic data in a temp home."""
    from recops.config import load_settings

    home = tmp_root / "trained"
    settings = load_settings(home=home, reload_interval_seconds=1.0, serve_workers=2)
    os.environ.update(settings.to_env())
    try:
        from recops.flows.pipeline import pipeline_flow

        result = pipeline_flow(n_events=30_000, seed=11, bad_share=0.01, end=END)
    finally:
        for k in settings.to_env():
            os.environ.pop(k, None)
    return settings, result


def train_champion(settings, n_events: int, seed: int) -> None:
    """The pipeline's steps in process on clean synthetic events, the trained model promoted: a home with
    a champion for a test module's own server (faster than the flow)."""
    from recops import steps

    b = steps.ingest(settings, n_events=n_events, end=END, seed=seed, bad_share=0.0)
    steps.validate(settings, b["batch_id"])
    steps.build_features(settings)
    steps.train(settings)
    steps.promote(settings)


_TOKENS: dict[tuple[str, str], str] = {}


def token(settings, scopes: str = "admin") -> str:
    """A token with these scopes in this home's token store (one per home and scopes, made once)."""
    from recops.auth import TokenStore, parse_scopes
    from recops.store import EventStore

    key = (str(Path(settings.home).resolve()), scopes)
    if key not in _TOKENS:
        store = EventStore(settings.event_store_uri)
        name = f"tests-{scopes.replace(',', '-')}"
        _TOKENS[key] = TokenStore(store.engine).create(name, parse_scopes(scopes))
        store.dispose()
    return _TOKENS[key]


def auth(settings, scopes: str = "admin") -> dict[str, str]:
    """The Authorization header of ``token(settings, scopes)``."""
    return {"Authorization": f"Bearer {token(settings, scopes)}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``bentoml serve``: the service in the source tree (registry mode), or a Bento by its tag. ``workers``:
    one for a test that is about something else (each worker costs a start-up); the shared server and the
    tests of workers, crashes and experiments run the default. Its own
    BENTOML_HOME (BentoML empties the Prometheus files there at start: another server's /metrics), except
    for a Bento, which is served from the home whose store holds it."""

    def __init__(self, settings, port: int, bento: str | None = None, env: dict | None = None,
                 workers: int | None = None):
        self.settings, self.port = settings, port
        self.url = f"http://127.0.0.1:{port}"
        home = os.environ["BENTOML_HOME"] if bento else Path(settings.home) / f"bentoml-{port}"
        env = {**os.environ, **settings.to_env(), "BENTOML_HOME": str(home), **(env or {})}
        if workers is not None:  # the default (serve_workers) otherwise: two on this machine
            env["RECOPS_SERVE_WORKERS"] = str(workers)
        target = bento or "recops.services.service:Recops"
        bentoml = Path(sys.executable).with_name("bentoml")
        self.log_path = Path(settings.home) / f"server-{port}.log"
        # the server gets its own copy of the descriptor, so ours can close once it has started
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([str(bentoml), "serve", target, "--host",
                                          "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 120) -> Server:
        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def each_worker(url: str, headers: dict, workers: int = 2, tries: int = 200) -> list:
    """One open HTTP client per worker of the server (a kept-alive connection stays with the worker that
    accepted it; /health names it).

    Raises:
        AssertionError: ``tries`` new connections reached fewer than ``workers`` workers.
    """
    import httpx

    found: dict[int, httpx.Client] = {}
    for _ in range(tries):
        c = httpx.Client(base_url=url, timeout=30, headers=headers)
        r = c.get("/health")
        pid = r.json()["worker"] if r.status_code == 200 else None  # a worker still starting answers 503
        if pid is None or pid in found:
            c.close()
            time.sleep(0.05)
        else:
            found[pid] = c
        if len(found) == workers:
            return list(found.values())
    for c in found.values():
        c.close()
    raise AssertionError(f"{tries} connections reached {len(found)} worker(s), not {workers}")


@pytest.fixture(scope="session")
def server(trained):
    settings, _ = trained
    srv = Server(settings, free_port()).wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=30, headers=auth(server.settings)) as c:
        yield c
