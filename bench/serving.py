"""/recommend latency, throughput and memory, next to a bare BentoML endpoint measured in the same run.

Trains a model on synthetic data in a temp home, starts the real recops server and the bare one,
then measures sequential p50/p99 (requests to the two servers interleaved, so machine drift hits
both alike), throughput with concurrent clients (one server at a time), and resident memory.
Then it starts online experiments (a second registered version as the challenger: an A/B test at
share 0.5, then interleaving at the default share 0.05) and measures /recommend again: a running
experiment must keep p50 within 1.3x of the no-experiment value (each phase against the bare
server measured alongside it, so drift between the phases cancels).
Ends with one JSON line. Usage: python bench/serving.py [--events 100000 --requests 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from recops import steps
from recops.config import load_settings
from recops.store import EventStore

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A port nobody listens on now (the machine is shared: fixed ports collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


AUTH: dict[str, str] = {}  # the Authorization header of the token ``authorize`` made (the bare server ignores it)


def authorize(s, scopes: str = "read,track,admin") -> None:
    """Make an API token the way a user does (``recops token create``); every request sends it."""
    recops = Path(sys.executable).with_name("recops")
    out = subprocess.run([str(recops), "token", "create", "--scope", scopes, "--name", f"bench-{time.time_ns()}"],
                         env={**os.environ, **s.to_env()}, capture_output=True, text=True, check=True).stdout
    AUTH["Authorization"] = f"Bearer {out.strip().splitlines()[-1]}"


def client(url: str, **kwargs) -> httpx.Client:
    """An HTTP client of a server that sends the token."""
    return httpx.Client(base_url=url, headers=AUTH, **kwargs)


def start(cmd: list[str], env: dict, cwd: Path, port: int) -> subprocess.Popen:
    p = subprocess.Popen(cmd + ["--host", "127.0.0.1", "--port", str(port)], env=env, cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(p, port)
    return p


def wait_ready(p: subprocess.Popen, port: int, timeout: float = 120) -> float:
    """Wait until the server on ``port`` answers /readyz; returns the seconds it took.

    Raises:
        RuntimeError: the process exited first. TimeoutError: ``timeout`` passed.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if p.poll() is not None:
            raise RuntimeError(f"the server exited with {p.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no server answered on port {port}")


def rss_mb(p: subprocess.Popen) -> float:
    """The resident memory of the whole service (supervisor, every worker, the online refresher), as the
    sum of its processes' PSS: a page they share (the libraries every worker maps) counts once, split
    between them; summing RSS would count it once per process."""
    return memory_mb(p)["pss_mb"]


def memory_mb(p: subprocess.Popen) -> dict:
    """The whole service's memory: PSS and RSS summed over its processes, and how many there are."""
    proc = psutil.Process(p.pid)
    mems = [x.memory_full_info() for x in [proc, *proc.children(recursive=True)]]
    return {"pss_mb": sum(m.pss for m in mems) / 2**20, "rss_sum_mb": sum(m.rss for m in mems) / 2**20,
            "processes": len(mems)}


def latencies(urls: dict[str, str], bodies: list[dict], n: int) -> dict[str, np.ndarray]:
    """Sequential request latency of every server, interleaved request by request, so that the
    machine's drift (a shared VM) hits recops and the baseline alike."""
    clients = {name: client(url, timeout=30) for name, url in urls.items()}
    try:
        for c in clients.values():
            for b in bodies[:50]:
                c.post("/recommend", json=b).raise_for_status()
        lat = {name: [] for name in clients}
        for i in range(n):
            for name, c in clients.items():
                t = time.perf_counter()
                r = c.post("/recommend", json=bodies[i % len(bodies)])
                lat[name].append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
        return {name: np.array(v) for name, v in lat.items()}
    finally:
        for c in clients.values():
            c.close()


def load(url: str, bodies: list[dict], clients: int, seconds: float) -> tuple[float, float]:
    """``clients`` concurrent clients, each sending /recommend back to back for ``seconds``: requests per
    second, and the p99 latency under that load (ms)."""
    def worker(w: int) -> list[float]:
        lat = []
        with client(url, timeout=30) as c:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                c.post("/recommend", json=bodies[(w * 7919 + len(lat)) % len(bodies)]).raise_for_status()
                lat.append((time.perf_counter() - t0) * 1000)
        return lat

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        lats = [x for one in ex.map(worker, range(clients)) for x in one]
    return len(lats) / (time.perf_counter() - t), float(np.percentile(lats, 99))


def trained_home(root: Path, n_events: int):
    """Settings of a fresh home under ``root`` with a champion trained on synthetic events, and the
    training run's id."""
    s = load_settings(home=root / "home")
    b = steps.ingest(s, n_events=n_events, seed=2, bad_share=0.0)
    steps.validate(s, b["batch_id"])
    steps.build_features(s)
    run_id = steps.train(s)["run_id"]
    steps.promote(s)
    return s, run_id


def p50_ratio_vs_bare(urls: dict[str, str], bodies: list[dict], n: int) -> tuple[float, float]:
    """recops's p50 and its ratio to the bare server's, measured request by request alongside it."""
    lat = latencies(urls, bodies, n)
    p50 = float(np.percentile(lat["recops"], 50))
    return p50, p50 / float(np.percentile(lat["bare"], 50))


def under_experiments(s, run_id: str, urls: dict[str, str], bodies: list[dict], n: int,
                      proc: subprocess.Popen) -> dict:
    """/recommend p50 (and the server's memory, two models loaded) while an A/B test (share 0.5) and
    then an interleaving test (share 0.05) run."""
    import mlflow

    from recops import registry
    from recops.experiments import lifecycle

    registry.setup(s)
    v2 = str(mlflow.register_model(f"runs:/{run_id}/model", s.model_name).version)
    out = {}
    for name, method, share in (("bench-ab", "ab", 0.5), ("bench-interleave", "interleave", 0.05)):
        lifecycle.start(s, name, v2, method=method, share=share)
        t0 = time.time()
        while httpx.get(f"{urls['recops']}/health").json()["experiment"] != name:
            if time.time() - t0 > 120:
                raise TimeoutError(f"the server did not pick up {name}")
            time.sleep(0.5)
        p50, ratio = p50_ratio_vs_bare(urls, bodies, n)
        out[name] = {"method": method, "share": share, "p50_ms": p50, "p50_ratio_vs_bare": ratio,
                     "rss_mb": rss_mb(proc)}
        lifecycle.stop(s, name, reason="benchmark phase done")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="recops-bench-serving-"))
    s, run_id = trained_home(root, args.events)
    store = EventStore(s.event_store_uri)
    users = store.events()["user_id"].dropna().unique()
    store.dispose()
    rng = np.random.default_rng(0)
    bodies = [{"user_id": str(u), "k": 10} for u in rng.choice(users, 500)]
    authorize(s)
    env = {**os.environ, **s.to_env(), "BENTOML_HOME": str(root / "bentoml"), "BARE_WORKERS": str(s.workers)}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    servers = {"recops": ([bentoml, "serve", "recops.services.service:Recops"], Path.cwd(), free_port()),
               "bare": ([bentoml, "serve", "bare_service:Bare"], HERE, free_port())}
    procs = {name: start(cmd, env, cwd, port) for name, (cmd, cwd, port) in servers.items()}
    urls = {name: f"http://127.0.0.1:{port}" for name, (_, _, port) in servers.items()}
    try:
        t_first = time.perf_counter()  # the first request after start-up (lazy imports, first reads)
        fb = httpx.post(f"{urls['recops']}/recommend", json=bodies[0], timeout=120, headers=AUTH).json()
        first_ms = (time.perf_counter() - t_first) * 1000
        assert not fb["fallback"], fb
        lat = latencies(urls, bodies, args.requests)
        res = {name: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                      "mean_ms": float(v.mean())}
               for name, v in lat.items()}
        for name, url in urls.items():
            res[name]["throughput_rps"], res[name]["loaded_p99_ms"] = load(url, bodies, args.clients, args.seconds)
            mem = memory_mb(procs[name])
            res[name].update(rss_mb=mem["pss_mb"], rss_sum_mb=mem["rss_sum_mb"], processes=mem["processes"])
        base_ratio = res["recops"]["p50_ms"] / res["bare"]["p50_ms"]
        exps = under_experiments(s, run_id, urls, bodies, args.requests, procs["recops"])
        for e in exps.values():
            e["p50_vs_no_experiment"] = e["p50_ratio_vs_bare"] / base_ratio
    finally:
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
    shutil.rmtree(root, ignore_errors=True)
    r, bare = res["recops"], res["bare"]
    ratio = r["p50_ms"] / bare["p50_ms"]
    print(f"{'':<8}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
          f"{'req/s (' + str(args.clients) + ' clients)':>22}{'PSS MB':>9}")
    for name in ("recops", "bare"):
        x = res[name]
        print(f"{name:<8}{x['p50_ms']:9.2f}{x['p99_ms']:9.2f}{x['mean_ms']:9.2f}{x['throughput_rps']:22.1f}{x['rss_mb']:9.1f}")
    tp_ratio = r["throughput_rps"] / bare["throughput_rps"]
    print(f"{s.workers} workers each (recops: the online refresher too, {r['processes']} processes); memory is the "
          f"sum of PSS (RSS summed: recops {r['rss_sum_mb']:.0f} MB, bare {bare['rss_sum_mb']:.0f} MB)")
    print(f"recops p50 = {ratio:.2f} x bare (target <= 2.0); throughput {tp_ratio:.2f} x bare with {args.clients} "
          f"clients (target >= 0.6), p99 under that load {r['loaded_p99_ms']:.1f} ms (target <= 50); memory "
          f"{r['rss_mb']:.0f} MB (target <= 1 GB)")
    print(f"first /recommend after start-up: {first_ms:.0f} ms")
    r["first_request_ms"] = first_ms
    for name, e in exps.items():
        print(f"{name:<17} ({e['method']}, share {e['share']}): p50 {e['p50_ms']:.2f} ms = "
              f"{e['p50_vs_no_experiment']:.2f} x the no-experiment p50, each against bare (target <= 1.3); "
              f"RSS {e['rss_mb']:.0f} MB with both models")
    print(json.dumps({"bench": "serving", "events": args.events, "workers": s.workers, "clients": args.clients,
                      "recops": r, "bare": bare, "p50_ratio_vs_bare": ratio, "throughput_ratio_vs_bare": tp_ratio,
                      "experiments": exps}))


if __name__ == "__main__":
    main()
