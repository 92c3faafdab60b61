"""User segments: K-Means recovers planted groups; the features flow fits them; /segments, the
profile and `recops segments` agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recops.segments import Segments, age_group, fit_segments, segment_features


def _planted(n_per: int = 120, seed: int = 0):
    """Three groups of users: bargain hunters in the south buying toys, heavy northern book buyers,
    occasional older western gardeners; each with noise."""
    rng = np.random.default_rng(seed)
    groups = [("south", 29, "toys", 3.0, 0.85), ("north", 40, "books", 12.0, 0.5), ("west", 59, "garden", 1.5, 0.2)]
    prof, shares, users, truth = [], [], [], []
    for g, (region, age, cat, act, sens) in enumerate(groups):
        for i in range(n_per):
            u = f"g{g}-{i}"
            prof.append({"user_id": u, "p_events_per_active_day": act * rng.lognormal(0, 0.2),
                         "p_active_days_total": rng.poisson(10 + 5 * g), "p_view_to_purchase": 0.05 * (g + 1),
                         "p_price_sensitivity": float(np.clip(sens + rng.normal(0, 0.05), 0, 1))})
            mix = rng.dirichlet(np.full(3, 0.5)) * 0.3
            shares.append({"user_id": u, "toys": mix[0], "books": mix[1], "garden": mix[2]} | {cat: 0.7 + mix[g]})
            users.append({"user_id": u, "age": age + rng.integers(-3, 4), "gender": "F", "region": region})
            truth.append(g)
    sh = pd.DataFrame(shares).set_index("user_id")
    return pd.DataFrame(prof), sh.div(sh.sum(axis=1), axis=0), pd.DataFrame(users), np.array(truth)


def test_kmeans_recovers_planted_groups_and_silhouette_picks_their_number():
    from sklearn.metrics import adjusted_rand_score

    prof, shares, users, truth = _planted()
    x = segment_features(prof, shares, users)
    seg = fit_segments(x, prof, shares, users, (2, 8))
    labels = np.array([seg.assignment[u] for u in prof["user_id"]])
    assert seg.k == 3 and adjusted_rand_score(truth, labels) > 0.95
    by_region = {r["dominant_region"]: r for r in seg.summary}
    assert by_region["south"]["top_categories"][0] == "toys" and by_region["south"]["mean_price_sensitivity"] > 0.7
    assert by_region["north"]["dominant_age_group"] == "35-44" and by_region["west"]["dominant_age_group"] == "55-64"
    assert sum(r["size"] for r in seg.summary) == len(prof)
    # a new user like the southern bargain hunters lands in their segment
    new = segment_features(pd.DataFrame([{"user_id": "n", "p_events_per_active_day": 3.0, "p_active_days_total": 9,
                                          "p_view_to_purchase": 0.05, "p_price_sensitivity": 0.9}]),
                           pd.DataFrame({"toys": [1.0]}, index=["n"]),
                           pd.DataFrame([{"user_id": "n", "age": 22, "gender": "M", "region": "south"}]), seg.columns)
    assert seg.predict(new)[0] == by_region["south"]["segment"]
    assert age_group(24) == "0-24" and age_group(70) == "65+" and age_group(None) is None


@pytest.mark.e2e
def test_the_features_flow_fits_segments_that_serving_and_the_cli_report(trained, client):
    settings, result = trained
    fitted = result["features"]["segments"]
    assert fitted["k"] >= 2 and fitted["users"] > 100 and Path(fitted["path"]).exists()
    body = client.get("/segments").json()
    assert body["k"] == fitted["k"] and sum(s["size"] for s in body["segments"]) == fitted["users"]
    seg = Segments.load(settings.segments_path)
    for user in list(seg.assignment)[:5]:  # the profile names the segment the fit put the user in
        prof = client.get(f"/users/{user}/profile").json()
        assert prof["segment"]["segment"] == seg.assignment[user]
        assert prof["segment"] in body["segments"]
    recops = Path(sys.executable).with_name("recops")
    out = subprocess.run([str(recops), "--home", str(settings.home), "segments"], capture_output=True, text=True,
                         check=True).stdout
    assert f"{fitted['k']} segments" in out and all(f"{s['size']:>6}" in out for s in body["segments"])


def test_serving_places_a_user_the_fit_never_saw_in_the_nearest_segment(tmp_path):
    from recops.config import load_settings
    from recops.serving.state import SegmentView

    prof, shares, users, _ = _planted()
    seg = fit_segments(segment_features(prof, shares, users), prof, shares, users)
    settings = load_settings(home=tmp_path)
    view = SegmentView(settings)
    assert view.segments is None  # nothing fitted yet: no segment, no error
    seg.save(settings.segments_path)
    view.refresh()
    south = next(r for r in seg.summary if r["dominant_region"] == "south")
    features = {"p_events_per_active_day": 3.0, "p_active_days_total": 9, "p_view_to_purchase": 0.05,
                "p_price_sensitivity": 0.9, "p_peak_hour": None}
    events = pd.DataFrame({"item_id": ["t1", "t2", "b1"]})
    got = view.of("newbie", features, events, {"t1": "toys", "t2": "toys", "b1": "books"},
                  {"user_id": "newbie", "age": 28, "gender": "M", "region": "south"})
    assert got == south
    assert view.of("g1-3", features, events, {}, None)["segment"] == seg.assignment["g1-3"]  # the fit's own
