"""The evaluation harness: temporal splits, full-catalog ranking metrics, beyond-accuracy metrics,
segments and bootstrap confidence intervals, for any recommender.

Splits:
- ``global_split``: one time cut; test = what users touched after it that they had not touched before.
- ``per_user_split``: for users with at least ``min_items`` distinct items, the last ``frac`` of their
  distinct items (by first touch) is held out; their events from that moment on leave the training
  data. Other users' events stay.

Recommendations are ranked over the full catalog (no sampled negatives) and exclude each user's
training items, for every method alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recops.models.metrics import bootstrap_ci, per_user_metrics
from recops.vocabulary import HISTORY_LEN

SEGMENTS = (("new", 0, 5), ("light", 6, 20), ("heavy", 21, 10**9))  # by distinct training items


@dataclass
class EvalSplit:
    name: str
    train: pd.DataFrame
    test: dict[str, set[str]]
    cut: dict[str, pd.Timestamp] = field(default_factory=dict)  # per user (per-user split) or one for all
    # items never to recommend, per user; None: every training item (the research protocol)
    exclude: dict[str, set[str]] | None = None
    # graded relevance (1-5) of test items, per user; None: every test item counts 1
    grades: dict[str, dict[str, int]] | None = None

    @property
    def users(self) -> list[str]:
        """The test users, sorted."""
        return sorted(self.test)

    def seen(self) -> dict[str, set[str]]:
        """Each test user's distinct training items.

        Returns:
            user_id -> the items of the user's training events; test users without any are absent.
        """
        tr = self.train[self.train["user_id"].isin(set(self.test))]
        return tr.groupby("user_id")["item_id"].agg(set).to_dict()

    def sample(self, n: int, seed: int = 0) -> EvalSplit:
        """The same split for at most ``n`` of its test users (a fixed random sample).

        Args:
            n: the most test users kept.
            seed: the seed of the sample.

        Returns:
            This split when it has at most ``n`` test users, else a new one with the sampled users'
            test, cut, exclude and grades (``train`` is shared, not filtered).
        """
        if len(self.test) <= n:
            return self
        return self.subset(set(np.random.default_rng(seed).choice(self.users, n, replace=False)))

    def subset(self, keep: set[str]) -> EvalSplit:
        """The same split for the test users in ``keep`` (``train`` is shared, not filtered).

        Args:
            keep: the test users to keep.

        Returns:
            A new split with those users' test, cut, exclude and grades.
        """
        pick = lambda d: None if d is None else {u: v for u, v in d.items() if u in keep}
        return EvalSplit(self.name, self.train, pick(self.test), pick(self.cut), pick(self.exclude), pick(self.grades))

    def excluded(self) -> dict[str, set[str]]:
        """Each test user's items not to recommend: ``exclude``, else every training item (``seen``).

        Returns:
            user_id -> the items to leave out of the user's ranking.
        """
        return self.seen() if self.exclude is None else self.exclude

    def histories(self, n: int = HISTORY_LEN) -> dict[str, list[str]]:
        """Each test user's recent distinct training items, newest first.

        Args:
            n: the most items per user.

        Returns:
            user_id -> item ids by their last training touch, newest first (ties by item_id); test users
            without training events are absent.
        """
        tr = self.train[self.train["user_id"].isin(set(self.test))]
        last = tr.groupby(["user_id", "item_id"], sort=False)["timestamp"].max().reset_index()
        last = last.sort_values(["user_id", "timestamp", "item_id"], ascending=[True, False, True], kind="stable")
        return last.groupby("user_id", sort=False).head(n).groupby("user_id", sort=False)["item_id"].agg(list).to_dict()


HOLDOUT_SHARE = 0.1  # a holdout chosen from the data holds at least this share of the identified events
HOLDOUT_WEEK = pd.Timedelta(days=7)  # ... and at least the last week, while that leaves most events to train on


def holdout_cut(timestamps: pd.Series, share: float = HOLDOUT_SHARE) -> pd.Timestamp:
    """Where to cut when the holdout is chosen from the data: the earlier of the last week and the
    time after which ``share`` of the events happened, so that a steady shop keeps its week and
    data where users come and go (a few events in the last week) still tests a tenth of them. A
    week that would leave less than half the events to train on is not taken: a six-day click log
    holds out its last tenth. Floored to midnight when the data spans two weeks or more, to the
    hour below that.

    Args:
        timestamps: the identified events' times (UTC).
        share: the least share of events the holdout holds.

    Returns:
        The cut, strictly after the first event (unfloored when flooring would reach it).
    """
    span = timestamps.max() - timestamps.min()
    q = timestamps.quantile(1.0 - share).floor("D" if span >= 2 * HOLDOUT_WEEK else "h")
    week = (timestamps.max() - HOLDOUT_WEEK).floor("D")
    cut = min(q, week) if (timestamps < week).mean() >= 0.5 else q
    return cut if cut > timestamps.min() else timestamps.quantile(1.0 - share)


def global_split(events: pd.DataFrame, holdout_days: float | None = 7.0, cut: pd.Timestamp | None = None,
                 exclude_types: tuple[str, ...] | None = None, weights: dict[str, float] | None = None) -> EvalSplit:
    """One time cut (midnight). Test: what each user touched from the cut on.

    Research protocol (``exclude_types=None``): only items the user had not touched before count,
    and every training item is excluded from the ranking. Serving protocol (``exclude_types``
    given): only items the user did one of those types to are excluded (business rules), so
    re-engaging with an item viewed before counts, as it does in a shop; with ``weights`` the test
    items are graded by their implicit rating. Anonymous events before the cut stay in train.

    Args:
        events: normalized events; only those with a user_id are tested.
        holdout_days: the cut is this many days before the newest identified event, floored to midnight;
            None or 0: chosen from the data (``holdout_cut``: the last week or the last tenth of the
            events, whichever is longer).
        cut: the cut itself (UTC); None: from ``holdout_days``.
        exclude_types: None: the research protocol; else the event types whose items are excluded (the
            serving protocol).
        weights: event type -> weight, to grade the test items (serving protocol only); None: binary.

    Returns:
        The split ``"global"``: train is every event before the cut, test users are those with a test item.

    Raises:
        ValueError: no event has a user_id, the cut is not after the first identified event, or no user
            has a test item.
    """
    ev = events[events["user_id"].notna()]
    if ev.empty:
        raise ValueError("no event carries a user_id: a temporal split needs identified users")
    if cut is None:
        cut = (holdout_cut(ev["timestamp"]) if not holdout_days
               else (ev["timestamp"].max() - pd.Timedelta(days=holdout_days)).floor("D"))
    if cut <= ev["timestamp"].min():
        what = f"a {holdout_days}-day holdout" if holdout_days else "any holdout"
        raise ValueError(f"not enough history for {what}: events span {ev['timestamp'].min()} .. "
                         f"{ev['timestamp'].max()}" + ("; lower holdout_days (0: chosen from the data)"
                                                        if holdout_days else ""))
    train = events[events["timestamp"] < cut]
    after = ev[ev["timestamp"] >= cut]
    tr = train[train["user_id"].notna()]
    excl, grades = None, None
    if exclude_types is None:
        seen = tr.groupby("user_id")["item_id"].agg(set).to_dict()
        test = {u: set(g) - seen.get(u, set()) for u, g in after.groupby("user_id")["item_id"]}
        test = {u: t for u, t in test.items() if t}
    else:
        test, excl, grades = _serving_test(tr, after, exclude_types, weights)
    if not test:
        raise ValueError(f"no user touched a new item after the cut {cut}: nothing to evaluate on")
    return EvalSplit("global", train, test, {u: cut for u in test}, exclude=excl, grades=grades)


def _serving_test(train: pd.DataFrame, after: pd.DataFrame, exclude_types: tuple[str, ...],
                  weights: dict[str, float] | None) -> tuple[dict, dict, dict | None]:
    """The serving protocol's test, shared by both splits: each user's items in ``after`` except
    those their ``train`` events of ``exclude_types`` rule out (coming back to an item viewed
    before counts), graded by ``weights``; users left without a test item are dropped.

    Args:
        train: the identified training events.
        after: the held-out events.
        exclude_types: the event types whose items are excluded (the business rules).
        weights: event type -> weight, to grade the test items; None: binary.

    Returns:
        ``(test, exclude, grades)`` per test user; ``grades`` None without ``weights``.
    """
    excl = train[train["event_type"].isin(list(exclude_types))].groupby("user_id")["item_id"].agg(set).to_dict()
    test = {u: set(g) - excl.get(u, set()) for u, g in after.groupby("user_id")["item_id"]}
    grades = None
    if weights is not None:
        grades = _grades(after, test, weights)
        test = {u: set(grades.get(u, ())) for u in test}
    test = {u: t for u, t in test.items() if t}
    return test, {u: excl.get(u, set()) for u in test}, grades


def _grades(after: pd.DataFrame, test: dict[str, set[str]], weights: dict[str, float]) -> dict[str, dict[str, int]]:
    """Graded relevance (1-5, the implicit rating of the held-out events, undecayed) of each test item.

    Args:
        after: the held-out events.
        test: user -> the test items to grade.
        weights: event type -> weight.

    Returns:
        user -> item -> grade, for the test items whose rating is positive.
    """
    from recops.ratings import implicit_ratings

    r = implicit_ratings(after, weights, half_life_days=1e9, as_of=after["timestamp"].max())
    r = r[r["rating"] > 0]
    grades: dict[str, dict[str, int]] = {}
    for u, i, g in zip(r["user_id"], r["item_id"], np.ceil(r["rating"]).clip(1, 5).astype(int)):
        if i in test.get(u, ()):
            grades.setdefault(u, {})[i] = int(g)
    return grades


def per_user_split(events: pd.DataFrame, frac: float = 0.2, min_items: int = 5,
                   exclude_types: tuple[str, ...] | None = None, weights: dict[str, float] | None = None) -> EvalSplit:
    """Hold out the last ``frac`` of each user's distinct items (by first touch); see the module docstring.

    Research protocol (``exclude_types=None``): the test is the held-out items, and every training
    item is excluded from the ranking. Serving protocol (``exclude_types`` given): the test is every
    item the user touched from their cut on except those their training events of ``exclude_types``
    rule out (coming back to an item viewed before counts, as in a shop), graded by ``weights``.

    Args:
        events: normalized events; anonymous ones (no user_id) stay in train.
        frac: the share of a user's distinct items held out, rounded up.
        min_items: users with fewer distinct items are not tested (all their events stay in train).
        exclude_types: None: the research protocol; else the event types whose items are excluded.
        weights: event type -> weight, to grade the test items (serving protocol only); None: binary.

    Returns:
        The split ``"per_user"``: ``cut`` per test user is the first touch of their first held-out item,
        and train drops their events from then on.
    """
    ev = events[events["user_id"].notna()]
    first = ev.groupby(["user_id", "item_id"], sort=False)["timestamp"].min().reset_index()
    first = first.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    n_items = first.groupby("user_id")["item_id"].transform("size")
    rank = first.groupby("user_id").cumcount()
    n_test = np.ceil(n_items * frac).astype(int)
    eligible = n_items >= min_items
    held = first[eligible & (rank >= n_items - n_test)]
    cut = held.groupby("user_id")["timestamp"].min()
    user_cut = events["user_id"].map(cut)
    before = user_cut.isna() | (events["timestamp"] < user_cut)
    train = events[before]
    if exclude_types is None:
        return EvalSplit("per_user", train, held.groupby("user_id")["item_id"].agg(set).to_dict(), cut.to_dict())
    test, excl, grades = _serving_test(train[train["user_id"].isin(cut.index)], events[~before], exclude_types,
                                       weights)
    return EvalSplit("per_user", train, test, {u: cut[u] for u in test}, exclude=excl, grades=grades)


def novelty(recs: dict[str, list[str]], popularity: pd.Series, n_users: int) -> float:
    """Mean self-information -log2(p(i)) of recommended items, p = share of training users.

    Args:
        recs: user_id -> recommended item ids.
        popularity: item_id -> number of distinct training users (absent or 0: counts as 1).
        n_users: the number of training users.

    Returns:
        The mean in bits over every recommended item of every list; 0.0 when there is none.
    """
    vals = [-math.log2(max(popularity.get(i, 0), 1) / max(n_users, 1)) for items in recs.values() for i in items]
    return float(np.mean(vals)) if vals else 0.0


def intra_list_diversity(recs: dict[str, list[str]], category: pd.Series) -> float:
    """Mean share of item pairs within a list that are of different categories.

    Args:
        recs: user_id -> recommended item ids.
        category: item_id -> category; items it lacks share the category ``"?"``.

    Returns:
        The mean over lists of at least two items; 0.0 when there is none.
    """
    out = []
    for items in recs.values():
        cats = [category.get(i, "?") for i in items]
        n = len(cats)
        if n < 2:
            continue
        same = sum(c1 == c2 for a, c1 in enumerate(cats) for c2 in cats[a + 1:])
        out.append(1.0 - same / (n * (n - 1) / 2))
    return float(np.mean(out)) if out else 0.0


def evaluate(recs: dict[str, list[str]], split: EvalSplit, items: pd.DataFrame | None = None,
             ks: tuple[int, ...] = (5, 10, 20), seed: int = 0) -> dict:
    """Accuracy @K, coverage, novelty, diversity, per-segment NDCG@10 and bootstrap CIs.

    Args:
        recs: user_id -> ranked item ids, best first; users without a list count as misses.
        split: the test items per user; its training data gives the catalog, popularity and segments.
        items: items with item_id and category, for diversity; None or no category: no diversity.
        ks: the cutoffs K.
        seed: the seed of the bootstrap.

    Returns:
        ``split``, ``users`` and, per K, ``recall``, ``ndcg``, ``map``, ``hitrate``, ``mrr``, ``coverage``
        (share of train and test items), ``novelty`` and ``diversity`` as ``{metric}@{K}``; with K = 10
        among ``ks`` also ``ndcg@10_ci`` and ``recall@10_ci`` (95% bootstrap [lo, hi]) and, per segment
        of SEGMENTS, ``ndcg@10_{segment}`` (None when empty) and ``users_{segment}``.
    """
    catalog = pd.unique(pd.concat([split.train["item_id"], pd.Series([i for t in split.test.values() for i in t])]))
    popularity = split.train.groupby("item_id")["user_id"].nunique()
    n_users = split.train["user_id"].nunique()
    category = (items.set_index("item_id")["category"] if items is not None and "category" in items
                else pd.Series(dtype=object))
    out: dict = {"split": split.name, "users": len(split.test)}
    per_user10 = None
    for k in ks:
        pu = per_user_metrics(recs, split.test, k)
        top = {u: recs.get(u, [])[:k] for u in split.test}
        for name, v in pu.items():
            out[f"{name}@{k}"] = float(v.mean()) if v.size else 0.0
        out[f"coverage@{k}"] = len({i for r in top.values() for i in r}) / max(len(catalog), 1)
        out[f"novelty@{k}"] = novelty(top, popularity, n_users)
        if len(category):
            out[f"diversity@{k}"] = intra_list_diversity(top, category)
        if k == 10:
            per_user10 = pu
    if per_user10 is not None:
        for name in ("ndcg", "recall"):
            out[f"{name}@10_ci"] = list(bootstrap_ci(per_user10[name], seed=seed))
        n_train = split.train[split.train["user_id"].isin(set(split.test))].groupby("user_id")["item_id"].nunique()
        users = [u for u in split.test if split.test[u]]
        sizes = n_train.reindex(users).fillna(0).to_numpy()
        for seg, lo, hi in SEGMENTS:
            mask = (sizes >= lo) & (sizes <= hi)
            out[f"ndcg@10_{seg}"] = float(per_user10["ndcg"][mask].mean()) if mask.any() else None
            out[f"users_{seg}"] = int(mask.sum())
    return out


def recommend_all(recommend: Callable[[str, int, list[str], set[str]], list[str]], split: EvalSplit,
                  k: int) -> dict[str, list[str]]:
    """Top-k for every test user, excluding their training items.

    Args:
        recommend: ``f(user_id, k, history newest first, items to exclude) -> ranked item ids``.
        split: its test users, their histories (``EvalSplit.histories``) and exclusions (``excluded``).
        k: how many items per user.

    Returns:
        user_id -> what ``recommend`` returned, for every test user.
    """
    hist, seen = split.histories(), split.excluded()
    return {u: recommend(u, k, hist.get(u, []), seen.get(u, set())) for u in split.users}


def generator_recommender(gen) -> Callable[[str, int, list[str], set[str]], list[str]]:
    """Adapt a fitted generator (``recops.models.base.Recommender``) to ``recommend_all``.

    Args:
        gen: the fitted generator; its ``recommend`` returns (item_id, score) pairs.

    Returns:
        The ``recommend`` callable of ``recommend_all`` (scores dropped).
    """
    return lambda u, k, hist, seen: [i for i, _ in gen.recommend(u, k, history=hist, exclude=seen)]
