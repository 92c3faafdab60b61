"""Offline evaluation of next-item prediction: every prefix of a session predicts the item after it.

Sessions are first reduced to their steps (``touches``: one step per run of the same item, so a
view then a cart of one item is one step). Step ``t`` of a session means "given its first ``t``
steps, predict step ``t + 1``"; ``prefix_predictions`` also answers step ``t = len``, the prediction
after the whole session, which is what an app shows while the session goes on. The split is by
session end time, so a model is always scored on sessions that happened after the ones it saw.

A model is either an object with ``score_batch(histories, k) -> (positions in item_ids_, scores)``
(``NextItem``, fast) or a callable ``f(histories, k) -> ranked item ids per history``; histories are
lists of item ids, newest first.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pandas as pd

from recops.models.nextitem_ranker import RankedNextItem
from recops.models.sequential import NextItem, session_key, touches

BATCH = 5_000  # prefixes ranked at once: bounds memory, big enough to stay vectorized


def split_sessions(events: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) events: the ``test_share`` of sessions that ended last are test.

    Args:
        events: events with item_id, timestamp and session_id (no session_id: the user's day, see
            ``session_key``).
        test_share: the share of sessions held out (the train count is rounded).

    Returns:
        The train and the test events; each session lies wholly in one of them.
    """
    group = session_key(events)
    end = events["timestamp"].groupby(group.to_numpy()).max().sort_values(kind="stable")
    train_groups = end.index[: round(len(end) * (1.0 - test_share))]
    is_train = group.isin(train_groups).to_numpy()
    return events[is_train], events[~is_train]


def split_events(events: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) events: the last ``test_share`` of events by time are test. Sessions running
    at the cut continue in test; pass train as ``context`` to ``evaluate_next_item`` so that
    their earlier steps are history (OTTO's protocol: predict the rest of ongoing sessions).

    Args:
        events: events with a timestamp.
        test_share: the share of events held out; the cut is that quantile of the timestamps.

    Returns:
        The events before the cut and those at or after it.
    """
    is_train = (events["timestamp"] < events["timestamp"].quantile(1.0 - test_share)).to_numpy()
    return events[is_train], events[~is_train]


def prefix_predictions(model, sessions: pd.DataFrame, k: int = 20, final: bool = True,
                       history_len: int = 50) -> pd.DataFrame:
    """Top-``k`` after every prefix of every session: columns session_id, step, item_id, rank
    (1 = best). Step t ranks candidates for step t + 1 given steps 1..t; step ``len`` is the
    prediction after the whole session (what an app shows next), which ``final=False`` leaves out.
    Histories hold at most the ``history_len`` newest steps (what an app would send).

    Args:
        model: a ``score_batch`` model or a ranking callable (see the module docstring).
        sessions: the events of the sessions to predict.
        k: how many items per prefix.
        final: also predict after the whole session.
        history_len: the most steps a history holds.

    Returns:
        One row per proposed item, ``rank`` 1..k (fewer rows when the model proposes fewer items).
    """
    steps = touches(sessions)
    group, step, histories = _prefixes(steps, final, history_len)
    row, rank, items = _rank(model, histories, k)
    return pd.DataFrame({"session_id": group[row], "step": step[row], "item_id": items, "rank": rank})


def evaluate_next_item(model_or_callable, test_sessions: pd.DataFrame, k: int = 20,
                       context: pd.DataFrame | None = None, history_len: int = 50) -> dict[str, float]:
    """HR@k and MRR@k over all prefixes of the test sessions (the target of step t is step t + 1),
    and ``n``, the number of predictions they average over. ``context``: earlier events of the
    same sessions, history only (never a target).

    Args:
        model_or_callable: a ``score_batch`` model or a ranking callable (see the module docstring).
        test_sessions: the events of the sessions to score.
        k: the cutoff.
        context: earlier events, e.g. the train part of ``split_events``; those of other sessions are
            ignored. None: none.
        history_len: the most steps a history holds.

    Returns:
        ``{"hr": ..., "mrr": ..., "n": ...}``; hr and mrr are 0 when there is no prediction.
    """
    frame, n_context = test_sessions, None
    if context is not None:
        context = context[session_key(context).isin(session_key(test_sessions)).to_numpy()]
        frame = pd.concat([context, test_sessions], ignore_index=True)
        n_context = touches(context)["group"].value_counts()
    steps = touches(frame)
    group, step, histories = _prefixes(steps, False, history_len)
    start = _session_starts(steps["group"].to_numpy())
    first = np.repeat(start, np.diff(np.r_[start, len(steps)]) - 1)  # each prefix's session start
    target = steps["item_id"].to_numpy()[first + step]
    if n_context is not None:  # only targets after the context count
        scored = step >= n_context.reindex(group).fillna(0).to_numpy()
        target, histories = target[scored], [h for h, s in zip(histories, scored) if s]
    row, rank, items = _rank(model_or_callable, histories, k)
    hit = items == target[row]
    n = len(histories)
    return {"hr": float(hit.sum() / max(n, 1)), "mrr": float((1.0 / rank[hit]).sum() / max(n, 1)), "n": n}


def _session_starts(group: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else np.zeros(0, dtype=np.int64)


def _prefixes(steps: pd.DataFrame, final: bool, history_len: int) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """(session, step, history newest first) of every prefix, sessions in ``steps`` order."""
    g, items = steps["group"].to_numpy(), steps["item_id"].to_numpy()
    bounds = np.r_[_session_starts(g), len(g)]
    groups, step_no, histories = [], [], []
    for lo, hi in pairwise(bounds):
        seq = items[lo:hi].tolist()
        last = hi - lo if final else hi - lo - 1
        for t in range(1, last + 1):
            histories.append(seq[t - 1::-1][:history_len])
        groups.append(np.full(last, g[lo], dtype=object))
        step_no.append(np.arange(1, last + 1))
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt))
    return cat(groups, object), cat(step_no, np.int64), histories


def _rank(model, histories: list[list[str]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prefix row, rank 1..k, item id) of every proposed item, in batches."""
    rows, ranks, items = [], [], []
    for lo in range(0, len(histories), BATCH):
        part = histories[lo: lo + BATCH]
        if hasattr(model, "score_batch"):
            idx, _ = model.score_batch(part, k)
            r, c = np.nonzero(idx >= 0)
            found = model.item_ids_[idx[r, c]]
        else:
            ranked = _as_lists(model, part, k)
            r = np.repeat(np.arange(len(part)), [len(x) for x in ranked])
            c = np.concatenate([np.arange(len(x)) for x in ranked]) if ranked else np.zeros(0, dtype=np.int64)
            found = np.asarray([i for x in ranked for i in x], dtype=object)
        rows.append(r + lo); ranks.append(c + 1); items.append(found)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
    return np.concatenate(rows), np.concatenate(ranks), np.concatenate(items)


def _as_lists(f: Callable, histories: list[list[str]], k: int) -> list[list[str]]:
    """The callable's ranked ids per history, at most ``k``, padding (None) dropped."""
    return [[i for i in list(x)[:k] if i is not None] for x in f(histories, k)]


# what training tries for the next-item model: reverse evidence and the bonus for coming back
NEXT_ITEM_GRID: tuple[dict, ...] = tuple(
    {"backward_weight": b, "repeat_weight": r} for b in (0.0, 0.1, 0.3, 1.0) for r in (0.3, 1.0))
TUNE_SESSIONS = 2_000  # validation sessions at most (the newest): ~10k predictions, ~20 s on 1M events


def choose_next_item(events: pd.DataFrame, items: pd.DataFrame | None = None, grid: tuple[dict, ...] = NEXT_ITEM_GRID,
                     k: int = 20, num_threads: int = 0) -> tuple[NextItem, dict]:
    """The next-item model with its settings chosen from the data: each of ``grid`` is fitted on
    the sessions that ended first and scored (MRR@k, next different item) on the newest fifth, at
    most ``TUNE_SESSIONS`` of them. The best rules are then re-ranked (``RankedNextItem``, its ranker
    trained on the first sessions alone) and scored on the same newest sessions; the re-ranked model
    serves when it scores higher, else the rules alone. The winner's sources are refitted on every event.

    Args:
        events: the training events (with session ids, or users' days as sessions).
        items: the catalog (category and price feed the re-ranker); None: events alone.
        grid: the settings tried (``NextItem`` keyword arguments).
        k: the cutoff of the validation MRR.
        num_threads: the re-ranker's LightGBM threads in training (0: every core).

    Returns:
        The fitted model, and a report: ``params`` (chosen), ``valid_mrr``, ``valid_hr``,
        ``valid_predictions``, ``tried`` (params -> MRR) and ``ranker`` (the re-ranked model's
        validation figures and whether it serves); the defaults without tuning when the data holds too
        few sessions to validate on.
    """
    fit, valid = split_sessions(events, 0.2)
    groups = session_key(valid)
    keep = pd.unique(groups)[-TUNE_SESSIONS:]
    valid = valid[groups.isin(keep).to_numpy()]
    best, tried = None, {}
    if not fit.empty and not valid.empty:
        model = NextItem()
        parts = model.rule_parts(fit)  # the steps are counted once; each setting only re-weighs them
        for params in grid:
            for name, v in params.items():
                setattr(model, name, v)
            res = evaluate_next_item(model.with_rules(parts), valid, k)
            tried[str(params)] = round(res["mrr"], 5)
            if res["n"] and (best is None or (res["mrr"], res["hr"]) > (best[1]["mrr"], best[1]["hr"])):
                best = (params, res)
    if best is None:
        return NextItem().fit(events), {"params": {}, "reason": "too few sessions to validate on: defaults"}
    params, res = best
    ranked = RankedNextItem(num_threads=num_threads, **params).fit(fit, items)
    ranked_res = evaluate_next_item(ranked, valid, k) if ranked.ranker_ is not None else None
    use = ranked_res is not None and ranked_res["mrr"] > res["mrr"]
    report = {"params": params, "valid_mrr": round(res["mrr"], 5), "valid_hr": round(res["hr"], 5),
              "valid_predictions": res["n"], "tried": tried,
              "ranker": {"serves": use, "valid_mrr": round(ranked_res["mrr"], 5) if ranked_res else None,
                         "valid_hr": round(ranked_res["hr"], 5) if ranked_res else None,
                         "iterations": ranked.ranker_.current_iteration() if ranked.ranker_ is not None else 0}}
    if use:
        return ranked.fit_sources(events, items), report
    return NextItem(**params).fit(events), report
