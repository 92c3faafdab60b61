"""``/recommend`` and ``/session/recommend`` with their fallback: never an empty answer for a valid
request.

Both build one ``RecommendRequest`` (``recops.serving.requests``) and hand it to the served model,
which alone decides the order; they differ only in how the request is built. Without a model, when
the model fails or finds nothing, or for someone unknown, the answer is trending items (or, for a
new user whose demographics are known, their segment's favourites), marked as such.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from recops.featurestore import ONLINE_DOWN
from recops.models.intent import infer_intent
from recops.models.recommender import Recommendation
from recops.models.request import RecommendRequest
from recops.services.schemas import RecommendedItem, RecommendResponse, SessionRecommendResponse
from recops.serving.errors import is_store_down
from recops.serving.requests import RequestBuilder
from recops.serving.state import LiveCatalog, ModelSlot, Served
from recops.store import EventStore

log = logging.getLogger("recops.serving")

TRENDING_CONFIDENCE = 0.2  # the most a trending (non-personal) recommendation's confidence can be
DEMOGRAPHIC_CONFIDENCE = 0.35  # ... and a demographic one's (it knows the segment, not the person)
MODEL_ERROR = "model error"  # how a fallback reason starts when the model failed (an error, for the guardrail)
UNKNOWN_USER = "unknown user: no events yet"
NEW_SESSION = "new session: no events yet"
NO_CANDIDATES = "the model found no candidates"
STORE_DOWN = "the event store is unreachable"  # how the reason starts (fallback and degraded alike)


def fallback_kind(reason: str | None) -> str:
    """A fallback reason as one of a few fixed names (a metric label; the reason itself names the error).

    Args:
        reason: the ``fallback_reason`` of an answer, None when the model answered.

    Returns:
        ``none``, ``no_model``, ``model_error``, ``store_down``, ``unknown_user``, ``new_session``,
        ``no_candidates`` or ``other``.
    """
    if reason is None:
        return "none"
    if reason.startswith(MODEL_ERROR):
        return "model_error"
    if reason.startswith(STORE_DOWN):
        return "store_down"
    for text, kind in ((UNKNOWN_USER, "unknown_user"), (NEW_SESSION, "new_session"), (NO_CANDIDATES, "no_candidates")):
        if reason == text:
            return kind
    return "no_model" if reason.startswith(f"{ModelSlot.NO_MODEL} ") else "other"


def degraded_cause(reason: str | None) -> str:
    """A degraded answer's reason as a fixed name (a metric label).

    Args:
        reason: the ``degraded_reason`` of an answer.

    Returns:
        ``registry``, ``event_store``, ``online_store`` or ``other`` (the first cause when there are several).
    """
    reason = reason or ""
    if reason.startswith(STORE_DOWN):
        return "event_store"
    if reason.startswith(ONLINE_DOWN):
        return "online_store"
    return "registry" if reason.startswith(ModelSlot.REGISTRY_UNREACHABLE) else "other"


class Recommendations:
    """Lists for users and sessions from the served model, with the fallback."""

    def __init__(self, slot: ModelSlot, requests: RequestBuilder, catalog: LiveCatalog, store: EventStore):
        self.slot, self.requests, self.catalog, self.store = slot, requests, catalog, store

    def recommend(self, user_id: str, k: int = 10, session_id: str | None = None,
                  exclude: Iterable[str] | None = None, slot: ModelSlot | None = None,
                  weights: Mapping[str, float] | None = None) -> RecommendResponse:
        """Top-``k`` for a user, each with a reason.

        Args:
            user_id: the user (unknown users get a cold start).
            k: how many items.
            session_id: the visit the user is in, when the caller knows it.
            exclude: the caller's items never to show.
            slot: the model to ask (an experiment's variant); None: the champion.
            weights: blend these signals (generator names, ``next_item``) instead of the learned
                ranker; None: the ranker.

        Returns:
            The list, the model version, the strategy that answered, whether (and why) the fallback
            did, and the weights used (normalised to sum to 1; None for the ranker).
        """
        slot = slot or self.slot
        served, excl = slot.get(), frozenset(exclude or ())
        if served is None:
            return self.fallback(user_id, k, excl, None, slot.why_none())
        weights = check_weights(weights, served.model.signals)
        try:
            request = self.requests.for_user(user_id, k, session_id, excl, weights)
            if request is None:
                return self.cold_start(user_id, k, excl, served)
            return self._answer(user_id, request, served)
        except Exception as exc:
            if is_store_down(exc):
                return self.store_down(user_id, k, excl, served, exc)
            log.exception("model failed for user %s", user_id)
            return self.fallback(user_id, k, excl, served, f"{MODEL_ERROR}: {type(exc).__name__}")

    def session_recommend(self, session_id: str, k: int = 10, exclude: Iterable[str] | None = None,
                          slot: ModelSlot | None = None) -> SessionRecommendResponse:
        """Top-``k`` for an (anonymous) session from its live state, steered by its intent.

        Args:
            session_id: the session.
            k: how many items.
            exclude: the caller's items never to show.
            slot: the model to ask (an experiment's variant); None: the champion.

        Returns:
            The list with the session's intent, the signals it was read from and why.
        """
        slot = slot or self.slot
        visit = self.requests.visit(session_id)
        intent = infer_intent(visit)
        served, excl = slot.get(), frozenset(exclude or ())

        def answer(resp: RecommendResponse) -> SessionRecommendResponse:
            return SessionRecommendResponse(session_id=session_id, intent=intent.name, intent_reason=intent.why,
                                            signals=intent.signals, **resp.model_dump(exclude={"user_id"}))

        if visit is None:
            return answer(self.fallback(session_id, k, excl, served, NEW_SESSION))
        if served is None:
            return answer(self.fallback(session_id, k, excl, None, slot.why_none()))
        try:
            request = self.requests.for_session(session_id, visit, intent, k, excl)
            return answer(self._answer(session_id, request, served))
        except Exception as exc:
            log.exception("model failed for session %s", session_id)
            return answer(self.fallback(session_id, k, excl, served, f"{MODEL_ERROR}: {type(exc).__name__}"))

    def _answer(self, who: str, request: RecommendRequest, served: Served) -> RecommendResponse:
        """The served model's list for ``request``; the fallback when it finds no candidate."""
        recs = served.model.recommend(request)
        if not recs:
            return self.fallback(who, request.k, request.exclude, served, NO_CANDIDATES)
        return RecommendResponse(user_id=who, items=as_items(recs), model_version=served.version, fallback=False,
                                 strategy=request.strategy, weights_used=request.weights)

    def cold_start(self, user_id: str, k: int, exclude: frozenset[str], served: Served) -> RecommendResponse:
        """A user with no events: their demographic segment's favourites when the users table knows
        their age, gender or region, else trending items (the fallback).

        Args:
            user_id: the user.
            k: how many items.
            exclude: the caller's items never to show.
            served: the served model (its ``demographic`` part answers).

        Returns:
            The list (``strategy`` demographic, or trending when only the global list is known).
        """
        row = self.store.user_row(user_id)
        demo = served.model.demographic
        if demo is None or not row or all(row.get(c) is None for c in ("age", "gender", "region")):
            return self.fallback(user_id, k, exclude, served, UNKNOWN_USER)
        gone = exclude | self.requests.unavailable()
        ids, scores, key = demo.score_profile(row, 3 * k + len(gone))
        who = ", ".join(str(row[c]) for c in ("region", "gender") if row.get(c)) or "your segment"
        top = float(scores[0]) if len(scores) and scores[0] > 0 else 1.0
        recs = [Recommendation(str(i), float(s), f"Popular with shoppers like you ({who})" if key
                               else f"Popular now in {self.catalog.category_of(i)}", ["demographic"],
                               round(DEMOGRAPHIC_CONFIDENCE * max(float(s), 0.0) / top, 4))
                for i, s in zip(ids, scores) if i not in gone][:k]
        if len(recs) < k:
            return self.fallback(user_id, k, exclude, served, UNKNOWN_USER)
        return RecommendResponse(user_id=user_id, items=as_items(recs), model_version=served.version, fallback=False,
                                 strategy="demographic" if key else "trending")

    def store_down(self, who: str, k: int, exclude: frozenset[str], served: Served | None, exc: BaseException):
        """The event store cannot be read: trending items from memory, flagged degraded.

        Args:
            who: the user or session asking.
            k: how many items.
            exclude: items never to show.
            served: the served model, or None.
            exc: the database's error.

        Returns:
            A fallback list with ``degraded`` and its reason.
        """
        why = f"{STORE_DOWN} ({type(exc).__name__}): trending items from memory"
        log.warning("%s for %s", why, who)
        resp = self.fallback(who, k, exclude, served, why)
        resp.degraded, resp.degraded_reason = True, why
        return resp

    def fallback(self, who: str, k: int, exclude: frozenset[str], served: Served | None, why: str) -> RecommendResponse:
        """Trending items: the model's popularity list, else the event store's recent counts.

        Args:
            who: the user or session asking.
            k: how many items.
            exclude: items never to show (out-of-stock ones are added here).
            served: the served model, or None.
            why: the reason the fallback answers, returned to the caller.

        Returns:
            A ``fallback`` list with low confidences (trending knows nothing about the person).
        """
        exclude = exclude | self.requests.unavailable()
        recs: list[Recommendation] = []
        try:
            if served is not None:
                recs = served.model.popular(k, exclude, in_stock_only=False)
        except Exception:
            log.exception("popularity fallback failed; using the event store's")
        if not recs:
            recs = [Recommendation(i, float(n), f"Popular now in {self.catalog.category_of(i)}", ["popularity"])
                    for i, n in self.catalog.popular if i not in exclude][:k]
        top = max((r.score for r in recs), default=0.0) or 1.0
        for r in recs:  # by the item's relative popularity
            r.confidence = round(TRENDING_CONFIDENCE * max(r.score, 0.0) / top, 4)
        return RecommendResponse(user_id=who, items=as_items(recs), model_version=served.version if served else None,
                                 fallback=True, fallback_reason=why, strategy="trending")


def check_weights(weights: Mapping[str, float] | None, signals: list[str]) -> dict[str, float] | None:
    """A request's weights, kept to the served model's signals and normalised.

    Args:
        weights: signal -> weight (> 0, checked by the schema), or None.
        signals: what the served model can blend (``RecopsModel.signals``).

    Returns:
        The positive weights of the model's signals, scaled to sum to 1; None when there are none
        (the learned ranker answers, and ``weights_used`` says so).
    """
    kept = {name: w for name, w in (weights or {}).items() if name in signals and w > 0}
    total = sum(kept.values())
    return {name: w / total for name, w in kept.items()} if total > 0 else None


def as_items(recs: list[Recommendation]) -> list[RecommendedItem]:
    """Recommendations as the API's items, ranked from 1.

    Args:
        recs: the model's recommendations, best first.

    Returns:
        ``RecommendedItem`` rows.
    """
    return [RecommendedItem(item_id=r.item_id, rank=n + 1, score=round(r.score, 6), reason=r.reason,
                            confidence=r.confidence, sources=r.sources) for n, r in enumerate(recs)]
