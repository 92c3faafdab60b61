import pandas as pd
import pytest

from recops.config import load_settings
from recops.generate import generate
from recops.schema import normalize_events
from recops.validation import run_suite, validate_events, write_report

NOW = pd.Timestamp("2026-11-02", tz="UTC")


def _validate(ev):
    s = load_settings()
    return validate_events(ev, list(s.event_types), s.max_value, s.max_event_age_days, s.future_tolerance_seconds,
                           now=NOW)


def test_every_planted_bad_row_is_caught_with_a_reason():
    ev = normalize_events(generate(8_000, end="2026-11-01", bad_share=0.03, seed=5).events)
    out = _validate(ev)
    planted = set(ev.index[ev["event_id"].str.startswith("bad-")])
    assert planted and set(out.bad_index) == planted
    assert out.reasons.str.startswith("expect_").all()


def test_reasons_name_the_expectation_and_column():
    ev = normalize_events(pd.DataFrame({
        "event_id": ["a", "b", "c", "d", "e"],
        "user_id": ["u", None, "u", "u", "u"],
        "session_id": ["s", None, "s", "s", "s"],
        "item_id": ["i", "i", "i", "i", "i"],
        "event_type": ["view", "view", "teleport", "view", "purchase"],
        "timestamp": [NOW - pd.Timedelta(hours=1)] * 3 + [NOW + pd.Timedelta(days=30), NOW - pd.Timedelta(hours=1)],
        "value": [None, None, None, None, -1.0],
    }))
    out = _validate(ev)
    r = out.reasons.to_dict()
    assert list(out.bad_index) == [1, 2, 3, 4]
    assert r[1] == "expect_column_values_to_not_be_null(actor_id)"
    assert r[2] == "expect_column_values_to_be_in_set(event_type)"
    assert r[3] == "expect_column_values_to_be_between(timestamp)"
    assert r[4] == "expect_column_values_to_be_between(value)"


def test_custom_event_types_are_allowed():
    ev = normalize_events(pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event_type": ["share"],
                                        "timestamp": [NOW - pd.Timedelta(hours=1)]}))
    s = load_settings(custom_event_types={"share": 2.0})
    out = validate_events(ev, list(s.event_types), s.max_value, s.max_event_age_days, s.future_tolerance_seconds,
                          now=NOW)
    assert out.success


def test_feature_suite_fails_on_impossible_rates(tmp_path):
    df = pd.DataFrame({"user_id": ["a", "b"], "event_timestamp": [NOW, NOW], "u_events_30d": [1, 2],
                       "u_view_30d": [1, 1], "u_purchase_30d": [0, 0], "u_view_to_click_30d": [0.5, 1.5],
                       "u_view_to_cart_30d": [0, 0],
                       "u_cart_to_purchase_30d": [0, 0], "u_top_category_share": [1, 1], "u_avg_price_paid": [0, 0]})
    out = run_suite(df, "user_features")
    assert list(out.bad_index) == [1]
    report = write_report([out], tmp_path / "r.html", "t")
    assert "FAIL" in report.read_text()


def test_broken_suite_file_is_an_error(monkeypatch, tmp_path):
    import recops.validation as v

    (tmp_path / "broken.json").write_text(
        '{"name": "broken", "expectations": [{"type": "expect_nothing_at_all", "kwargs": {}}]}')
    monkeypatch.setattr(v, "_suite_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match="not valid"):
        v.load_suite("broken")
