"""Time each pipeline stage on 100k and 1M synthetic events (local profile, fresh home each).

Prints a table and ends with one JSON line of the figures. Usage: python bench/pipeline.py [--sizes 100000,1000000]
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

from recops import steps
from recops.config import load_settings

STAGES = ["ingest", "validate", "features", "segments", "train", "evaluate", "promote"]


def run(n: int, root: Path) -> dict:
    home = root / f"n{n}"
    shutil.rmtree(home, ignore_errors=True)
    s = load_settings(home=home)
    t0 = time.perf_counter()
    out = {}
    b = steps.ingest(s, n_events=n, seed=1, bad_share=0.01)
    out["ingest"] = b["seconds"]
    out["validate"] = steps.validate(s, b["batch_id"])["seconds"]
    out["features"] = steps.build_features(s)["seconds"]
    out["segments"] = steps.segment_users(s)["seconds"]  # the features flow's second step
    tr = steps.train(s)
    out["train"] = tr["seconds"]
    out["evaluate"] = steps.evaluate(s)["seconds"]
    out["promote"] = steps.promote(s)["seconds"]
    out["total"] = round(time.perf_counter() - t0, 2)
    out["events"] = b["events"]
    out["ndcg_at_10"] = tr["metrics"]["ndcg_at_10"]
    out["baseline_ndcg_at_10"] = tr["metrics"]["baseline_ndcg_at_10"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="recops-bench-"))
    results = {}
    for n in (int(x) for x in args.sizes.split(",")):
        results[str(n)] = r = run(n, root)
        print(f"\n{n:,} synthetic events ({r['events']:,} rows incl. malformed)")
        for st in STAGES:
            print(f"  {st:<9} {r[st]:8.2f} s")
        print(f"  {'total':<9} {r['total']:8.2f} s   (target for 1M: <= 300 s)")
        print(f"  NDCG@10 {r['ndcg_at_10']:.4f} vs popularity {r['baseline_ndcg_at_10']:.4f} "
              f"(ratio {r['ndcg_at_10'] / max(r['baseline_ndcg_at_10'], 1e-9):.2f})")
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"bench": "pipeline", "results": results}))


if __name__ == "__main__":
    main()
