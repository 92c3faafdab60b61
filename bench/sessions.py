"""Next-item quality: recops' NextItem next to the classic session baselines, HR@20 and MRR@20.

Every prefix of a test session predicts the step after it (``recops.nextitem``). Baselines, fitted
in the same run on the same training events, all filling their lists with popularity:
- popularity: the most touched items of the training data;
- co-occurrence: items that shared a session with the newest item (undirected, any distance);
- sequential rules (Ludewig & Jannach's SR): items that followed the newest item within 10 steps,
  weighted 1/lag.
recops' few weights (position decay, reverse evidence, repeats and their bonus: ``grid``) are tuned
on a validation slice carved from the training data exactly as the test slice was carved from all
data, by MRR@20; the test slice is touched once, by the tuned model refitted on all training data.

Splits: synthetic sessions by session end (later sessions are test). The OTTO sample (20 real
sessions) twice: by session end as well, although that leaves only a handful of predictions, and
by event time (the rest of the sessions running at the cut is test, their earlier steps history),
which is OTTO's own protocol and leaves ~150 predictions. Both are far too small for conclusions.

Prints a table and ends with one JSON line of all figures. Run from the repository root:
`python bench/sessions.py` (`--quick`: smaller synthetic data and grid).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.generate import generate
from recops.importers import load_otto
from recops.models.sequential import NextItem, pair_matrix, rank_rows, touches
from recops.nextitem import evaluate_next_item, split_events, split_sessions

OTTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "otto" / "train_sample.jsonl"
K = 20
TEST_SHARE = 0.2


class LastItem:
    """The newest item's row of an item x item pair matrix (``pairs``: the keyword arguments of
    ``pair_matrix``; none: an empty matrix, so popularity alone), lists filled by popularity. The
    newest item is never proposed."""

    def __init__(self, **pairs):
        self.pairs = pairs

    def fit(self, events: pd.DataFrame) -> LastItem:
        t = touches(events)
        self.item_ids_ = np.asarray(pd.unique(t["item_id"]), dtype=object)
        self.index_ = pd.Index(self.item_ids_)
        code, m = self.index_.get_indexer(t["item_id"]), len(self.item_ids_)
        self.popular_ = np.argsort(-np.bincount(code, minlength=m), kind="stable")
        self.popularity_rank_ = np.argsort(self.popular_)
        self.matrix_ = (pair_matrix(t["group"].to_numpy(), code, m, **self.pairs) if self.pairs
                        else sp.csr_matrix((m, m)))
        return self

    def score_batch(self, histories: list[list[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        last = self.index_.get_indexer([h[0] for h in histories])
        rows = np.flatnonzero(last >= 0)
        n, m = len(histories), len(self.item_ids_)
        scores = sp.csr_matrix((np.ones(len(rows)), (rows, last[rows])), shape=(n, m)) @ self.matrix_
        return rank_rows(scores.tocsr(), k, self.popular_, self.popularity_rank_, (rows, last[rows]))


BASELINES = {
    "popularity": lambda: LastItem(),
    "co-occurrence": lambda: LastItem(window=None, directional=False, by_lag=False),
    "sequential rules": lambda: LastItem(window=10, directional=True, by_lag=True),
}


def grid(quick: bool) -> list[dict]:
    """NextItem settings to try: position decay, reverse evidence, repeats and their bonus."""
    decays = [0.25] if quick else [0.1, 0.25, 0.5]
    backward = [0.0, 0.1, 0.3]
    repeats = [{"allow_repeats": False}, {"allow_repeats": True, "repeat_weight": 0.3},
               {"allow_repeats": True, "repeat_weight": 1.0}]
    return [{"position_decay": d, "backward_weight": b, **r}
            for d, b, r in itertools.product(decays, backward, repeats)]


def tune(train: pd.DataFrame, split, quick: bool) -> tuple[dict, dict]:
    """The grid setting with the best validation MRR@20 (HR@20 breaks ties) and its figures."""
    fit, valid = split(train, TEST_SHARE)
    context = fit if split is split_events else None
    best = None
    for params in grid(quick):
        res = evaluate_next_item(NextItem(**params).fit(fit), valid, K, context=context)
        if best is None or (res["mrr"], res["hr"]) > (best[1]["mrr"], best[1]["hr"]):
            best = (params, res)
    return best


def run(events: pd.DataFrame, split, quick: bool) -> dict:
    """Figures of every method on one dataset and split."""
    train, test = split(events, TEST_SHARE)
    context = train if split is split_events else None
    out = {}
    for name, make in BASELINES.items():
        out[name] = evaluate_next_item(make().fit(train), test, K, context=context)
    t0 = time.perf_counter()
    params, valid = tune(train, split, quick)
    model = NextItem(**params).fit(train)
    out["recops"] = {**evaluate_next_item(model, test, K, context=context), "valid_mrr": valid["mrr"],
                     "valid_n": valid["n"], "tune_s": round(time.perf_counter() - t0, 1), "params": params}
    out["_latency_ms"] = latency_ms(model, test)
    return out


def latency_ms(model: NextItem, test: pd.DataFrame, n: int = 300) -> float:
    """Median time of one ``score_indices`` call (k=20) on recent test histories, as serving calls it."""
    t = touches(test)
    histories = [g["item_id"].tolist()[::-1][:10] for _, g in itertools.islice(t.groupby("group", sort=False), n)]
    times = []
    for h in histories:
        t0 = time.perf_counter()
        model.score_indices(h, K)
        times.append(time.perf_counter() - t0)
    return round(1e3 * float(np.median(times)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller synthetic data and grid")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t0 = time.perf_counter()
    n_events = 40_000 if args.quick else 200_000
    runs = {f"synthetic {n_events // 1000}k / by session":
            (lambda: generate(n_events=n_events, seed=args.seed, end="2026-11-01").events, split_sessions)}
    if OTTO.exists():
        otto = load_otto(OTTO).events
        runs["OTTO sample / by session"] = (lambda: otto, split_sessions)
        runs["OTTO sample / by event time"] = (lambda: otto, split_events)
    else:
        print(f"note: {OTTO} is absent, OTTO figures skipped")
    figures = {}
    print(f"{'dataset / split':34} {'method':18} {'HR@20':>7} {'MRR@20':>7} {'n':>7}")
    for label, (load, split) in runs.items():
        res = run(load(), split, args.quick)
        figures[label] = res
        for method, r in res.items():
            if not method.startswith("_"):
                print(f"{label:34} {method:18} {r['hr']:7.4f} {r['mrr']:7.4f} {r['n']:7d}")
        best = max((r for m, r in res.items() if m not in ("recops", "_latency_ms")), key=lambda r: r["mrr"])
        rec = res["recops"]
        print(f"{'':34} recops tuned {rec['params']}, validation MRR {rec['valid_mrr']:.4f} (n={rec['valid_n']}), "
              f"vs best baseline MRR {rec['mrr'] - best['mrr']:+.4f}, HR {rec['hr'] - best['hr']:+.4f}; "
              f"score_indices median {res['_latency_ms']} ms")
    figures["_total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(figures, default=float))


if __name__ == "__main__":
    main()
