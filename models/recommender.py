"""The served recommender: multi-source candidates re-ranked by LightGBM LambdaRank, with reasons.

``feature_matrix`` is the one place where ranker features are assembled; training and serving both
call it, so the ranker never sees features built two different ways.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from recops.features import ITEM_MODEL_FEATURES, USER_MODEL_FEATURES, derive_values
from recops.models.base import Recommender
from recops.models.explain import describe
from recops.models.intent import intent_rules, intent_scores
from recops.models.popularity import Popularity
from recops.models.rules import BusinessRules, apply_rules

SESSION_LIFT = 2.0  # the most the live session's next-item signal lifts a score, in spreads of the user's list
CROSS_FEATURES = ["x_category_affinity", "x_is_top_category", "x_price_ratio", "x_in_history"]
# item features that come from the feature store (the rest, price and age, come from the catalog)
STORED_ITEM_FEATURES = [c for c in ITEM_MODEL_FEATURES if c not in ("i_price", "i_age_days")]
assert ITEM_MODEL_FEATURES[: len(STORED_ITEM_FEATURES)] == STORED_ITEM_FEATURES


def stored_item_matrix(feats: pd.DataFrame) -> np.ndarray:
    """The stored item features of each row of ``feats`` (missing values: 0), in model order."""
    return np.column_stack([
        pd.to_numeric(feats[c], errors="coerce").fillna(0.0).to_numpy() if c in feats else np.zeros(len(feats))
        for c in STORED_ITEM_FEATURES
    ])


@dataclass
class ItemTable:
    """Item features as a dense matrix with an id index: cached in process for serving."""

    ids: np.ndarray
    matrix: np.ndarray  # len(ids) x len(ITEM_MODEL_FEATURES); i_age_days filled at request time
    category: np.ndarray
    created_ts: np.ndarray
    in_stock: np.ndarray
    title: np.ndarray
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.index:
            self.index = {i: n for n, i in enumerate(self.ids)}
        self._pindex = pd.Index(self.ids)

    def positions(self, ids) -> np.ndarray:
        """Row positions of item ids (-1 for ids not in the table), vectorized."""
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        if len(ids) <= 1000:  # a dict beats pandas' per-call overhead for candidate-sized inputs
            get = self.index.get
            return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        return self._pindex.get_indexer(ids)

    @classmethod
    def build(cls, item_feats: pd.DataFrame, items: pd.DataFrame) -> "ItemTable":
        """``item_feats``: one row per item with the stored item features (missing items get zeros)."""
        meta = items.set_index("item_id") if not items.empty else pd.DataFrame(index=pd.Index([], name="item_id"))
        ids = pd.Index(pd.unique(pd.concat([item_feats["item_id"], pd.Series(meta.index)], ignore_index=True).astype(str)))
        f = item_feats.drop_duplicates("item_id", keep="last").set_index("item_id").reindex(ids)
        meta = meta.reindex(ids)
        mat = np.zeros((len(ids), len(ITEM_MODEL_FEATURES)))
        mat[:, : len(STORED_ITEM_FEATURES)] = stored_item_matrix(f)
        price = pd.to_numeric(meta.get("price", pd.Series(index=ids, dtype=float)), errors="coerce")
        mat[:, ITEM_MODEL_FEATURES.index("i_price")] = price.fillna(price.median() if price.notna().any() else 0.0).to_numpy()
        created = pd.to_datetime(meta.get("created_at", pd.Series(index=ids, dtype="datetime64[ns, UTC]")), utc=True)
        created_ts = ((created - pd.Timestamp(0, tz="UTC")).dt.total_seconds()).to_numpy(dtype=float)
        return cls(
            ids=ids.to_numpy(dtype=object),
            matrix=mat,
            category=meta.get("category", pd.Series("unknown", index=ids)).fillna("unknown").astype(str).to_numpy(dtype=object),
            created_ts=created_ts,
            in_stock=meta.get("in_stock", pd.Series(True, index=ids)).fillna(True).astype(bool).to_numpy(),
            title=meta.get("title", pd.Series("", index=ids)).fillna("").astype(str).to_numpy(dtype=object),
        )


def feature_names(generators: list[str]) -> list[str]:
    gen = [f"{g}_{s}" for g in generators for s in ("score", "rank")]
    rel = [f"{g}_score_rel" for g in generators]
    return gen + USER_MODEL_FEATURES + ITEM_MODEL_FEATURES + CROSS_FEATURES + rel


def feature_matrix(
    gen_feats: np.ndarray,
    item_idx: np.ndarray,
    user_row: np.ndarray,
    affinity: dict[str, float],
    top_category: str,
    in_history: np.ndarray,
    items: ItemTable,
    now: float,
    item_stored: np.ndarray | None = None,
) -> np.ndarray:
    """One user's candidate rows: generator features, the user's features (broadcast), item features
    and user-item cross features. ``item_stored`` replaces the item table's stored features with
    rows computed as of ``now`` (training on per-user cut times); serving uses the table's."""
    n = len(item_idx)
    it = items.matrix[item_idx].copy()
    if item_stored is not None:
        it[:, : item_stored.shape[1]] = item_stored
    created = items.created_ts[item_idx]
    it[:, ITEM_MODEL_FEATURES.index("i_age_days")] = np.where(np.isnan(created), 365.0, (now - created) / 86400.0)
    cats = items.category[item_idx]
    aff = np.zeros(n)
    for c, share in affinity.items():  # a user has a handful of categories: vectorized per category
        aff[cats == c] = share
    is_top = (cats == top_category).astype(float)
    paid = user_row[USER_MODEL_FEATURES.index("u_avg_price_paid")]
    price = it[:, ITEM_MODEL_FEATURES.index("i_price")]
    ratio = price / paid if paid > 0 else np.zeros(n)
    cross = np.column_stack([aff, is_top, ratio, in_history.astype(float)])
    # each generator's score relative to its best one for this user: raw scores of different users
    # (history lengths, activity) are on different scales, their ratio to the user's best is not
    scores = gen_feats[:, 0::2]
    top = scores.max(axis=0, initial=0.0)
    rel = np.divide(scores, top, out=np.zeros_like(scores), where=top > 0)
    return np.hstack([gen_feats, np.broadcast_to(user_row, (n, len(user_row))), it, cross, rel])


def rank_order(model: "RecopsModel", x: np.ndarray, scores: np.ndarray, idx: np.ndarray, k: int,
               rules: BusinessRules | None = None) -> np.ndarray:
    """Positions of the ``k`` candidates to show: by ranker score under the business rules, ties
    broken by the best rank any generator gave the item (a shallow ranker ties often)."""
    g = 2 * len(model.generators)
    best_rank = x[:, 1:g:2].min(axis=1) if g else np.zeros(len(scores))
    age = x[:, model.feature_names.index("i_age_days")]
    return apply_rules(scores, best_rank, model.items.category[idx], age, k, rules or BusinessRules())


def segment_of(history: list[str]) -> str:
    """The user segment scorers are chosen for: no recent items yet, or some."""
    return "known" if len(history) else "new"


def user_vector(feats: dict | None) -> tuple[np.ndarray, dict, str]:
    """One user's model features (zeros when unknown), category affinity and top category."""
    if not feats:  # nothing known: what the feature code derives for a user with no events
        vec = np.zeros(len(USER_MODEL_FEATURES))
        rec, ten = derive_values(None, None, 0.0)
        vec[USER_MODEL_FEATURES.index("u_recency_hours")] = float(rec)
        vec[USER_MODEL_FEATURES.index("u_tenure_days")] = float(ten)
        return vec, {}, ""
    vec = np.array([_num(feats.get(c)) for c in USER_MODEL_FEATURES])
    raw = feats.get("u_category_affinity")
    aff = json.loads(raw) if isinstance(raw, str) and raw else {}
    top = feats.get("u_top_category") or ""
    return vec, aff, top if isinstance(top, str) else ""


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if np.isnan(f) else f


@dataclass
class Recommendation:
    item_id: str
    score: float
    reason: str
    sources: list[str]
    confidence: float = 0.0


def confidence(history_len: int, n_sources: np.ndarray, n_generators: int) -> np.ndarray:
    """How much to trust each recommendation, in [0, 1]: the evidence about the person (their
    recent items: none 0, five ~0.63, twenty ~0.98) times the generators' agreement (an item every
    generator proposed keeps it all, an item one of five proposed ~60%)."""
    evidence = 1.0 - np.exp(-history_len / 5.0)
    agree = np.asarray(n_sources, dtype=float) / max(n_generators, 1)
    return np.round(evidence * (0.5 + 0.5 * agree), 4)


class RecopsModel:
    """Generators + ranker + the item table: everything needed to serve, in one picklable object."""

    def __init__(self, generators: dict[str, Recommender], ranker: lgb.Booster | None, items: ItemTable,
                 candidates_per_source: int = 100, meta: dict | None = None):
        self.generators = generators
        self.ranker = ranker
        self.items = items
        self.candidates_per_source = candidates_per_source
        self.meta = meta or {}
        self.feature_names = feature_names(list(generators))
        self.scorer: dict[str, str] = {}  # segment -> "ranker" or a generator name (default: ranker)
        self.calibration = None  # score gap to the user's best candidate -> P(interaction) (training.calibrate)

    # -- candidates -----------------------------------------------------------------------------
    def candidates(self, history: list[str], user_id: str | None = None,
                   as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Union of every generator's top-N: item indexes, generator features (score, rank per
        generator; rank N+1 when not proposed) and which generators proposed each item. ``as_of``
        (offline evaluation at a past cut): time-aware generators answer as of then."""
        n = self.candidates_per_source
        idx_parts, g_parts, rank_parts, score_parts = [], [], [], []
        for g, (name, gen) in enumerate(self.generators.items()):
            if as_of is not None and isinstance(gen, Popularity):
                gi, scores = gen.score_indices(history, n, user_id=user_id, as_of=as_of)
            else:
                gi, scores = gen.score_indices(history, n, user_id=user_id)
            ix = self._table_positions(name, gen)[gi]
            ok = ix >= 0
            idx_parts.append(ix[ok])
            g_parts.append(np.full(int(ok.sum()), g))
            rank_parts.append(np.arange(1, len(gi) + 1)[ok])
            score_parts.append(np.asarray(scores, dtype=float)[ok])
        n_gen = len(self.generators)
        all_idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
        idx, inv = np.unique(all_idx, return_inverse=True)
        feats = np.zeros((len(idx), 2 * n_gen))
        feats[:, 1::2] = n + 1  # "not proposed" ranks below every proposed one
        if len(all_idx):
            g = np.concatenate(g_parts)
            feats[inv, 2 * g] = np.concatenate(score_parts)
            feats[inv, 2 * g + 1] = np.concatenate(rank_parts)
        return idx.astype(np.int64), feats, feats[:, 1::2] <= n

    def _table_positions(self, name: str, gen) -> np.ndarray:
        """Item-table row of each of a generator's items (-1: not in the table), computed once."""
        cache = self.__dict__.setdefault("_positions", {})
        if name not in cache or len(cache[name]) != len(gen.item_ids_):
            cache[name] = self.items.positions(list(gen.item_ids_)).astype(np.int64)
        return cache[name]

    # -- ranking --------------------------------------------------------------------------------
    def score_matrix(self, x: np.ndarray, segment: str = "known") -> np.ndarray:
        """Scores of one user's candidate rows by the scorer chosen for the user's segment: the
        ranker, or a generator's own order where a generator ranked that segment better on the
        validation slice (``scorer``, chosen in training)."""
        choice = getattr(self, "scorer", {}).get(segment, "ranker")
        if choice == "ranker" and self.ranker is not None:
            return self.ranker.predict(x, num_threads=1)
        g = list(self.generators).index(choice) if choice in self.generators else 0
        score, proposed = x[:, 2 * g], x[:, 2 * g + 1] <= self.candidates_per_source
        if not proposed.any():
            return np.zeros(len(x))
        # the generator's own order (its score); items it did not propose rank below all it did
        return np.where(proposed, score, score[proposed].min() - 1.0)

    def recommend(self, user_id: str | None, k: int, history: list[str], user_feats: dict | None,
                  exclude: set[str] | None = None, now: float | None = None,
                  rules: BusinessRules | None = None, intent: str | None = None,
                  session_categories: dict[str, float] | None = None,
                  session_items: list[str] | None = None) -> list[Recommendation]:
        """Top-``k`` for one user. ``exclude``: items never to show (the caller derives the user's
        from ``rules.exclude_event_types``); ``rules``: stock, category cap, fresh boost;
        ``intent`` (a session's, ``recops.models.intent``) tilts the scores and picks rules, with
        ``session_categories`` (category: share of the session's events); ``session_items`` (the
        live session, newest first) adds and lifts what usually comes next after them."""
        rules = intent_rules(intent, rules or BusinessRules())
        now = float(now if now is not None else pd.Timestamp.now(tz="UTC").timestamp())
        idx, gen_feats, proposed = self.candidates(history, user_id)
        idx, gen_feats, proposed, nxt = self._with_next(idx, gen_feats, proposed, session_items)
        if len(idx) == 0:
            return []
        keep = np.ones(len(idx), dtype=bool)
        if exclude:
            keep &= ~np.isin(idx, self.items.positions(list(exclude)))
        if rules.in_stock_only:
            keep &= self.items.in_stock[idx]
        idx, gen_feats, proposed, nxt = idx[keep], gen_feats[keep], proposed[keep], nxt[keep]
        if len(idx) == 0:
            return []
        uvec, aff, top = user_vector(user_feats)
        n = len(idx)
        in_hist = np.isin(idx, self.items.positions(history))
        x = feature_matrix(gen_feats, idx, uvec, aff, top, in_hist, self.items, now)
        scores = self.score_matrix(x, segment_of(history))
        names = list(self.generators)
        if nxt.any():  # the live session: what comes next after its items, by up to SESSION_LIFT spreads
            scores = scores + SESSION_LIFT * (float(scores.std()) or 1.0) * nxt
        if intent:
            share = np.array([(session_categories or {}).get(c, 0.0) for c in self.items.category[idx]])
            cv = names.index("covisit") if "covisit" in names else None
            scores = intent_scores(intent, scores, proposed[:, cv] if cv is not None else np.zeros(n, bool), share)
        order = rank_order(self, x, scores, idx, k, rules)
        sources = [[names[g] for g in np.flatnonzero(proposed[o])] + (["next_item"] if nxt[o] > 0 else []) for o in order]
        cv = self.generators.get("covisit")
        because = cv.strongest_source(history[:10], [str(self.items.ids[idx[o]]) for o, src in zip(order, sources)
                                                      if "covisit" in src]) if cv is not None else {}
        ni = getattr(self, "next_item", None)
        after = {}  # a strong next-item signal explains an item best: the session item it follows
        for o in order:
            if nxt[o] >= 0.5:
                item = str(self.items.ids[idx[o]])
                after[item] = ni.strongest_rule(session_items, item)
        conf = confidence(len(history), np.array([len(src) for src in sources]), len(names) + (ni is not None))
        return [Recommendation(item_id=str(self.items.ids[idx[o]]), score=float(scores[o]),
                               reason=self._reason(idx[o], src, because, aff, intent, session_categories, after),
                               sources=src, confidence=float(c))
                for o, src, c in zip(order, sources, conf)]

    def _with_next(self, idx, gen_feats, proposed, session_items):
        """The candidates plus the next-item model's top proposals after ``session_items`` (rows
        no generator proposed get "not proposed" features), and each row's next-item score
        relative to the best one (0: not proposed by it)."""
        ni = getattr(self, "next_item", None)
        nxt = np.zeros(len(idx))
        if not session_items or ni is None:
            return idx, gen_feats, proposed, nxt
        gi, s = ni.score_indices(list(session_items), self.candidates_per_source)
        pos = self._table_positions("next_item", ni)[gi]
        ok = (pos >= 0) & (s > 0)
        pos, s = pos[ok], s[ok]
        if not len(pos):
            return idx, gen_feats, proposed, nxt
        new = np.setdiff1d(pos, idx)
        if len(new):
            unproposed = np.zeros((len(new), gen_feats.shape[1]))
            unproposed[:, 1::2] = self.candidates_per_source + 1
            idx, gen_feats = np.concatenate([idx, new]), np.vstack([gen_feats, unproposed])
            proposed = np.vstack([proposed, np.zeros((len(new), proposed.shape[1]), dtype=bool)])
            nxt = np.zeros(len(idx))
        where = {p: n for n, p in enumerate(idx)}
        nxt[[where[p] for p in pos]] = s / s.max()
        return idx, gen_feats, proposed, nxt

    def next_items(self, recent: list[str], k: int, exclude: set[str] | None = None) -> list[Recommendation]:
        """The likeliest next items after ``recent`` (newest first), with the recent item that
        leads to each; popularity fills in when the session says nothing yet."""
        ni = getattr(self, "next_item", None)
        if ni is None:
            return []
        out = []
        for item, score in ni.predict(recent, k, exclude=tuple(exclude or ())):
            src = ni.strongest_rule(recent, item) if score > 0 else None
            p = self.items.index.get(item)
            cat = self.items.category[p] if p is not None else "the catalog"
            reason = f"Often chosen next after {self._title(src)}" if src else f"Popular now in {cat}"
            out.append(Recommendation(item, float(score), reason, ["next_item"] if src else ["popularity"]))
        return out

    def _title(self, item: str | None) -> str:
        p = self.items.index.get(item) if item else None
        return (self.items.title[p] or item) if p is not None else str(item)

    # -- one item: predict and explain ------------------------------------------------------------
    def _scored(self, user_id: str | None, history: list[str], user_feats: dict | None, now: float, item: str):
        """One user's candidates plus ``item`` (scored even when no generator proposed it): item
        positions, feature rows, which generators proposed each, scores, and the item's row."""
        idx, gen_feats, proposed = self.candidates(history, user_id)
        p = self.items.index[item]
        row = np.flatnonzero(idx == p)
        if not len(row):
            unproposed = np.zeros((1, gen_feats.shape[1]))
            unproposed[:, 1::2] = self.candidates_per_source + 1
            idx, gen_feats = np.append(idx, p), np.vstack([gen_feats, unproposed])
            proposed = np.vstack([proposed, np.zeros((1, proposed.shape[1]), dtype=bool)])
            row = [len(idx) - 1]
        uvec, aff, top = user_vector(user_feats)
        x = feature_matrix(gen_feats, idx, uvec, aff, top, np.isin(idx, self.items.positions(history)), self.items, now)
        return idx, x, proposed, self.score_matrix(x, segment_of(history)), int(row[0]), aff

    def predict(self, user_id: str | None, item: str, history: list[str], user_feats: dict | None,
                now: float | None = None) -> dict:
        """The user's preference score for ``item``, its rank among the user's candidates and the
        calibrated probability that the user interacts with it (``calibration``)."""
        now = float(now if now is not None else pd.Timestamp.now(tz="UTC").timestamp())
        idx, x, proposed, scores, r, _ = self._scored(user_id, history, user_feats, now, item)
        gap = float(scores[r] - scores.max())
        prob = float(self.calibration.predict([gap])[0]) if self.calibration is not None else None
        return {"score": float(scores[r]), "score_gap": gap, "rank": int((scores > scores[r]).sum() + 1),
                "candidates": int(len(idx)), "probability": prob,
                "proposed_by": [n for n, hit in zip(self.generators, proposed[r]) if hit]}

    def explain(self, user_id: str | None, item: str, history: list[str], user_feats: dict | None,
                now: float | None = None, top: int = 5) -> dict:
        """Why ``item`` for this user: the generators that proposed it (their rank and score), the
        scorer in use, and the ranker's largest feature contributions (``pred_contrib``) in words."""
        now = float(now if now is not None else pd.Timestamp.now(tz="UTC").timestamp())
        idx, x, proposed, scores, r, aff = self._scored(user_id, history, user_feats, now, item)
        names = list(self.generators)
        gens = [{"generator": g, "rank": int(x[r, 2 * n + 1]), "score": float(x[r, 2 * n])}
                for n, g in enumerate(names) if proposed[r, n]]
        contribs = []
        if self.ranker is not None:
            c = self.ranker.predict(x[r:r + 1], pred_contrib=True, num_threads=1)[0]
            cat = str(self.items.category[idx[r]])
            for j in np.argsort(-np.abs(c[:-1]))[:top]:
                contribs.append({"feature": self.feature_names[j], "value": float(x[r, j]), "contribution": float(c[j]),
                                 "reason": ("raises it: " if c[j] > 0 else "lowers it: ") + describe(self.feature_names[j], float(x[r, j]), cat)})
        cv = self.generators.get("covisit")
        because = cv.strongest_source(history[:10], [item]) if cv is not None and "covisit" in [g["generator"] for g in gens] else {}
        return {"scorer": getattr(self, "scorer", {}).get(segment_of(history), "ranker"), "score": float(scores[r]),
                "rank": int((scores > scores[r]).sum() + 1), "proposed_by": gens, "contributions": contribs,
                "reason": self._reason(idx[r], [g["generator"] for g in gens], because, aff)}

    def _reason(self, item_idx: int, sources: list[str], because: dict, affinity: dict, intent: str | None = None,
                session_categories: dict | None = None, after: dict | None = None) -> str:
        item = self.items.ids[item_idx]
        cat = self.items.category[item_idx]
        if (after or {}).get(item):
            return f"Often chosen next after {self._title(after[item])}, which you just looked at"
        if "covisit" in sources and item in because:
            h = because[item]
            title = self.items.title[self.items.index[h]] if h in self.items.index else h
            if intent == "transactional":
                return f"Goes well with {title or h}, from this visit"
            return f"Often viewed together with {title or h}, which you looked at recently"
        if intent == "research" and (session_categories or {}).get(cat, 0.0) > 0:
            return f"Another option in {cat}, which you are comparing"
        if intent == "browsing":
            return f"Something to explore in {cat}"
        if affinity.get(cat, 0.0) >= 0.2:
            return f"Popular in {cat}, a category you often browse"
        return f"Trending now in {cat}"

    def popular(self, k: int, exclude: set[str] | None = None, in_stock_only: bool = True) -> list[Recommendation]:
        """The fallback list: most popular items (needs only the popularity generator)."""
        pop = self.generators.get("popularity")
        ids, scores = pop.score([], k * 3 + len(exclude or ())) if pop else (np.array([]), np.array([]))
        out = []
        for i, s in zip(ids, scores):
            if exclude and i in exclude:
                continue
            p = self.items.index.get(i)
            if in_stock_only and p is not None and not self.items.in_stock[p]:
                continue
            cat = self.items.category[p] if p is not None else "the catalog"
            out.append(Recommendation(item_id=str(i), score=float(s), reason=f"Trending now in {cat}", sources=["popularity"]))
            if len(out) == k:
                break
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def load(path: str | Path) -> "RecopsModel":
        obj = pickle.loads(Path(path).read_bytes())
        if not isinstance(obj, RecopsModel):
            raise TypeError(f"{path} is not a RecopsModel")
        return obj


def train_ranker(x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str], x_val=None, y_val=None,
                 g_val=None, params: dict | None = None, num_threads: int = 1, seed: int = 42) -> lgb.Booster:
    """LightGBM LambdaRank; early stopping on the validation groups when given."""
    p = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.05, "num_leaves": 31,
        "min_data_in_leaf": 100, "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1,
        "lambdarank_truncation_level": 20, "num_threads": num_threads, "seed": seed, "deterministic": True,
        "force_col_wise": True, "verbosity": -1, **(params or {}),
    }
    train = lgb.Dataset(x, y, group=groups, feature_name=names, free_raw_data=False)
    valid_sets, callbacks = [], []
    if x_val is not None and len(g_val):
        valid_sets = [lgb.Dataset(x_val, y_val, group=g_val, reference=train)]
        callbacks = [lgb.early_stopping(50, verbose=False)]
    return lgb.train(p, train, num_boost_round=p.pop("num_boost_round", 300), valid_sets=valid_sets, callbacks=callbacks)
