"""Next-item quality: recops' NextItem next to the classic session baselines, HR@20 and MRR@20.

Every prefix of a test session predicts the step after it (``recops.nextitem``: consecutive repeats
collapsed, so the target is the next *different* item). Baselines, fitted in the same run on the
same training events, all filling their lists with popularity and never proposing the newest item:
- popularity: the most touched items of the training data;
- co-occurrence: items that shared a session with the newest item (undirected, any distance);
- sequential rules (Ludewig & Jannach's SR): items that followed the newest item within 10 steps,
  weighted 1/lag;
- V-SKNN (Ludewig & Jannach 2018) and STAN (Garg et al. 2019), the two session-kNN methods that
  neural session models rarely beat (``recops.models.session_knn``, after session-rec's code).
recops is what training builds (``recops.nextitem.choose_next_item``, the code behind ``recops train``:
its settings chosen on the newest sessions of the training data); the two kNN methods have a small
grid each (``vsknn_grid``, ``stan_grid``), tuned on a validation slice carved from the training data
exactly as the test slice was carved from all data, by MRR@20. The test slice is touched once, by
each tuned model refitted on all training data.

Splits: synthetic sessions by session end (later sessions are test). YOOCHOOSE 100k (session-rec's
slice of the RecSys Challenge 2015 clicks) as given: fit on ``train_tr``, test on ``train_valid``
(the sessions that follow in time), the validation slice carved from ``train_tr`` by session end.
The OTTO sample (20 real sessions) twice: by session end as well, although that leaves only a
handful of predictions, and by event time (the rest of the sessions running at the cut is test,
their earlier steps history), which is OTTO's own protocol and leaves ~150 predictions. Both are far
too small for conclusions.

Prints a table (``s``: seconds to fit the tuned model and predict the test slice) and recops' ratio
to the best baseline, and ends with one JSON line of all figures. Run from the repository root:
`python bench/sessions.py` (`--quick`: smaller synthetic data and grids).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recops.generate import generate
from recops.importers import load_otto
from recops.models.sequential import NextItem, pair_matrix, rank_rows, touches
from recops.models.session_knn import STAN, VSKNN
from recops.nextitem import choose_next_item, evaluate_next_item, split_events, split_sessions
from recops.schema import normalize_events

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OTTO = DATA / "otto" / "train_sample.jsonl"
YOOCHOOSE = DATA / "yoochoose-100k"
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


def vsknn_grid(quick: bool) -> list[dict]:
    """V-SKNN settings to try: neighbours, sample, the current session's weighting, IDF."""
    ks = [100] if quick else [50, 100, 200]
    return [{"k": k, "sample": n, "weighting": w, "weighting_score": "div", "idf_weighting": idf}
            for k, n, w, idf in itertools.product(ks, [500, 1000], ["div", "quadratic"], [0.0, 1.0])]


def stan_grid(quick: bool) -> list[dict]:
    """STAN settings to try: neighbours and the three decays (lambda_2 in days, None: off)."""
    ks = [100] if quick else [100, 200]
    return [{"k": k, "sample": 1000, "lambda_1": l1, "lambda_2": l2, "lambda_3": l3}
            for k, l1, l2, l3 in itertools.product(ks, [0.25, 0.5, 1.0], [5.0, None], [0.5, 1.0, 2.0])]


TUNED = {"V-SKNN": (VSKNN, vsknn_grid), "STAN": (STAN, stan_grid)}


def tune(make: Callable, settings: list[dict], train: pd.DataFrame, split) -> tuple[dict, dict]:
    """The setting with the best validation MRR@20 (HR@20 breaks ties) and its figures."""
    fit, valid = split(train, TEST_SHARE)
    context = fit if split is split_events else None
    best = None
    for params in settings:
        res = evaluate_next_item(make(**params).fit(fit), valid, K, context=context)
        if best is None or (res["mrr"], res["hr"]) > (best[1]["mrr"], best[1]["hr"]):
            best = (params, res)
    return best


def run(train: pd.DataFrame, test: pd.DataFrame, split, quick: bool, items: pd.DataFrame | None = None) -> dict:
    """Figures of every method on one dataset; ``split`` carves the validation slice from ``train``;
    ``items``: the catalog, where the data has one (``recops train --items``)."""
    context = train if split is split_events else None
    out = {}
    for name, make in BASELINES.items():
        t0 = time.perf_counter()
        out[name] = {**evaluate_next_item(make().fit(train), test, K, context=context),
                     "s": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    model, chosen = choose_next_item(train, items)  # what recops train builds
    t1 = time.perf_counter()
    res = evaluate_next_item(model, test, K, context=context)
    out["recops"] = {**res, "s": round(time.perf_counter() - t0, 2),  # choosing (fits included) and predicting
                     "valid_mrr": chosen.get("valid_mrr"), "valid_n": chosen.get("valid_predictions"),
                     "tune_s": round(t1 - t0, 1), "params": chosen["params"], "ranker": chosen.get("ranker")}
    out["_latency_ms"] = latency_ms(model, test)
    for name, (make, settings) in TUNED.items():
        t0 = time.perf_counter()
        params, valid = tune(make, settings(quick), train, split)
        t1 = time.perf_counter()
        model = make(**params).fit(train)
        res = evaluate_next_item(model, test, K, context=context)
        out[name] = {**res, "s": round(time.perf_counter() - t1, 2), "valid_mrr": valid["mrr"],
                     "valid_n": valid["n"], "tune_s": round(t1 - t0, 1), "params": params}
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


def load_yoochoose(path: Path) -> pd.DataFrame:
    """session-rec's YOOCHOOSE files (tab-separated SessionId, ItemId, Time in unix seconds) as clicks
    of anonymous sessions in the recops event schema."""
    raw = pd.read_csv(path, sep="\t", dtype={"SessionId": str, "ItemId": str})
    return normalize_events(pd.DataFrame({
        "event_id": "yc-" + raw["SessionId"] + "-" + raw.index.astype(str),
        "item_id": raw["ItemId"], "event_type": "click", "session_id": raw["SessionId"],
        "timestamp": pd.to_datetime(raw["Time"], unit="s", utc=True),
    }))


def datasets(n_events: int, seed: int) -> dict[str, Callable[[], tuple]]:
    """label -> a loader of (train, test, the split that carves validation from train[, the catalog])."""
    def synthetic():
        data = generate(n_events=n_events, seed=seed, end="2026-11-01")
        return *split_sessions(data.events, TEST_SHARE), split_sessions, data.items

    runs = {f"synthetic {n_events // 1000}k / by session": synthetic}
    tr, valid = (YOOCHOOSE / f"yoochoose-clicks-100k_train_{part}.txt" for part in ("tr", "valid"))
    if tr.exists() and valid.exists():
        runs["YOOCHOOSE 100k / tr -> valid"] = lambda: (load_yoochoose(tr), load_yoochoose(valid), split_sessions)
    else:
        print(f"note: {YOOCHOOSE} is absent, YOOCHOOSE figures skipped")
    if OTTO.exists():
        otto = load_otto(OTTO).events
        runs["OTTO sample / by session"] = lambda: (*split_sessions(otto, TEST_SHARE), split_sessions)
        runs["OTTO sample / by event time"] = lambda: (*split_events(otto, TEST_SHARE), split_events)
    else:
        print(f"note: {OTTO} is absent, OTTO figures skipped")
    return runs


def report(label: str, res: dict) -> None:
    """The dataset's table rows, the tuned settings and recops' ratio to the best baseline."""
    for method, r in res.items():
        if not method.startswith("_"):
            tune_s = f"{r['tune_s']:8.1f}" if "tune_s" in r else f"{'':8}"
            print(f"{label:30} {method:17} {r['hr']:7.4f} {r['mrr']:7.4f} {r['n']:7d} {r['s']:7.2f} {tune_s}")
    r = res["recops"]
    ranked = r.get("ranker") or {}
    print(f"{'':30} recops: training chose {r['params'] or 'the defaults'}"
          + (f", re-ranked ({ranked['iterations']} trees, validation MRR {ranked['valid_mrr']:.4f})"
             if ranked.get("serves") else ", rules alone")
          + (f", rules' validation MRR {r['valid_mrr']:.4f} (n={r['valid_n']})" if r["valid_mrr"] is not None else ""))
    for method in TUNED:
        r = res[method]
        print(f"{'':30} {method} tuned {r['params']}, validation MRR {r['valid_mrr']:.4f} (n={r['valid_n']})")
    rec = res["recops"]
    best = max((m for m in res if m not in ("recops", "_latency_ms")), key=lambda m: res[m]["mrr"])
    ratio = (lambda a, b: f"{a / b:.3f}x" if b else "n/a")
    vs = "; ".join(f"/ {m}: MRR {ratio(rec['mrr'], res[m]['mrr'])}, HR {ratio(rec['hr'], res[m]['hr'])}"
                   for m in ("V-SKNN", "STAN") if m != best)
    print(f"{'':30} recops / best baseline ({best}): MRR {ratio(rec['mrr'], res[best]['mrr'])}, "
          f"HR {ratio(rec['hr'], res[best]['hr'])}{'; ' + vs if vs else ''}; "
          f"score_indices median {res['_latency_ms']} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller synthetic data and grids")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t0 = time.perf_counter()
    runs = datasets(40_000 if args.quick else 200_000, args.seed)
    figures = {}
    print(f"{'dataset / split':30} {'method':17} {'HR@20':>7} {'MRR@20':>7} {'n':>7} {'s':>7} {'tune s':>8}")
    for label, load in runs.items():
        train, test, split, *items = load()
        figures[label] = run(train, test, split, args.quick, *items)
        report(label, figures[label])
    figures["_total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(figures, default=float))


if __name__ == "__main__":
    main()
