"""The monitor's drift detection on synthetic events with planted shifts, its false alarms on
stationary events, and the monitor flow's run time on a 1M-event home.

1. Detection delay: events over 60 days whose category tastes move on day 50 by ``exp(shift * z_c)``
   (``recops.generate``'s ``shift_at``/``shift``), for several shift sizes. The champion's training
   reference is built from the events before the shift (``monitoring.build_reference``, as training
   builds it); then a look every simulated hour, each on the last ``monitor_window_hours`` of events
   (``monitoring.drift``, what the monitor flow runs on the window it reads from the event store).
   The delay is the hours from the shift to the first drift alarm.
2. False alarms: the same on stationary events (no popularity drift, no new items or users), at
   least 200 hourly looks after the reference.
3. The monitor flow (a real Prefect flow run: event store, MLflow registry and logging, Evidently's
   report) on a home holding 1M events with a champion trained on them by the default pipeline
   steps. The first run pays the imports and the reference's download.

Default settings throughout. Prints tables and ends with one JSON line.
Usage: python bench/monitoring.py [--events 200000] [--shifts 0.25,0.5,1,2] [--flow-events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import numpy as np
import pandas as pd

from recops.config import Settings, load_settings
from recops.generate import generate
from recops.monitoring import build_reference, drift
from recops.schema import normalize_events, normalize_items

END = "2026-11-01"
DAYS = 60.0
SHIFT_DAY = 50.0  # the shift (and the champion's training cut) is this many days into the period


def looks(n_events: int, shift: float, hours: int, settings: Settings, stop_at_alarm: bool, **gen) -> pd.DataFrame:
    """Hourly drift looks after a reference cut at ``SHIFT_DAY``; one row per look."""
    end = pd.Timestamp(END, tz="UTC")
    cut_ts = end - pd.Timedelta(days=DAYS - SHIFT_DAY)
    d = generate(n_events, end=END, days=DAYS, seed=3, shift_at=cut_ts if shift else None, shift=shift, **gen)
    events, items = normalize_events(d.events), normalize_items(d.items)
    t = (events["timestamp"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    cut = cut_ts.value / 1e9
    ref = build_reference(events[t < cut], items, settings)
    rows = []
    for h in range(1, hours + 1):
        at = cut + h * 3600.0
        window = events[(t >= at - settings.monitor_window_hours * 3600.0) & (t < at)]
        r = drift(ref, window, items, settings)
        rows.append({"hour": h, "events": r["events"], "enough": r["enough"], "detected": r["detected"],
                     "drifted": ",".join(r["drifted"]),
                     **{k: r.get(k) for k in ("drift_category", "drift_category_limit", "drift_price",
                                              "drift_price_limit", "drift_event_type")}})
        if stop_at_alarm and r["detected"]:
            break
    return pd.DataFrame(rows)


def flow_time(n_events: int, runs: int = 3) -> dict:
    """The monitor flow's wall time on a home with ``n_events`` events and a champion trained on them."""
    from recops import steps

    root = Path(tempfile.mkdtemp(prefix="recops-bench-monitor-"))
    s = load_settings(home=root / "home")
    s.ensure_dirs()
    os.environ.update(s.to_env())
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    t0 = time.perf_counter()
    b = steps.ingest(s, n_events=n_events, seed=1, bad_share=0.01)
    steps.validate(s, b["batch_id"])
    steps.build_features(s)
    trained = steps.train(s)
    steps.promote(s, force=True)
    setup = time.perf_counter() - t0
    from recops.flows.pipeline import monitor_flow
    from recops.store import EventStore

    store = EventStore(s.event_store_uri)
    at = float(store.events()["timestamp"].max().value / 1e9) + 1.0
    total = store.count_events()
    store.dispose()
    times, last = [], {}
    for _ in range(runs):
        t1 = time.perf_counter()
        last = monitor_flow(at=at)
        times.append(round(time.perf_counter() - t1, 2))
    shutil.rmtree(root, ignore_errors=True)
    return {"events": total, "setup_s": round(setup, 1), "train_s": trained["seconds"], "flow_s": times,
            "window_events": last["drift"]["events"], "alarms": last["alarms"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000, help="events per synthetic data set (60 days)")
    ap.add_argument("--shifts", default="0.25,0.5,1,2")
    ap.add_argument("--hours", type=int, default=96, help="the longest a shift is watched for")
    ap.add_argument("--stationary-hours", type=int, default=240)
    ap.add_argument("--flow-events", type=int, default=1_000_000, help="0: skip the flow's timing")
    args = ap.parse_args()
    s = Settings()
    t0 = time.perf_counter()
    out: dict = {"events": args.events, "window_hours": s.monitor_window_hours, "delay_hours": {}}
    print(f"Drift on {args.events:,} synthetic events over {DAYS:.0f} days (~{args.events / DAYS:,.0f} a day); "
          f"window {s.monitor_window_hours:.0f} h, reference {s.monitor_reference_days:.0f} days before the cut\n")
    print(f"{'shift':>6} {'delay h':>8}  {'first alarm on':<28} {'category JS / limit':>20} {'price W / limit':>18}")
    for shift in (float(x) for x in args.shifts.split(",") if x):
        df = looks(args.events, shift, args.hours, s, stop_at_alarm=True)
        hit = df[df["detected"]]
        delay = int(hit["hour"].iloc[0]) if len(hit) else None
        row = hit.iloc[0] if len(hit) else df.iloc[-1]
        out["delay_hours"][str(shift)] = delay
        print(f"{shift:>6} {str(delay) if delay else f'>{args.hours}':>8}  {row['drifted'] or '-':<28} "
              f"{row['drift_category']:>9.3f} / {row['drift_category_limit']:.3f} "
              f"{row['drift_price']:>8.3f} / {row['drift_price_limit']:.3f}")
    if args.stationary_hours:
        df = looks(args.events, 0.0, args.stationary_hours, s, stop_at_alarm=False, popularity_drift=0.0, new_share=0.0)
        judged = df[df["enough"]]
        rate = float(judged["detected"].mean())
        out.update({"stationary_looks": len(judged), "false_alarms": int(judged["detected"].sum()),
                    "false_alarm_rate": round(rate, 4),
                    "stationary_max_category": round(float(judged["drift_category"].max()), 4),
                    "stationary_max_price": round(float(judged["drift_price"].max()), 4)})
        print(f"\nStationary events: {out['false_alarms']} alarms in {len(judged)} hourly looks = {rate:.2%} "
              f"(target <= 1%); largest category JS {out['stationary_max_category']}, price W "
              f"{out['stationary_max_price']}; median limit {judged['drift_category_limit'].median():.3f} and "
              f"{judged['drift_price_limit'].median():.3f}")
    if args.flow_events:
        f = flow_time(args.flow_events)
        out["flow"] = f
        print(f"\nMonitor flow on {f['events']:,} events (champion trained in {f['train_s']:.0f} s, set-up "
              f"{f['setup_s']:.0f} s): {', '.join(f'{x:.1f} s' for x in f['flow_s'])} (first: cold imports); "
              f"target <= 60 s. Window {f['window_events']:,} events, alarms {f['alarms'] or 'none'}")
        out["flow_seconds_max"] = max(f["flow_s"])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
