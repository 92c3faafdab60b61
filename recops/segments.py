"""User segments: K-Means over behavioral and demographic features, k chosen by silhouette.

The features of a user (``segment_features``): activity (events per active day, active days, in log
scale), conversion (view → purchase), price sensitivity, the category mix (their share of events
per category), and, where the users table knows them, the age group and the region (one-hot).
Standardised, then clustered by scikit-learn's ``KMeans`` for each k in the configured range; the k
with the best silhouette wins. The features step fits them (``recops.steps.segment_users``) and
keeps the fit in home; serving answers ``GET /segments`` and puts each user's segment in the profile.
"""

from __future__ import annotations

import itertools
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

AGE_GROUPS = (0, 25, 35, 45, 55, 65, 200)  # bin edges; labels like "25-34"
BEHAVIOR = ("p_events_per_active_day", "p_active_days_total", "p_view_to_purchase", "p_price_sensitivity")
LOGGED = ("p_events_per_active_day", "p_active_days_total")  # heavy-tailed counts: log1p before scaling
SILHOUETTE_SAMPLE = 3000  # users the silhouette is computed on (a fixed sample past this)


def age_group(age) -> str | None:
    """The age band of an age.

    Args:
        age: years, or None/NaN.

    Returns:
        A label such as ``"25-34"`` or ``"65+"``; None when unknown.
    """
    if age is None or pd.isna(age):
        return None
    for lo, hi in itertools.pairwise(AGE_GROUPS):
        if lo <= float(age) < hi:
            return f"{lo}+" if hi == AGE_GROUPS[-1] else f"{lo}-{hi - 1}"
    return None


def segment_features(profiles: pd.DataFrame, category_share: pd.DataFrame, users: pd.DataFrame | None,
                     columns: list[str] | None = None) -> pd.DataFrame:
    """The clustering's input, one row per user.

    Args:
        profiles: ``recops.profile.profile_features`` rows (user_id and the p_* columns).
        category_share: user_id -> share of their events per category (columns: categories).
        users: the users table (user_id, age, gender, region), or None.
        columns: the columns to produce (a fitted model's); None: every column the data gives.

    Returns:
        The features indexed by user_id, missing values 0.
    """
    x = profiles.set_index("user_id")[list(BEHAVIOR)].astype(float).copy()
    for c in LOGGED:
        x[c] = np.log1p(x[c].clip(lower=0))
    x = x.join(category_share.add_prefix("cat:"), how="left")
    if users is not None and not users.empty:
        u = users.set_index("user_id").reindex(x.index)
        demo = pd.concat([pd.get_dummies(u["age"].map(age_group), prefix="age", dtype=float),
                          pd.get_dummies(u["region"], prefix="region", dtype=float)], axis=1)
        x = x.join(demo)
    x = x.fillna(0.0)
    return x.reindex(columns=columns, fill_value=0.0) if columns is not None else x


def category_shares(events: pd.DataFrame, category: pd.Series) -> pd.DataFrame:
    """Each user's share of events per category.

    Args:
        events: events with user_id and item_id.
        category: item_id -> category.

    Returns:
        user_id -> one column per category, rows summing to 1 (users whose items have no category: none).
    """
    ev = events[events["user_id"].notna()]
    cats = ev["item_id"].map(category)
    known = cats.notna().to_numpy()
    pairs = pd.DataFrame({"user_id": ev["user_id"][known], "item_id": cats[known]})
    # groupby-size, not crosstab: crosstab counts through a Python function per cell (4 s per 1M events)
    counts = pairs.groupby(["user_id", "item_id"]).size().unstack(fill_value=0)
    return counts.div(counts.sum(axis=1), axis=0)


@dataclass
class Segments:
    """A fitted segmentation: the scaler and K-Means, the columns, the summary and every user's segment."""

    scaler: object
    kmeans: object
    columns: list[str]
    summary: list[dict]
    assignment: dict[str, int] = field(default_factory=dict)
    silhouettes: dict[int, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """How many segments."""
        return len(self.summary)

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        """The segment of each row of ``segment_features`` output.

        Args:
            x: features (any columns; reindexed to the fitted ones).

        Returns:
            One segment id per row.
        """
        x = x.reindex(columns=self.columns, fill_value=0.0)
        return self.kmeans.predict(self.scaler.transform(x.to_numpy(float)))

    def save(self, path: str | Path) -> None:
        """Pickle the fit (``load`` reads it back).

        Args:
            path: the file.
        """
        Path(path).write_bytes(pickle.dumps(self))

    @staticmethod
    def load(path: str | Path) -> Segments:
        """A fit saved by ``save``.

        Args:
            path: the file.

        Returns:
            The segments.
        """
        return pickle.loads(Path(path).read_bytes())  # our own file in home


def fit_segments(x: pd.DataFrame, profiles: pd.DataFrame, category_share: pd.DataFrame,
                 users: pd.DataFrame | None, k_range: tuple[int, int] = (2, 8), random_state: int = 42) -> Segments:
    """K-Means for each k in ``k_range`` (inclusive); the best silhouette wins.

    Args:
        x: ``segment_features`` output (index: user_id).
        profiles: the profile rows (for the summary's mean price sensitivity).
        category_share: user -> category shares (for the summary's top categories).
        users: the users table (for the dominant region and age group), or None.
        k_range: the smallest and largest k tried.
        random_state: the seed of K-Means and of the silhouette's sample.

    Returns:
        The fitted segments with a summary per segment: id, size, share, dominant region and age
        group (None when unknown), mean price sensitivity, top categories.

    Raises:
        ValueError: fewer users than the smallest k plus one.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    lo, hi = k_range
    if len(x) < lo + 1:
        raise ValueError(f"{len(x)} users: too few to segment into {lo} or more groups")
    scaler = StandardScaler().fit(x.to_numpy(float))
    z = scaler.transform(x.to_numpy(float))
    best, sil = None, {}
    for k in range(lo, min(hi, len(x) - 1) + 1):
        km = KMeans(n_clusters=k, n_init=3, random_state=random_state).fit(z)  # best of 3 starts (k-means++)
        if len(set(km.labels_)) < 2:
            continue
        sil[k] = float(silhouette_score(z, km.labels_, sample_size=min(SILHOUETTE_SAMPLE, len(z)),
                                        random_state=random_state))
        if best is None or sil[k] > sil[best[0]]:
            best = (k, km)
    if best is None:
        raise ValueError("every user has the same features: nothing to segment")
    k, km = best
    labels = pd.Series(km.labels_, index=x.index)
    return Segments(scaler, km, list(x.columns), _summary(labels, profiles, category_share, users),
                    {str(u): int(s) for u, s in labels.items()}, sil)


def _summary(labels: pd.Series, profiles: pd.DataFrame, category_share: pd.DataFrame,
             users: pd.DataFrame | None) -> list[dict]:
    sens = profiles.set_index("user_id")["p_price_sensitivity"]
    demo = users.set_index("user_id") if users is not None and not users.empty else None
    out = []
    for seg, members in labels.groupby(labels):
        ids = members.index
        cats = category_share.reindex(ids).mean().sort_values(ascending=False)
        row = {"segment": int(seg), "size": len(ids), "share": round(len(ids) / len(labels), 4),
               "dominant_region": None, "dominant_age_group": None,
               "mean_price_sensitivity": round(float(sens.reindex(ids).mean()), 4),
               "top_categories": [str(c) for c in cats.index[:3] if cats[c] > 0]}
        if demo is not None:
            d = demo.reindex(ids)
            region, ages = d["region"].dropna(), d["age"].map(age_group).dropna()
            row["dominant_region"] = str(region.mode().iloc[0]) if len(region) else None
            row["dominant_age_group"] = str(ages.mode().iloc[0]) if len(ages) else None
        out.append(row)
    return out


def summary_json(seg: Segments) -> str:
    """The summary as JSON (what ``recops segments --json`` and the MLflow run hold).

    Args:
        seg: the segments.

    Returns:
        Indented JSON: k, the silhouettes per k, the segments.
    """
    return json.dumps({"k": seg.k, "silhouette": seg.silhouettes, "segments": seg.summary}, indent=2)
