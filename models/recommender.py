"""The served recommender: multi-source candidates re-ranked by LightGBM LambdaRank, with reasons.

``feature_matrix`` is the one place where ranker features are assembled; training and serving both
call it, so the ranker never sees features built two different ways.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import lightgbm as lgb
import numpy as np
import pandas as pd

from recops.features import ITEM_MODEL_FEATURES, USER_MODEL_FEATURES, derive_values
from recops.models.base import ExplainsCandidates, Recommender, load_pickled
from recops.models.explain import describe
from recops.models.intent import intent_rules, intent_scores, list_span
from recops.models.request import RecommendRequest
from recops.models.rules import BusinessRules, apply_rules
from recops.models.sequential import NextItem

SESSION_LIFT = 2.0  # the most the live session's next-item signal lifts a score, in spans of the shown list
CROSS_FEATURES = ["x_category_affinity", "x_is_top_category", "x_price_ratio", "x_in_history"]
# item features that come from the feature store (the rest, price and age, come from the catalog)
STORED_ITEM_FEATURES = [c for c in ITEM_MODEL_FEATURES if c not in ("i_price", "i_age_days")]
assert ITEM_MODEL_FEATURES[: len(STORED_ITEM_FEATURES)] == STORED_ITEM_FEATURES


def stored_item_matrix(feats: pd.DataFrame) -> np.ndarray:
    """The stored item features of each row of ``feats``, in model order.

    Args:
        feats: one row per item (feature-store columns; a missing column or value counts as 0).

    Returns:
        A len(feats) x len(STORED_ITEM_FEATURES) matrix.
    """
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
        """Row positions of item ids, vectorized.

        Args:
            ids: item ids (any sequence).

        Returns:
            One int64 row position per id; -1 for ids not in the table.
        """
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        if len(ids) <= 1000:  # a dict beats pandas' per-call overhead for candidate-sized inputs
            get = self.index.get
            return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        return self._pindex.get_indexer(ids)

    def out_of_stock(self) -> frozenset[str]:
        """The items this table marks out of stock.

        Returns:
            Their ids (the catalog as of training: serving excludes by the live catalog instead).
        """
        return frozenset(self.ids[~self.in_stock])

    @classmethod
    def build(cls, item_feats: pd.DataFrame, items: pd.DataFrame) -> ItemTable:
        """The table of every item in either frame.

        Args:
            item_feats: one row per item with the stored item features (items missing here get zeros).
            items: the catalog (category, title, price, in_stock, created_at; missing prices get the median).

        Returns:
            The item table.
        """
        meta = items.set_index("item_id") if not items.empty else pd.DataFrame(index=pd.Index([], name="item_id"))
        known = pd.concat([item_feats["item_id"], pd.Series(meta.index)], ignore_index=True)
        ids = pd.Index(pd.unique(known.astype(str)))
        f = item_feats.drop_duplicates("item_id", keep="last").set_index("item_id").reindex(ids)
        meta = meta.reindex(ids)
        mat = np.zeros((len(ids), len(ITEM_MODEL_FEATURES)))
        mat[:, : len(STORED_ITEM_FEATURES)] = stored_item_matrix(f)
        price = pd.to_numeric(meta.get("price", pd.Series(index=ids, dtype=float)), errors="coerce")
        fill = price.median() if price.notna().any() else 0.0
        mat[:, ITEM_MODEL_FEATURES.index("i_price")] = price.fillna(fill).to_numpy()
        created = pd.to_datetime(meta.get("created_at", pd.Series(index=ids, dtype="datetime64[ns, UTC]")), utc=True)
        created_ts = ((created - pd.Timestamp(0, tz="UTC")).dt.total_seconds()).to_numpy(dtype=float)
        return cls(
            ids=ids.to_numpy(dtype=object),
            matrix=mat,
            category=meta.get("category", pd.Series("unknown", index=ids)).fillna("unknown").astype(str)
            .to_numpy(dtype=object),
            created_ts=created_ts,
            in_stock=meta.get("in_stock", pd.Series(True, index=ids)).fillna(True).astype(bool).to_numpy(),
            title=meta.get("title", pd.Series("", index=ids)).fillna("").astype(str).to_numpy(dtype=object),
        )


def feature_names(generators: list[str]) -> list[str]:
    """The ranker's feature columns, in the order ``feature_matrix`` builds them.

    Args:
        generators: the model's generator names, in model order.

    Returns:
        Per generator score and rank, the user's features, the item's, the crosses, and per
        generator the score relative to the user's best.
    """
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
    and user-item cross features.

    Args:
        gen_feats: per candidate, score and rank of every generator (``RecopsModel.candidates``).
        item_idx: the candidates' item-table rows.
        user_row: the user's ``USER_MODEL_FEATURES`` (``user_vector``).
        affinity: category -> the user's share of activity in it.
        top_category: the user's favourite category ("" when unknown).
        in_history: per candidate, whether the user touched it recently.
        items: the item table.
        now: the request (or cut) time, epoch seconds: item ages are taken at it.
        item_stored: rows that replace the table's stored item features, computed as of ``now``
            (training at per-user cut times); None: the table's (serving).

    Returns:
        A len(item_idx) x len(feature_names) matrix.
    """
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


def rank_order(model: RecopsModel, x: np.ndarray, scores: np.ndarray, idx: np.ndarray, k: int,
               rules: BusinessRules | None = None) -> np.ndarray:
    """Positions of the ``k`` candidates to show, best first.

    Args:
        model: the model whose rows ``x`` are.
        x: the candidate rows.
        scores: their scores.
        idx: their item-table rows.
        k: how many to show.
        rules: category cap and fresh boost (None: none).

    Returns:
        Row positions, by score under the rules; ties broken by the best rank any generator gave the
        item (a shallow ranker ties often).
    """
    g = 2 * len(model.generators)
    best_rank = x[:, 1:g:2].min(axis=1) if g else np.zeros(len(scores))
    age = x[:, model.feature_names.index("i_age_days")]
    return apply_rules(scores, best_rank, model.items.category[idx], age, k, rules or BusinessRules())


def segment_of(history: list[str]) -> str:
    """The user segment scorers are chosen for.

    Args:
        history: the user's recent items.

    Returns:
        "new" (no recent items yet) or "known".
    """
    return "known" if len(history) else "new"


def user_vector(feats: dict | None) -> tuple[np.ndarray, dict, str]:
    """One user's ranker inputs.

    Args:
        feats: the user's features with the request-time ones derived; None or empty: unknown.

    Returns:
        The ``USER_MODEL_FEATURES`` vector (what the feature code derives for a user with no events
        when unknown), the category affinity (category -> share) and the top category.
    """
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
    """One recommended item: its score, a reason a person can read, the generators that proposed it
    and how much to trust it (0-1)."""

    item_id: str
    score: float
    reason: str
    sources: list[str]
    confidence: float = 0.0


def confidence(history_len: int, n_sources: np.ndarray, n_generators: int) -> np.ndarray:
    """How much to trust each recommendation, in [0, 1].

    Args:
        history_len: the person's recent items (evidence: none 0, five ~0.63, twenty ~0.98).
        n_sources: per item, how many generators proposed it.
        n_generators: how many could have (an item every one proposed keeps all the evidence, an
            item one of five proposed ~60%).

    Returns:
        One confidence per item, rounded to 4 places.
    """
    evidence = 1.0 - np.exp(-history_len / 5.0)
    agree = np.asarray(n_sources, dtype=float) / max(n_generators, 1)
    return np.round(evidence * (0.5 + 0.5 * agree), 4)


class Pool(NamedTuple):
    """One request's candidates: item-table rows, generator features (score, rank per generator),
    which generators proposed each, and each row's next-item score relative to the best (0: none)."""

    idx: np.ndarray
    gen: np.ndarray
    proposed: np.ndarray
    next_score: np.ndarray

    def take(self, keep: np.ndarray) -> Pool:
        """A subset of the pool.

        Args:
            keep: one boolean per row.

        Returns:
            The rows where ``keep`` is true.
        """
        return Pool(self.idx[keep], self.gen[keep], self.proposed[keep], self.next_score[keep])

    def add_unproposed(self, rows: np.ndarray, not_proposed_rank: int) -> Pool:
        """The pool with more candidates that no generator proposed.

        Args:
            rows: item-table rows to add.
            not_proposed_rank: the rank feature they get (below every proposed one).

        Returns:
            The pool with ``rows`` appended (zero scores, no proposers, no next-item score).
        """
        gen = np.zeros((len(rows), self.gen.shape[1]))
        gen[:, 1::2] = not_proposed_rank
        return Pool(np.concatenate([self.idx, rows]), np.vstack([self.gen, gen]),
                    np.vstack([self.proposed, np.zeros((len(rows), self.proposed.shape[1]), dtype=bool)]),
                    np.concatenate([self.next_score, np.zeros(len(rows))]))


class RecopsModel:
    """Generators + ranker + the item table: everything needed to serve, in one picklable object.

    Its declared parts: ``generators`` (the candidate sources, name -> ``Recommender``), ``ranker``
    (LightGBM LambdaRank, None until trained), ``items`` (the item table), ``scorer`` (per user
    segment: "ranker" or the generator whose own order ranks that segment), ``calibration`` (score
    gap -> probability), ``demographic`` (cold start by segment) and ``next_item`` (what follows a
    session's items). The optional parts are None when a model was trained without them.
    ``holdout_eval``: the pipeline's holdout evaluation as training computed it, with the digest of
    its inputs (``recops.training.holdout_fingerprint``), or None.
    """

    def __init__(self, generators: dict[str, Recommender], ranker: lgb.Booster | None, items: ItemTable,
                 candidates_per_source: int = 100, meta: dict | None = None, scorer: dict[str, str] | None = None,
                 calibration=None, demographic: Recommender | None = None, next_item: NextItem | None = None):
        self.generators = generators
        self.ranker = ranker
        self.items = items
        self.candidates_per_source = candidates_per_source
        self.meta = meta or {}
        self.scorer: dict[str, str] = dict(scorer or {})  # segment -> "ranker" or a generator name (default: ranker)
        self.calibration = calibration  # score gap to the user's best candidate -> P(interaction) (training.calibrate)
        self.demographic = demographic
        self.next_item = next_item
        self.holdout_eval: dict | None = None
        self._derive()

    def _derive(self) -> None:
        """State computed from the declared parts (not pickled: rebuilt on load)."""
        self.feature_names = feature_names(list(self.generators))
        # generators that can name the history item behind a candidate (base.ExplainsCandidates)
        self._explainers = [n for n, g in self.generators.items() if isinstance(g, ExplainsCandidates)]
        self._explainer_cols = [list(self.generators).index(n) for n in self._explainers]  # their ``proposed`` columns
        self._positions: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        derived = ("feature_names", "_explainers", "_explainer_cols", "_positions")  # rebuilt by _derive
        return {k: v for k, v in self.__dict__.items() if k not in derived}

    def __setstate__(self, state: dict) -> None:
        # models pickled before a part was declared load with that part empty
        self.__dict__.update({"meta": {}, "scorer": {}, "calibration": None, "demographic": None, "next_item": None,
                              "holdout_eval": None})
        self.__dict__.update(state)
        self._derive()

    # -- candidates -----------------------------------------------------------------------------
    def candidates(self, history: list[str], user_id: str | None = None,
                   as_of: pd.Timestamp | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Union of every generator's top-N.

        Args:
            history: recent distinct items, newest first.
            user_id: the user (None: anonymous).
            as_of: answer as of this past time (offline evaluation at a cut; time-aware generators
                use it); None: now.

        Returns:
            Item-table rows, generator features (score, rank per generator; rank N+1 when not
            proposed) and which generators proposed each item.
        """
        n = self.candidates_per_source
        return self._union([gen.score_indices(history, n, user_id=user_id, as_of=as_of)
                            for gen in self.generators.values()])

    def candidates_many(self, histories: list[list[str]], user_ids: list[str | None],
                        as_ofs: list[pd.Timestamp | None]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``candidates`` for many users at once (batch work), each generator scoring them together
        (``Recommender.score_indices_many``): the same answers.

        Args:
            histories: each user's recent distinct items, newest first.
            user_ids: the users, as ``histories``.
            as_ofs: each user's as-of time (None: now), as ``histories``.

        Returns:
            One ``candidates`` answer per user, in order.
        """
        n = self.candidates_per_source
        per_gen = [gen.score_indices_many(histories, n, user_ids, as_ofs) for gen in self.generators.values()]
        return [self._union([answers[i] for answers in per_gen]) for i in range(len(histories))]

    def _union(self, answers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``candidates``' answer from each generator's ``score_indices`` answer, in generator order."""
        n = self.candidates_per_source
        idx_parts, g_parts, rank_parts, score_parts = [], [], [], []
        for g, ((name, gen), (gi, scores)) in enumerate(zip(self.generators.items(), answers)):
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

    def _table_positions(self, name: str, gen: Recommender) -> np.ndarray:
        """Item-table row of each of a generator's items (-1: not in the table), computed once."""
        cache = self._positions
        if name not in cache or len(cache[name]) != len(gen.item_ids_):
            cache[name] = self.items.positions(list(gen.item_ids_)).astype(np.int64)
        return cache[name]

    def _generator_pool(self, history: list[str], user_id: str | None) -> Pool:
        """Every generator's candidates now, as a pool without next-item scores."""
        idx, gen, proposed = self.candidates(history, user_id)
        return Pool(idx, gen, proposed, np.zeros(len(idx)))

    def _because(self, history: list[str], ids: list[str], sources: list[list[str]]) -> dict[str, str]:
        """item -> the recent history item behind it, asked of each generator that can name one
        (``ExplainsCandidates``) for the items it proposed, the first generator's answer winning."""
        because: dict[str, str] = {}
        for name in self._explainers:
            mine = [i for i, src in zip(ids, sources) if name in src and i not in because]
            because.update(self.generators[name].strongest_source(history[:10], mine))
        return because

    def _pool(self, request: RecommendRequest) -> Pool:
        """The request's candidates: every generator's, plus the next-item model's top proposals
        after the live session, minus every exclusion."""
        pool = self._generator_pool(list(request.history), request.user_id)
        if request.session_items and self.next_item is not None:
            gi, s = self.next_item.score_indices(list(request.session_items), self.candidates_per_source)
            pos = self._table_positions("next_item", self.next_item)[gi]
            ok = (pos >= 0) & (s > 0)
            pos, s = pos[ok], s[ok]
            if len(pos):
                pool = pool.add_unproposed(np.setdiff1d(pos, pool.idx), self.candidates_per_source + 1)
                where = {p: n for n, p in enumerate(pool.idx)}
                pool.next_score[[where[p] for p in pos]] = s / s.max()
        if request.exclude and len(pool.idx):
            pool = pool.take(~np.isin(pool.idx, self.items.positions(list(request.exclude))))
        return pool

    # -- ranking --------------------------------------------------------------------------------
    def score_matrix(self, x: np.ndarray, segment: str = "known", ranked: np.ndarray | None = None) -> np.ndarray:
        """Scores of one user's candidate rows by the scorer chosen for the user's segment.

        Args:
            x: the candidate rows (``feature_matrix``).
            segment: ``segment_of(history)``.
            ranked: the ranker's scores of ``x`` when already computed (batch scoring predicts every
                user's rows in one call); None: predicted here.

        Returns:
            One score per row: the ranker's, or a generator's own order where that generator ranked
            the segment better on the validation slice (``scorer``, chosen in training).
        """
        choice = self.scorer.get(segment, "ranker")
        if choice == "ranker" and self.ranker is not None:
            return self.ranker.predict(x, num_threads=1) if ranked is None else ranked
        g = list(self.generators).index(choice) if choice in self.generators else 0
        score, proposed = x[:, 2 * g], x[:, 2 * g + 1] <= self.candidates_per_source
        if not proposed.any():
            return np.zeros(len(x))
        # the generator's own order (its score); items it did not propose rank below all it did
        return np.where(proposed, score, score[proposed].min() - 1.0)

    @property
    def signals(self) -> list[str]:
        """What a request's ``weights`` may name: the generators, and ``next_item`` (what follows the
        live session) when the model has it."""
        return [*self.generators, *(["next_item"] if self.next_item is not None else [])]

    def blend(self, pool: Pool, weights: Mapping[str, float]) -> np.ndarray:
        """Candidate scores as a weighted sum of the signals, each normalised to [0, 1] over the pool
        (a generator's score min-max scaled over the items it proposed, 0 for the others; the
        next-item score relative to the best).

        Args:
            pool: the request's candidates.
            weights: signal -> weight (``signals`` only; checked by the caller).

        Returns:
            One score per candidate.
        """
        names = list(self.generators)
        scores = np.zeros(len(pool.idx))
        for name, w in weights.items():
            if name == "next_item":
                scores += w * pool.next_score
                continue
            g = names.index(name)
            s, on = pool.gen[:, 2 * g], pool.proposed[:, g]
            if on.any():
                lo, hi = float(s[on].min()), float(s[on].max())
                scores += w * np.where(on, (s - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
        return scores

    def recommend(self, request: RecommendRequest) -> list[Recommendation]:
        """Top-``k`` for one request: candidates from every generator and after the live session,
        minus the exclusions; ranked; lifted toward what follows the live session; tilted by the
        visit's intent; ordered under the business rules; each with a reason and a confidence.

        Args:
            request: who is asking and everything known about them (``RecommendRequest``).

        Returns:
            At most ``request.k`` recommendations, best first; empty when there is no candidate.
        """
        pool = self._pool(request)
        if len(pool.idx) == 0:
            return []
        history = list(request.history)
        uvec, aff, top = user_vector(request.features)
        in_hist = np.isin(pool.idx, self.items.positions(history))
        x = feature_matrix(pool.gen, pool.idx, uvec, aff, top, in_hist, self.items, request.now)
        if request.weights:  # the caller's blend of the signals instead of the learned ranker
            scores = self.blend(pool, request.weights)
        else:
            scores = self.score_matrix(x, segment_of(history))
            if pool.next_score.any():  # the live session: what follows its items, by up to SESSION_LIFT spans
                scores = scores + SESSION_LIFT * list_span(scores, request.k) * pool.next_score
        if request.intent:
            share = np.array([request.category_shares.get(c, 0.0) for c in self.items.category[pool.idx]])
            complements = pool.proposed[:, self._explainer_cols].any(axis=1)
            scores = intent_scores(request.intent, scores, complements, share, request.k)
        order = rank_order(self, x, scores, pool.idx, request.k, intent_rules(request.intent, request.rules))
        return self._explained(request, pool, scores, order, aff)

    def _explained(self, request: RecommendRequest, pool: Pool, scores: np.ndarray, order: np.ndarray,
                   affinity: dict) -> list[Recommendation]:
        """The ordered candidates as recommendations: the sources that proposed each, a reason (the
        history item behind it where a generator can name one) and a confidence."""
        names = list(self.generators)
        strong_next = pool.next_score >= 0.5
        sources = [[names[g] for g in np.flatnonzero(pool.proposed[o])]
                   + (["next_item"] if pool.next_score[o] > 0 else []) for o in order]
        ids = [str(self.items.ids[pool.idx[o]]) for o in order]
        because = self._because(list(request.history), ids, sources)
        after = {}  # a strong next-item signal explains an item best: the session item it follows
        if self.next_item is not None:
            after = self.next_item.strongest_source(list(request.session_items),
                                                    [i for i, o in zip(ids, order) if strong_next[o]])
        conf = confidence(len(request.history), np.array([len(src) for src in sources]),
                          len(names) + (self.next_item is not None))
        return [Recommendation(item_id=i, score=float(scores[o]), sources=src, confidence=float(c),
                               reason=self._reason(pool.idx[o], src, because, affinity, request.intent,
                                                   request.category_shares, after))
                for i, o, src, c in zip(ids, order, sources, conf)]

    def next_items(self, recent: list[str], k: int, exclude: set[str] | None = None) -> list[Recommendation]:
        """The likeliest next items after a session's recent items.

        Args:
            recent: the session's items, newest first.
            k: how many items.
            exclude: items never to propose.

        Returns:
            Recommendations with the recent item that leads to each; popularity fills in when the
            session says nothing yet; empty when the model has no next-item part.
        """
        if self.next_item is None:
            return []
        out = []
        for item, score in self.next_item.predict(recent, k, exclude=tuple(exclude or ())):
            src = self.next_item.strongest_rule(recent, item) if score > 0 else None
            p = self.items.index.get(item)
            cat = self.items.category[p] if p is not None else "the catalog"
            reason = f"Often chosen next after {self._title(src)}" if src else f"Popular now in {cat}"
            out.append(Recommendation(item, float(score), reason, ["next_item"] if src else ["popularity"]))
        return out

    def _title(self, item: str | None) -> str:
        p = self.items.index.get(item) if item else None
        return (self.items.title[p] or item) if p is not None else str(item)

    # -- one item: predict and explain ------------------------------------------------------------
    def _scored(self, request: RecommendRequest, item: str):
        """The request's generator candidates plus ``item`` (scored even when no generator
        proposed it): the pool, feature rows, scores, the item's row and the user's affinity."""
        history = list(request.history)
        pool = self._generator_pool(history, request.user_id)
        p = self.items.index[item]
        if not (pool.idx == p).any():
            pool = pool.add_unproposed(np.array([p]), self.candidates_per_source + 1)
        row = int(np.flatnonzero(pool.idx == p)[0])
        uvec, aff, top = user_vector(request.features)
        x = feature_matrix(pool.gen, pool.idx, uvec, aff, top, np.isin(pool.idx, self.items.positions(history)),
                           self.items, request.now)
        return pool, x, self.score_matrix(x, segment_of(history)), row, aff

    def predict(self, request: RecommendRequest, item: str) -> dict:
        """How much the requesting user would want ``item``.

        Args:
            request: the user, their history and features (its exclusions and session are not used).
            item: an item of the model's catalog.

        Returns:
            The score, its gap to the user's best candidate, the item's rank among the user's
            candidates, the number of candidates, the calibrated probability that the user interacts
            with it (None without ``calibration``) and the generators that proposed it.
        """
        pool, _x, scores, r, _aff = self._scored(request, item)
        gap = float(scores[r] - scores.max())
        prob = float(self.calibration.predict([gap])[0]) if self.calibration is not None else None
        return {"score": float(scores[r]), "score_gap": gap, "rank": int((scores > scores[r]).sum() + 1),
                "candidates": len(pool.idx), "probability": prob,
                "proposed_by": [n for n, hit in zip(self.generators, pool.proposed[r]) if hit]}

    def explain(self, request: RecommendRequest, item: str, top: int = 5) -> dict:
        """Why ``item`` for the requesting user.

        Args:
            request: the user, their history and features.
            item: an item of the model's catalog.
            top: how many feature contributions.

        Returns:
            The scorer in use, the score and rank, the generators that proposed it (their rank and
            score), the ranker's largest feature contributions (``pred_contrib``) in words, and the
            reason a list would give.
        """
        pool, x, scores, r, aff = self._scored(request, item)
        names = list(self.generators)
        gens = [{"generator": g, "rank": int(x[r, 2 * n + 1]), "score": float(x[r, 2 * n])}
                for n, g in enumerate(names) if pool.proposed[r, n]]
        contribs = []
        if self.ranker is not None:
            c = self.ranker.predict(x[r:r + 1], pred_contrib=True, num_threads=1)[0]
            cat = str(self.items.category[pool.idx[r]])
            for j in np.argsort(-np.abs(c[:-1]))[:top]:
                name, value = self.feature_names[j], float(x[r, j])
                contribs.append({"feature": name, "value": value, "contribution": float(c[j]),
                                 "reason": ("raises it: " if c[j] > 0 else "lowers it: ") + describe(name, value, cat)})
        proposers = [g["generator"] for g in gens]
        because = self._because(list(request.history), [item], [proposers])
        return {"scorer": self.scorer.get(segment_of(list(request.history)), "ranker"), "score": float(scores[r]),
                "rank": int((scores > scores[r]).sum() + 1), "proposed_by": gens, "contributions": contribs,
                "reason": self._reason(pool.idx[r], proposers, because, aff)}

    def _reason(self, item_idx: int, sources: list[str], because: dict, affinity: dict, intent: str | None = None,
                session_categories: dict | None = None, after: dict | None = None) -> str:
        item = self.items.ids[item_idx]
        cat = self.items.category[item_idx]
        if (after or {}).get(item):
            return f"Often chosen next after {self._title(after[item])}, which you just looked at"
        if item in because:  # a generator named the history item behind it (co-visitation)
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
        """The fallback list: the most popular items (needs only the popularity generator).

        Args:
            k: how many items.
            exclude: items never to return.
            in_stock_only: also leave out what the model's item table marks out of stock (the server
                passes False: it excludes by the live catalog instead).

        Returns:
            At most ``k`` recommendations, most popular first; empty without a popularity generator.
        """
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
            out.append(Recommendation(item_id=str(i), score=float(s), reason=f"Trending now in {cat}",
                                      sources=["popularity"]))
            if len(out) == k:
                break
        return out

    def save(self, path: str | Path) -> None:
        """Pickle the model to ``path`` (the MLflow artifact).

        Args:
            path: the file to write.
        """
        Path(path).write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def load(path: str | Path) -> RecopsModel:
        """A model saved by ``save`` (see ``base.load_pickled``: a TypeError for anything else)."""
        return load_pickled(path, RecopsModel)


def train_ranker(x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str], x_val=None, y_val=None,
                 g_val=None, params: dict | None = None, num_threads: int = 1, seed: int = 42) -> lgb.Booster:
    """LightGBM LambdaRank on grouped rows (one group per user).

    Args:
        x: the rows.
        y: their graded labels.
        groups: the group sizes, in row order.
        names: the feature names.
        x_val: validation rows (None: no early stopping).
        y_val: validation labels.
        g_val: validation group sizes.
        params: overrides of the LightGBM parameters (``num_boost_round`` too, default 300).
        num_threads: LightGBM threads.
        seed: the random seed.

    Returns:
        The booster; with validation data, stopped early (patience 50 rounds) on NDCG@10.
    """
    p = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.05, "num_leaves": 31,
        "min_data_in_leaf": 100, "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1,
        "lambdarank_truncation_level": 20,
        # linear gains for the graded labels (1 view .. 5 purchase): LightGBM's default 2^g - 1 makes one
        # purchase count as 31 views and leaves the ranker nearly blind to any other interaction
        "label_gain": list(range(32)), "num_threads": num_threads, "seed": seed, "deterministic": True,
        "force_col_wise": True, "verbosity": -1, **(params or {}),
    }
    train = lgb.Dataset(x, y, group=groups, feature_name=names, free_raw_data=False)
    valid_sets, callbacks = [], []
    if x_val is not None and len(g_val):
        valid_sets = [lgb.Dataset(x_val, y_val, group=g_val, reference=train)]
        callbacks = [lgb.early_stopping(50, verbose=False)]
    return lgb.train(p, train, num_boost_round=p.pop("num_boost_round", 300), valid_sets=valid_sets,
                     callbacks=callbacks)
