"""Great Expectations validation of raw events and feature tables.

Suites are versioned JSON files in ``expectations/``. Events that fail an expectation are returned
with the names of the expectations they failed, so the caller can quarantine them with a reason.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")



def _suite_dir() -> Path:
    from recops import expectations  # the installed location of expectations/

    return Path(expectations.__file__).resolve().parent


@dataclass
class ValidationOutcome:
    suite: str
    rows: int
    bad_index: pd.Index
    reasons: pd.Series  # index -> "; "-joined expectation names, for bad rows only
    per_expectation: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    report_path: Path | None = None

    @property
    def bad_share(self) -> float:
        """The share of rows that failed at least one expectation (0.0 without rows)."""
        return len(self.bad_index) / self.rows if self.rows else 0.0

    @property
    def success(self) -> bool:
        """True when no row failed an expectation."""
        return len(self.bad_index) == 0


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


_batch_defs: dict[str, object] = {}


def _batch_definition(name: str):
    if name not in _batch_defs:
        ctx = _context()
        try:
            ds = ctx.data_sources.get("recops")
        except KeyError:  # the first suite run in this process
            ds = ctx.data_sources.add_pandas(name="recops")
        _batch_defs[name] = ds.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("whole")
    return _batch_defs[name]


def load_suite(name: str):
    """The GX expectation suite of ``expectations/{name}.json``.

    Args:
        name: the suite's file name without ``.json``, e.g. ``"events"``.

    Returns:
        The ``ExpectationSuite``.

    Raises:
        ValueError: an expectation of the file is no valid GX expectation type (GX would drop it silently).
    """
    from great_expectations.core import ExpectationSuite

    raw = json.loads((_suite_dir() / f"{name}.json").read_text())
    suite = ExpectationSuite(name=raw["name"], expectations=raw["expectations"], notes=raw.get("notes"))
    if len(suite.expectations) != len(raw["expectations"]):  # GX drops unknown types with a log line only
        raise ValueError(f"expectations/{name}.json: some expectations are not valid GX expectation types")
    return suite


def _label(cfg) -> str:
    col = cfg.kwargs.get("column")
    return f"{cfg.type}({col})" if col else cfg.type


def run_suite(df: pd.DataFrame, name: str, parameters: dict | None = None) -> ValidationOutcome:
    """Validate ``df`` against ``expectations/{name}.json``; failing row labels come from df.index.

    Args:
        df: the frame to validate.
        name: the suite, see load_suite.
        parameters: the values of the suite's ``$PARAMETER`` references; None: none.

    Returns:
        The outcome: failing row labels in ``df`` order with the expectations each failed, and one
        summary per expectation (sorted by label), with up to 5 example values.

    Raises:
        RuntimeError: an expectation could not be evaluated (so it neither passes nor hides as a data failure).
    """
    t0 = time.perf_counter()
    suite = load_suite(name)
    batch = _batch_definition(name).get_batch(batch_parameters={"dataframe": df})
    res = batch.validate(suite, result_format={"result_format": "COMPLETE"}, expectation_parameters=parameters or {})
    reasons: dict[object, list[str]] = {}
    summary = []
    for r in res.results:
        cfg = r.expectation_config
        info = r.exception_info or {}
        errored = info.get("raised_exception", False) or any(
            isinstance(v, dict) and v.get("raised_exception") for v in info.values()
        )
        if errored:  # a broken expectation must not look like (or hide) a data failure
            msgs = ([v.get("exception_message") for v in info.values() if isinstance(v, dict)]
                    or [info.get("exception_message")])
            raise RuntimeError(f"expectation {_label(cfg)} could not be evaluated: {msgs}")
        failed = r.result.get("unexpected_index_list") or []
        for idx in failed:
            reasons.setdefault(idx, []).append(_label(cfg))
        summary.append({"expectation": _label(cfg), "success": bool(r.success), "unexpected": len(failed),
                        "examples": [str(v) for v in (r.result.get("partial_unexpected_list") or [])[:5]]})
    bad = pd.Index(sorted(reasons, key=lambda i: df.index.get_loc(i)))
    return ValidationOutcome(
        suite=name, rows=len(df), bad_index=bad,
        reasons=pd.Series({i: "; ".join(reasons[i]) for i in bad}, dtype=object),
        per_expectation=sorted(summary, key=lambda s: s["expectation"]),
        seconds=time.perf_counter() - t0,
    )


def validate_events(df: pd.DataFrame, event_types: list[str], max_value: float, max_age_days: float,
                    future_tolerance_seconds: float, now: pd.Timestamp | None = None) -> ValidationOutcome:
    """Validate normalized events. ``actor_id`` (user_id, else session_id) must be present.

    Args:
        df: normalized events (``recops.schema.normalize_events``); failing rows are named by its index.
        event_types: the allowed event types.
        max_value: the largest allowed ``value`` (the smallest is 0).
        max_age_days: events older than this many days before ``now`` fail.
        future_tolerance_seconds: events more than this many seconds after ``now`` fail.
        now: the reference time (UTC); None: the current time.

    Returns:
        The outcome of the ``events`` suite.
    """
    now = now or pd.Timestamp.now(tz="UTC")
    frame = df.assign(actor_id=df["user_id"].where(df["user_id"].notna(), df["session_id"]))
    params = {
        "event_types": sorted(event_types),
        "min_timestamp": now - pd.Timedelta(days=max_age_days),
        "max_timestamp": now + pd.Timedelta(seconds=future_tolerance_seconds),
        "max_value": max_value,
    }
    return run_suite(frame, "events", params)


def write_report(outcomes: list[ValidationOutcome], path: Path, title: str) -> Path:
    """A self-contained HTML summary of one or more suite runs.

    Args:
        outcomes: the suite runs, one section each.
        path: the HTML file to write; missing parent directories are created.
        title: the page's title and heading.

    Returns:
        ``path``.
    """
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             ("<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
              ".ok{color:#080}.bad{color:#b00}</style></head><body>"), f"<h1>{html.escape(title)}</h1>"]
    for o in outcomes:
        parts.append(f"<h2>suite {html.escape(o.suite)}: {o.rows} rows, {len(o.bad_index)} failing "
                     f"({o.bad_share:.2%}), {o.seconds:.2f}s</h2><table><tr><th>expectation</th><th>result</th>"
                     "<th>failing rows</th><th>examples</th></tr>")
        for s in o.per_expectation:
            cls = "ok" if s["success"] else "bad"
            parts.append(f"<tr><td>{html.escape(s['expectation'])}</td><td class='{cls}'>"
                         f"{'pass' if s['success'] else 'FAIL'}</td><td>{s['unexpected']}</td>"
                         f"<td>{html.escape(', '.join(s['examples']))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
