"""Real-time path: /track latency, freshness (track -> /recommend reflects it) and /track throughput,
next to bare BentoML endpoints measured in the same run.

Trains a model on synthetic data in a temp home (as bench/serving.py does), starts the real recops
server and the bare one (bench/bare_service.py), then measures:
- /track latency: sequential single events, recops and bare interleaved request by request;
- freshness: a known user's top item is tracked as a ``purchase``; ``/recommend`` is polled at once
  until the item is gone (purchased items are never recommended again). Freshness is the time from
  the /track 2xx to the first /recommend answer without the item. The bare figure is the floor of
  that method: one /recommend round trip right after a /track. Then the same event is looked for
  in the Feast online row of the user (u_last_event_ts), read directly from the online store;
- sustained throughput, one server at a time: single-event /track with a few concurrent clients,
  and /track/batch (500 events a request, a realistic mix over many users), in events/s; every
  event id is new, so a response whose 'stored' differs from what was sent is counted, as are warnings.
Events are replayed from the synthetic data (users, sessions, items, types and values in their real
mix) with fresh ids and no timestamp (the server stamps now). Prints PASS/MISS per target, then one
JSON line. The machine is shared: compare with the bare figures of the same run, not across runs.

Usage: python bench/realtime.py [--events 100000 --requests 500 --trials 50 --seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import HERE, authorize, client, free_port, rss_mb, start, trained_home

from recops.featurestore import FeatureStoreClient
from recops.store import EventStore

TARGETS = {"track_p99_ms": 20.0, "freshness_p99_ms": 50.0, "batch_events_per_s": 5000.0}


class Replay:
    """Draws realistic events: rows of the synthetic data (user, session, item, type, value), fresh
    ids, no timestamp (the server stamps 'now')."""

    def __init__(self, events, seed: int):
        ev = events.dropna(subset=["user_id"])
        self.users = ev["user_id"].astype(str).to_numpy()
        self.items = ev["item_id"].astype(str).to_numpy()
        self.types = ev["event_type"].astype(str).to_numpy()
        self.values = ev["value"].to_numpy(dtype=float, na_value=np.nan)
        self.sessions = ev["session_id"].astype(object).where(ev["session_id"].notna(), None).to_numpy()
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> list[dict]:
        out = []
        for i in self.rng.integers(0, len(self.users), n):
            e = {"event_id": uuid.uuid4().hex, "user_id": self.users[i], "item_id": self.items[i],
                 "event_type": self.types[i]}
            if not np.isnan(self.values[i]):
                e["value"] = float(self.values[i])
            if self.sessions[i] is not None:
                e["session_id"] = str(self.sessions[i])
            out.append(e)
        return out

    def mix(self) -> dict[str, float]:
        t, n = np.unique(self.types, return_counts=True)
        return {str(a): round(float(b) / len(self.types), 4) for a, b in zip(t, n)}


def _finite(x):
    """NaN (nothing measured) as null, so that the JSON line is valid JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return None if isinstance(x, float) and not np.isfinite(x) else x


def pct(v, q: float) -> float:
    return float(np.percentile(np.asarray(v, dtype=float), q)) if len(v) else float("nan")


def track_latency(urls: dict[str, str], replay: Replay, n: int) -> tuple[dict, dict]:
    """Sequential single-event /track, the servers interleaved request by request."""
    clients = {name: client(url, timeout=30) for name, url in urls.items()}
    bad = {name: 0 for name in urls}
    try:
        for c in clients.values():
            for e in replay.draw(30):
                c.post("/track", json=e).raise_for_status()
        lat = {name: [] for name in clients}
        for e in replay.draw(n):
            for name, c in clients.items():
                t = time.perf_counter()
                r = c.post("/track", json=e)
                lat[name].append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                body = r.json()
                bad[name] += body.get("stored") != 1 or body.get("warning") is not None
        return lat, bad
    finally:
        for c in clients.values():
            c.close()


def freshness(urls: dict[str, str], users: list[str], trials: int, k: int, last_event_ts,
              timeout_s: float = 5.0) -> dict:
    """Per trial: top item of a user -> /track purchase -> poll /recommend until the item is gone.
    Then the Feast online row: poll ``last_event_ts(user)`` (read from the online store by this
    process) until it shows the tracked event; that time includes the /recommend polling before it.
    Bare, interleaved per trial: /track then one /recommend (the floor of the method)."""
    rc = client(urls["recops"], timeout=30)
    bc = client(urls["bare"], timeout=30)
    out = {"recops_ms": [], "track_ms": [], "polls": [], "bare_ms": [], "feature_ms": [], "feature_first_check": 0,
           "feature_never": 0, "skipped": 0, "never": 0}
    try:
        for u in users:
            if len(out["recops_ms"]) + out["never"] >= trials:
                break
            rec = rc.post("/recommend", json={"user_id": u, "k": k}).json()
            if rec["fallback"] or not rec["items"]:
                out["skipped"] += 1
                continue
            top = rec["items"][0]["item_id"]
            ev = {"event_id": uuid.uuid4().hex, "user_id": u, "item_id": top, "event_type": "purchase", "value": 1.0}
            sent = time.time()
            t0 = time.perf_counter()
            rc.post("/track", json=ev).raise_for_status()
            t_ok = time.perf_counter()
            polls = 0
            while True:
                r = rc.post("/recommend", json={"user_id": u, "k": k})
                t = time.perf_counter()
                polls += 1
                r.raise_for_status()
                if top not in {x["item_id"] for x in r.json()["items"]}:
                    out["recops_ms"].append((t - t_ok) * 1000)
                    break
                if t - t_ok > timeout_s:
                    out["never"] += 1
                    break
            out["track_ms"].append((t_ok - t0) * 1000)
            out["polls"].append(polls)
            checks = 0
            while True:
                ts = last_event_ts(u)
                t = time.perf_counter()
                checks += 1
                if ts is not None and ts >= sent - 1e-3:  # the server stamped the event after 'sent'
                    out["feature_ms"].append((t - t_ok) * 1000)
                    out["feature_first_check"] += checks == 1
                    break
                if t - t_ok > timeout_s:
                    out["feature_never"] += 1
                    break
                time.sleep(0.002)
            bc.post("/track", json=ev).raise_for_status()
            t_ok = time.perf_counter()
            bc.post("/recommend", json={"user_id": u, "k": k}).raise_for_status()
            out["bare_ms"].append((time.perf_counter() - t_ok) * 1000)
        return out
    finally:
        rc.close()
        bc.close()


def throughput(url: str, route: str, make_body, per_request: int, clients: int, seconds: float) -> dict:
    """Events/s with ``clients`` concurrent clients for ``seconds``
    (bodies built in the loop, alike for both servers)."""

    def worker(_w: int) -> tuple[int, int, int, str | None]:
        done = warned = miscounted = 0
        first = None
        with client(url, timeout=60) as c:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                body = make_body()
                r = c.post(route, json=body)
                r.raise_for_status()
                got = r.json()
                if got.get("warning") is not None:
                    warned += 1
                    first = first or got["warning"]
                # every event id is new: 'stored' must equal what was sent
                miscounted += got.get("stored") != per_request
                done += 1
        return done, warned, miscounted, first

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        res = list(ex.map(worker, range(clients)))
    el = time.perf_counter() - t
    reqs = sum(r[0] for r in res)
    return {"events_per_s": reqs * per_request / el, "requests": reqs, "warnings": sum(r[1] for r in res),
            "stored_miscounted": sum(r[2] for r in res), "first_warning": next((r[3] for r in res if r[3]), None),
            "clients": clients, "seconds": el}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=500, help="sequential /track requests per server")
    ap.add_argument("--trials", type=int, default=50, help="freshness trials (distinct users)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients, single-event throughput")
    ap.add_argument("--batch", type=int, default=500, help="events per /track/batch request")
    ap.add_argument("--batch-clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="recops-bench-realtime-"))
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
    t_start = time.time()
    s = trained_home(root, args.events)
    store = EventStore(s.event_store_uri)
    events = store.events()
    store.dispose()
    replay = Replay(events, seed=0)
    rng = np.random.default_rng(1)
    # freshness users: known users, distinct, in random order; the other phases draw their own
    fresh_users = [str(u) for u in rng.permutation(events["user_id"].dropna().unique())[: args.trials * 3]]
    authorize(s)
    env = {**os.environ, **s.to_env(), "BENTOML_HOME": str(root / "bentoml")}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    servers = {"recops": ([bentoml, "serve", "recops.services.service:Recops"], Path.cwd(), free_port()),
               "bare": ([bentoml, "serve", "bare_service:Bare"], HERE, free_port())}
    print(f"setup (data + features + training) {time.time() - t_start:.0f} s; starting servers", flush=True)
    procs = {name: start(cmd, env, cwd, port) for name, (cmd, cwd, port) in servers.items()}
    # /readyz could have been answered by someone else's server on a shared machine
    assert all(p.poll() is None for p in procs.values()), "a server exited at start"
    urls = {name: f"http://127.0.0.1:{port}" for name, (_, _, port) in servers.items()}
    res: dict = {"recops": {}, "bare": {}}
    try:
        lat, bad = track_latency(urls, replay, args.requests)
        for name, v in lat.items():
            res[name]["track_p50_ms"], res[name]["track_p99_ms"] = pct(v, 50), pct(v, 99)
            res[name]["track_mean_ms"] = float(np.mean(v))
            res[name]["track_bad_responses"] = int(bad[name])
        print(f"latency done ({time.time() - t_start:.0f} s)", flush=True)
        fs = FeatureStoreClient(s)

        def last_event_ts(user: str) -> float | None:
            row = fs.online_user(user)
            return None if row is None else row.get("u_last_event_ts")

        last_event_ts(fresh_users[0])  # warm: the registry loads on first use
        fr = freshness(urls, fresh_users, args.trials, 10, last_event_ts)
        res["recops"].update(freshness_p50_ms=pct(fr["recops_ms"], 50), freshness_p99_ms=pct(fr["recops_ms"], 99),
                             freshness_max_ms=float(max(fr["recops_ms"], default=float("nan"))),
                             freshness_trials=len(fr["recops_ms"]), freshness_never=fr["never"],
                             freshness_polls_mean=float(np.mean(fr["polls"])) if fr["polls"] else float("nan"),
                             freshness_polls_max=int(max(fr["polls"], default=0)),
                             freshness_track_p50_ms=pct(fr["track_ms"], 50), freshness_skipped_fallback=fr["skipped"],
                             feature_freshness_p50_ms=pct(fr["feature_ms"], 50),
                             feature_freshness_p99_ms=pct(fr["feature_ms"], 99),
                             feature_reflected_at_first_check=fr["feature_first_check"],
                             feature_never=fr["feature_never"])
        res["bare"].update(freshness_p50_ms=pct(fr["bare_ms"], 50), freshness_p99_ms=pct(fr["bare_ms"], 99))
        print(f"freshness done ({time.time() - t_start:.0f} s)", flush=True)
        for name, url in urls.items():
            single = throughput(url, "/track", lambda: replay.draw(1)[0], 1, args.clients, args.seconds)
            res[name]["single_events_per_s"] = single["events_per_s"]
            res[name]["single_requests"] = single["requests"]
            batch = throughput(url, "/track/batch", lambda: replay.draw(args.batch), args.batch,
                               args.batch_clients, args.seconds)
            res[name]["batch_events_per_s"] = batch["events_per_s"]
            res[name]["batch_requests"] = batch["requests"]
            for kind, x in (("single", single), ("batch", batch)):
                res[name][f"{kind}_warnings"] = x["warnings"]
                res[name][f"{kind}_stored_miscounted"] = x["stored_miscounted"]
                if x["first_warning"]:
                    res[name][f"{kind}_first_warning"] = x["first_warning"][:300]
            res[name]["rss_mb"] = rss_mb(procs[name])
            print(f"throughput {name} done ({time.time() - t_start:.0f} s)", flush=True)
        store = EventStore(s.event_store_uri)
        res["recops"]["events_in_store_after"] = store.count_events()
        store.dispose()
    finally:
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
    r, bare = res["recops"], res["bare"]
    ratios = {"track_p50": r["track_p50_ms"] / bare["track_p50_ms"],
              "track_p99": r["track_p99_ms"] / bare["track_p99_ms"],
              "freshness_p50": r["freshness_p50_ms"] / bare["freshness_p50_ms"],
              "single_throughput": r["single_events_per_s"] / bare["single_events_per_s"],
              "batch_throughput": r["batch_events_per_s"] / bare["batch_events_per_s"]}
    print()
    print(f"{'':<8}{'track p50':>10}{'p99 ms':>8}{'fresh p50':>10}{'p99 ms':>8}"
          f"{'single ev/s':>13}{'batch ev/s':>12}{'RSS MB':>8}")
    for name in ("recops", "bare"):
        x = res[name]
        print(f"{name:<8}{x['track_p50_ms']:10.2f}{x['track_p99_ms']:8.2f}{x['freshness_p50_ms']:10.2f}{x['freshness_p99_ms']:8.2f}"
              f"{x['single_events_per_s']:13.1f}{x['batch_events_per_s']:12.1f}{x['rss_mb']:8.1f}")
    print(f"(single: {args.clients} clients x 1 event; batch: {args.batch_clients} clients x {args.batch} events; "
          f"{args.seconds:.0f} s each; freshness over {r['freshness_trials']} users, {r['freshness_polls_mean']:.2f} "
          f"polls on average, {r['freshness_never']} never reflected; bare freshness = one /recommend after /track)")
    print(f"Feast online user row showed the event: p50 {r['feature_freshness_p50_ms']:.1f} ms, p99 "
          f"{r['feature_freshness_p99_ms']:.1f} ms after the /track 2xx (measured after the /recommend polls); already "
          f"at the first check in {r['feature_reflected_at_first_check']} of {r['freshness_trials']}, "
          f"never in {r['feature_never']}")
    print(f"event mix replayed: {replay.mix()}")
    print(f"recops responses: sequential {r['track_bad_responses']} of {args.requests} not 'stored 1, no warning'; "
          f"concurrent single {r['single_warnings']} warnings, {r['single_stored_miscounted']} wrong 'stored' of "
          f"{r['single_requests']}; batch {r['batch_warnings']} warnings, {r['batch_stored_miscounted']} "
          f"wrong 'stored' of {r['batch_requests']}"
          + (f"; first warning: {r.get('single_first_warning') or r.get('batch_first_warning')}"
             if r['single_warnings'] or r['batch_warnings'] else ""))
    checks = [("/track p99", r["track_p99_ms"], "<=", TARGETS["track_p99_ms"], "ms"),
              ("freshness p99", r["freshness_p99_ms"] if not r["freshness_never"] else float("inf"), "<=",
               TARGETS["freshness_p99_ms"], "ms"),
              ("/track/batch", r["batch_events_per_s"], ">=", TARGETS["batch_events_per_s"], "events/s")]
    if not r["freshness_trials"]:
        print(f"(freshness: no trial ran: {r['freshness_skipped_fallback']} users got the fallback answer, "
              f"{r['freshness_never']} never reflected the purchase)")
    verdicts = {}
    for label, got, op, want, unit in checks:
        ok = got <= want if op == "<=" else got >= want  # NaN (nothing measured) is a MISS
        verdicts[label] = "PASS" if ok else "MISS"
        print(f"{verdicts[label]}  {label}: {got:.1f} {unit} (target {op} {want:g} {unit})")
    print(json.dumps(_finite({"bench": "realtime", "events": args.events, "recops": r, "bare": bare,
                              "ratios_vs_bare": ratios, "targets": TARGETS, "verdicts": verdicts,
                              "wall_s": round(time.time() - t_start, 1)})))


if __name__ == "__main__":
    main()
