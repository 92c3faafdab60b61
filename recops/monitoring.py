"""Watching the champion: data drift against its training reference, online quality, new-event volume.

The **training reference** is built by training (``build_reference``) from the events it learned on
and saved with the registered version (an MLflow artifact folder, ``REFERENCE_DIR``): a sample of
the events of the last ``monitor_reference_days`` before the training cut (further back when those
hold fewer than ``monitor_sample`` events), described the way the
monitor describes a window (``describe``), the items' popularity then, the users and items training
knew, and the cut.

``watch`` compares the last ``monitor_window_hours`` with it:

- **drift**, per column, with Evidently's scores: the item's category and the event type
  (Jensen-Shannon distance), the item's price (normed Wasserstein distance). A column drifts past
  ``drift_threshold`` or, where larger, past what chance alone reaches on a window of that size
  (``null_scores``: events come in sessions, so a small window moves more than its size suggests).
  Also the popularity rank correlation (Spearman) of the reference's top items, the share of events on
  items training never saw and the share of active users training never saw, each with its threshold;
- **online quality** of the served lists in the last hour (impressions and their attributed
  outcomes): CTR, conversion, catalog coverage, the fallback share and the share of lists for people
  nobody knew, per experiment variant when one runs;
- **performance**: the champion's CTR and conversion per user over the window against its own
  baseline (the ``performance_baseline_days`` before), a drop only when the lift's interval lies
  below zero at ``performance_alpha`` and the drop is at least ``performance_min_drop``;
- **volume**: events after the training cut.

Every windowed figure is computed on the same window lengths on both sides, so a daily cycle cancels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recops.config import Settings
from recops.schema import with_actors
from recops.store import to_epoch

REFERENCE_DIR = "monitor_reference"
# the drift columns and Evidently's score for each: Jensen-Shannon distance, normed Wasserstein distance
TESTS = {"category": "jensenshannon", "event_type": "jensenshannon", "price": "wasserstein"}
NULL_REPLICATES = 100  # windows drawn from the reference to learn how far chance alone moves each score


@dataclass
class Reference:
    """The champion's training reference."""

    cut: float  # the newest training event (epoch seconds)
    frame: pd.DataFrame  # ``describe``'s columns, a sample of the reference period's events
    popularity: pd.Series  # item -> events in the reference period
    known_users: set[str]
    known_items: set[str]
    n_events: int  # events training learned on

    def save(self, folder: Path) -> Path:
        """Write the reference to ``folder`` (parquet and JSON), for ``load``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.frame.to_parquet(folder / "frame.parquet", index=False)
        self.popularity.rename("events").rename_axis("item_id").reset_index().to_parquet(folder / "popularity.parquet")
        pd.DataFrame({"user_id": sorted(self.known_users)}).to_parquet(folder / "users.parquet", index=False)
        pd.DataFrame({"item_id": sorted(self.known_items)}).to_parquet(folder / "items.parquet", index=False)
        (folder / "meta.json").write_text(json.dumps({"cut": self.cut, "n_events": self.n_events,
                                                      "rows": len(self.frame)}))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Reference:
        """Read what ``save`` wrote."""
        meta = json.loads((folder / "meta.json").read_text())
        pop = pd.read_parquet(folder / "popularity.parquet")
        return cls(meta["cut"], pd.read_parquet(folder / "frame.parquet"),
                   pop.set_index("item_id")["events"], set(pd.read_parquet(folder / "users.parquet")["user_id"]),
                   set(pd.read_parquet(folder / "items.parquet")["item_id"]), meta["n_events"])


def describe(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The columns drift is measured on, one row per event: the item's category and price and the
    event type, with its unit: who acted (user, else session) on which day (the bootstrap of
    ``null_scores`` draws whole units, as a day's window holds whole days of its people).

    Args:
        events: normalized events.
        items: the catalog (``category``, ``price``).

    Returns:
        ``unit`` and the ``TESTS`` columns.
    """
    cat = items.set_index("item_id")
    col = lambda c: events["item_id"].map(cat[c]) if c in cat else pd.Series(np.nan, index=events.index)
    actor = events["user_id"].fillna(events["session_id"]).fillna("?").astype(str)
    day = (to_epoch(events["timestamp"]).to_numpy() // 86400).astype(np.int64).astype(str)
    return pd.DataFrame({
        "unit": (actor + "@" + day).to_numpy(),
        "category": col("category").fillna("unknown").astype(str).to_numpy(),
        "event_type": events["event_type"].astype(str).to_numpy(),
        "price": pd.to_numeric(col("price"), errors="coerce").astype(float).to_numpy(),
    })


def sample_units(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Whole units (someone's day) drawn at random (without replacement) until about ``n`` rows: a
    sample that keeps each unit's events together, as a window does.

    Args:
        frame: ``describe``'s rows.
        n: about how many rows.
        rng: the random generator.

    Returns:
        The rows of the drawn units (``frame`` itself when it has ``n`` rows or fewer).
    """
    if len(frame) <= n:
        return frame
    sizes = frame["unit"].value_counts()
    order = sizes.index[rng.permutation(len(sizes))]
    keep = order[: int(np.searchsorted(np.cumsum(sizes[order].to_numpy()), n)) + 1]
    return frame[frame["unit"].isin(set(keep))]


def build_reference(events: pd.DataFrame, items: pd.DataFrame, settings: Settings) -> Reference:
    """The training reference of a model trained on ``events`` (see the module's docstring).

    Args:
        events: the training events (normalized).
        items: the catalog.
        settings: ``monitor_reference_days``, ``monitor_sample``, ``random_state``.

    Returns:
        The reference.
    """
    events = with_actors(events)
    t = to_epoch(events["timestamp"]).to_numpy()
    cut = float(t.max())
    # the last days before the cut, or further back until they hold a full sample (a quiet week is no reference)
    since = min(cut - settings.monitor_reference_days * 86400.0,
                float(np.sort(t)[-min(len(t), settings.monitor_sample)]))
    recent = events[t >= since]
    frame = sample_units(describe(recent, items), settings.monitor_sample,
                          np.random.default_rng(settings.random_state))
    return Reference(cut, frame.reset_index(drop=True),
                     recent["item_id"].value_counts(), set(events["user_id"].dropna()), set(events["item_id"]),
                     len(events))


def drift(ref: Reference, window: pd.DataFrame, items: pd.DataFrame, settings: Settings,
          report_path: Path | None = None) -> dict:
    """The window's drift from the reference (see the module's docstring).

    Args:
        ref: the champion's training reference.
        window: the window's events.
        items: the catalog.
        settings: the thresholds and sample size.
        report_path: where to write Evidently's HTML report; None: none.

    Returns:
        ``events`` (in the window), ``enough`` (as many as ``monitor_min_events``), per column
        ``drift_<column>`` and the limit it was held to (``drift_<column>_limit``),
        ``popularity_rank_correlation``, ``new_item_share``, ``new_user_share``,
        ``drifted`` (the names past their thresholds) and ``detected``.
    """
    out: dict = {"events": len(window), "enough": len(window) >= settings.monitor_min_events}
    if window.empty:
        return {**out, "drifted": [], "detected": False}
    users = window["user_id"].dropna()
    out["new_item_share"] = float((~window["item_id"].isin(ref.known_items)).mean())
    out["new_user_share"] = float((~pd.Series(users.unique()).isin(ref.known_users)).mean()) if len(users) else 0.0
    top = ref.popularity.head(settings.monitor_top_items)
    now_counts = window["item_id"].value_counts().reindex(top.index, fill_value=0)
    if len(top) > 2 and now_counts.nunique() > 1:
        from scipy.stats import spearmanr

        out["popularity_rank_correlation"] = float(spearmanr(top.to_numpy(), now_counts.to_numpy()).statistic)
    if out["enough"]:
        rng = np.random.default_rng(settings.random_state)
        cur = sample_units(describe(window, items), settings.monitor_sample, rng)
        cols = [c for c in TESTS if ref.frame[c].notna().any() and cur[c].notna().any()]
        null = null_scores(ref.frame, len(cur), cols, rng)
        for c in cols:
            score = _score(c, ref.frame[c], cur[c])
            limit = max(settings.drift_threshold, float(null[c].mean() + settings.drift_null_z * null[c].std()))
            out[f"drift_{c}"], out[f"drift_{c}_limit"] = score, limit
        if report_path is not None:
            _report(ref.frame[cols], cur[cols], {c: out[f"drift_{c}_limit"] for c in cols}, report_path)
    limits = {f"drift_{c}": (out[f"drift_{c}_limit"], 1) for c in TESTS if f"drift_{c}" in out}
    limits.update({"new_item_share": (settings.drift_max_new_item_share, 1),
                   "new_user_share": (settings.drift_max_new_user_share, 1),
                   "popularity_rank_correlation": (settings.drift_min_rank_correlation, -1)})
    out["drifted"] = sorted(k for k, (lim, sign) in limits.items()
                            if out["enough"] and k in out and sign * (out[k] - lim) > 0)
    out["detected"] = bool(out["drifted"])
    return out


def _score(column: str, ref: pd.Series, cur: pd.Series) -> float:
    """Evidently's drift score of one column (its registered stat test, ``TESTS[column]``)."""
    from evidently.legacy.calculations.stattests import jensenshannon_stat_test, wasserstein_stat_test
    from evidently.legacy.core import ColumnType

    numeric = TESTS[column] == "wasserstein"
    test = wasserstein_stat_test if numeric else jensenshannon_stat_test
    kind = ColumnType.Numerical if numeric else ColumnType.Categorical
    return float(test(ref.dropna(), cur.dropna(), kind, None).drift_score)


def null_scores(ref: pd.DataFrame, n: int, columns: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """How far each score moves by chance for a window of ``n`` events: half the reference's units,
    drawn whole (``sample_units``) to ``n`` events ``NULL_REPLICATES`` times, each scored against the
    other half. Events come in bursts (a session keeps to a category), so chance moves a window more
    than ``n`` independent draws would; a fixed threshold either misses drift on big windows or raises
    false alarms on small ones.

    Args:
        ref: the reference's rows.
        n: the window's rows.
        columns: the columns to score.
        rng: the random generator.

    Returns:
        Column -> the replicates' scores.
    """
    units = ref["unit"].unique()
    half = set(units[rng.permutation(len(units))[: len(units) // 2]])
    mine = ref["unit"].isin(half)
    pool, other = ref[mine], ref[~mine]
    reps = [sample_units(pool, n, rng) for _ in range(NULL_REPLICATES)]
    return {c: np.array([_score(c, other[c], r[c]) for r in reps]) for c in columns}


def _report(ref: pd.DataFrame, cur: pd.DataFrame, limits: dict[str, float], path: Path) -> None:
    """Evidently's HTML report of the same scores, each against the limit the verdict used."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    cols = list(ref.columns)
    definition = DataDefinition(categorical_columns=[c for c in cols if TESTS[c] != "wasserstein"],
                                numerical_columns=[c for c in cols if TESTS[c] == "wasserstein"])
    snap = Report([ValueDrift(column=c, method=TESTS[c], threshold=limits[c]) for c in cols]).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition))
    path.parent.mkdir(parents=True, exist_ok=True)
    snap.save_html(str(path))


def online_quality(engine, since: float, until: float, n_items: int, settings: Settings) -> dict:
    """The served lists of [since, until): CTR, conversion, catalog coverage, fallback and unknown shares.

    Args:
        engine: the event store's engine (impressions and events).
        since: the period's start (epoch seconds).
        until: its end.
        n_items: the catalog's size (coverage's denominator).
        settings: ``attribution_window_hours``.

    Returns:
        ``lists``, ``ctr``, ``conversion``, ``coverage``, ``fallback_share``, ``unknown_share`` and, under
        an experiment, the same per variant (``ctr_<variant>``, ...); rates are None without lists.
    """
    from recops.impressions import attributed_outcomes, load_impressions, per_unit
    from recops.vocabulary import CART_ACTIVITY, CONVERSION, ENGAGE

    imps, shown = load_impressions(engine, since, until)
    out: dict = {"lists": len(imps)}
    if imps.empty:
        return {**out, "ctr": None, "conversion": None, "coverage": 0.0, "fallback_share": None,
                "unknown_share": None}
    window = settings.attribution_window_hours * 3600.0
    attributed = attributed_outcomes(engine, imps, shown, since, until + window, window)
    units = per_unit(imps, attributed, ENGAGE, CART_ACTIVITY, CONVERSION)
    served = units[~units["fallback"].astype(bool)]
    lists = served["impressions"].sum()
    out.update({"ctr": float(served["clicks"].sum() / lists) if lists else None,
                "conversion": float(served["conversions"].sum() / lists) if lists else None,
                "coverage": float(shown["item_id"].nunique() / max(n_items, 1)),
                "fallback_share": float(imps["fallback"].astype(bool).mean()),
                "unknown_share": float(imps["strategy"].isin(["trending", "demographic"]).mean())})
    if imps["variant"].notna().any():
        for variant, part in served.groupby(served["variant"]):
            n = part["impressions"].sum()
            out[f"ctr_{variant}"] = float(part["clicks"].sum() / n) if n else None
            out[f"conversion_{variant}"] = float(part["conversions"].sum() / n) if n else None
    return out


def performance(engine, version: str, end: float, settings: Settings) -> dict:
    """Whether the champion's online CTR or conversion per user fell below its own baseline.

    The window (the last ``monitor_window_hours`` before ``end``) is compared with the
    ``performance_baseline_days`` before it, on lists the version served itself (not the fallback):
    a ratio of per-user sums each side, a delta-method interval on the relative lift.

    Args:
        engine: the event store's engine.
        version: the champion's version (its lists only).
        end: the window's end (epoch seconds).
        settings: the window, the baseline's length, ``performance_alpha`` and ``performance_min_drop``.

    Returns:
        Per metric (``ctr``, ``conversion``): ``<metric>_lift``, ``<metric>_ci``; ``dropped`` (the metrics
        that fell significantly) and ``detected``.
    """
    from recops.experiments.stats import ratio_estimate, relative_lift
    from recops.impressions import attributed_outcomes, load_impressions, per_unit
    from recops.vocabulary import CART_ACTIVITY, CONVERSION, ENGAGE

    w = settings.monitor_window_hours * 3600.0
    start = end - w - settings.performance_baseline_days * 86400.0
    imps, shown = load_impressions(engine, start, end)
    imps = imps[(imps["model_version"] == version) & ~imps["fallback"].astype(bool)]
    out: dict = {"dropped": [], "detected": False}
    if imps.empty:
        return out
    attributed = attributed_outcomes(engine, imps, shown, start, end, settings.attribution_window_hours * 3600.0)
    recent = imps["served_at"].astype(float) >= end - w
    sides = [per_unit(part, attributed, ENGAGE, CART_ACTIVITY, CONVERSION) for part in (imps[~recent], imps[recent])]
    if min(len(s) for s in sides) < settings.performance_min_users:
        return {**out, "users": [len(s) for s in sides]}
    for metric, col in (("ctr", "clicks"), ("conversion", "conversions")):
        base, now = (ratio_estimate(s[col].to_numpy(float), s["impressions"].to_numpy(float)) for s in sides)
        lift = relative_lift(base, now, alpha=settings.performance_alpha)
        out[f"{metric}_baseline"], out[f"{metric}_now"] = base.value, now.value
        out[f"{metric}_lift"], out[f"{metric}_ci"] = lift.lift, [lift.low, lift.high]
        if np.isfinite(lift.high) and lift.high < 0 and lift.lift <= -settings.performance_min_drop:
            out["dropped"].append(metric)
    out["users"] = [len(s) for s in sides]
    out["detected"] = bool(out["dropped"])
    return out


def watch(settings: Settings, ref: Reference, version: str, at: float | None = None,
          report_path: Path | None = None) -> dict:
    """One look: drift, online quality, performance and volume as of ``at``.

    Args:
        settings: the backends, windows and thresholds.
        ref: the champion's training reference.
        version: the champion's version.
        at: the end of the look (epoch seconds); None: now.
        report_path: where Evidently's HTML drift report goes; None: none.

    Returns:
        ``at``, ``version``, ``drift``, ``quality`` (the last hour), ``performance``, ``new_events``
        (after the training cut), ``volume_reached`` and ``alarms`` (``drift``, ``volume``, ``performance``).
    """
    from recops.store import EventStore

    at = time.time() if at is None else at
    t0 = time.perf_counter()
    store = EventStore(settings.event_store_uri)
    try:
        window = store.events(since=at - settings.monitor_window_hours * 3600.0, until=at)
        items = store.items()
        new_events = store.count_events(after=ref.cut, until=at)
        out = {"at": at, "version": version,
               "drift": drift(ref, window, items, settings, report_path),
               "quality": online_quality(store.engine, at - 3600.0, at, len(items), settings),
               "performance": performance(store.engine, version, at, settings),
               "new_events": new_events, "volume_reached": new_events >= settings.retrain_min_new_events}
    finally:
        store.dispose()
    out["alarms"] = [a for a, hit in (("drift", out["drift"]["detected"]), ("volume", out["volume_reached"]),
                                      ("performance", out["performance"]["detected"])) if hit]
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
