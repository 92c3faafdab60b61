"""What the HTTP service does, as a plain class: load the champion, recommend, fall back, track.

``services/service.py`` is a thin BentoML shell over :class:`Serving`. Keeping the work here keeps
the service module's imports light (BentoML's supervisor process imports it too) and lets the logic
run in-process in tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import pandas as pd

from recops import registry
from recops.config import Settings
from recops.deals import DealPolicy, demand_percentile, make_deals
from recops.features import derive_user_dict, session_states, user_features
from recops.featurestore import FeatureStoreClient
from recops.models.intent import infer_intent
from recops.models.recommender import Recommendation
from recops.models.rules import BusinessRules
from recops.online import Refresher
from recops.profile import Catalog, user_profile
from recops.schema import make_event_id
from recops.ratings import implicit_ratings
from recops.services.schemas import (DealsResponse, ExplainResponse, ImplicitRatingResponse, NextItemsResponse,
                                     PredictResponse, ProfileResponse, RecommendedItem, RecommendResponse,
                                     SessionRecommendResponse, TrackEvent, TrackResponse)
from recops.store import EventStore
from recops.training import HISTORY_LEN

log = logging.getLogger("recops.serving")


class NoModel(RuntimeError):
    """No champion is loaded (the service answers 503)."""


class UnknownItem(LookupError):
    """The item is not in the served model's catalog (the service answers 404)."""


class UnknownUser(LookupError):
    """Nothing is known about the user (the service answers 404)."""


TRENDING_CONFIDENCE = 0.2  # the most a trending (non-personal) recommendation's confidence can be
SESSION_GAP_SECONDS = 30 * 60  # events closer than this to now are the user's live session
DEMOGRAPHIC_CONFIDENCE = 0.35  # ... and a demographic one's (it knows the segment, not the person)


class Serving:
    """``version``: serve that registered version and never reload (batch scoring); default: follow
    the @champion alias."""

    def __init__(self, settings: Settings, version: str | None = None):
        self.settings = settings
        self.pinned = version
        self.rules = BusinessRules.from_settings(settings)
        self.deal_policy = DealPolicy.from_settings(settings)
        self.store = EventStore(settings.event_store_uri)
        self.features = FeatureStoreClient(settings)
        self._lock = threading.Lock()
        self.model = None
        self.version: str | None = None
        self.load_error: str | None = None
        self.loaded_at: float | None = None
        self.refresh_catalog()
        self.reload()
        self.refresher = Refresher(settings)

    # -- model lifecycle ------------------------------------------------------------------------
    def reload(self) -> None:
        """Load the @champion version if it changed; on failure keep serving what is loaded."""
        try:
            version = self.pinned or registry.alias_version(self.settings, registry.CHAMPION)
            if version is not None and version != self.version:
                model = registry.load_version(self.settings, version)
                with self._lock:
                    self.model, self.version, self.loaded_at, self.load_error = model, version, time.time(), None
                log.info("serving champion version %s", version)
            elif version is None and self.model is None:
                self.load_error = "no model has the @champion alias yet"
        except Exception as exc:  # the previous model (or the fallback) keeps serving
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the champion")

    def refresh_catalog(self) -> None:
        items = self.store.items()
        self._items = items
        self._known_items = set(items["item_id"])
        self._category = dict(zip(items["item_id"], items["category"]))
        self._in_stock = dict(zip(items["item_id"], items["in_stock"]))
        self._out_of_stock = set(items.loc[~items["in_stock"], "item_id"])
        counts = self.store.popular_items(n=max(len(items), 100))  # one query: the fallback and deal demand
        self._popular = counts[:100]
        self._catalog = Catalog.of(items)
        # deals: an item's demand is its percentile of recent events in the live catalog (none: 0)
        recent = pd.Series(dict(counts), dtype=float)
        self._deal_info = items.set_index("item_id")[["price", "title", "category"]].assign(
            demand=lambda d: demand_percentile(recent.reindex(d.index).fillna(0.0)))

    def run_reloader(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.reload_interval_seconds):
            self.reload()
            try:
                self.refresh_catalog()
            except Exception:
                log.exception("could not refresh the catalog")

    # -- recommend ------------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, session_id: str | None = None,
                  exclude: list[str] | None = None) -> RecommendResponse:
        with self._lock:
            model, version = self.model, self.version
        excl = set(exclude or ())
        if model is None:
            return self.fallback(user_id, k, excl, None, f"no champion model: {self.load_error or 'not loaded'}")
        try:
            history, bought, seen = self.store.user_state(user_id=user_id, n=HISTORY_LEN, exclude_types=self.rules.exclude_event_types)
            intent, shares = None, None
            # the live session: the named one, else what the user touched in the last SESSION_GAP
            live = [h for h, t in zip(history, seen) if t >= time.time() - SESSION_GAP_SECONDS]
            if session_id:
                live = self.store.user_state(session_id=session_id, n=HISTORY_LEN).history
                history = list(dict.fromkeys(live + history))[:HISTORY_LEN]
                state = self.features.online_session(session_id)
                intent, shares = (infer_intent(state).name, _shares(state)) if state else (None, None)
            feats = self._user_features(user_id)
            if not history and feats is None:
                return self.cold_start(user_id, k, excl, model, version)
            strategy = "personalized"
            if intent is None and len(history) < self.settings.new_user_items:
                # a new user's first events: read them as a visit, so their intent steers the list
                state = session_states(self.store.events_of([user_id]).assign(session_id=user_id), self._category)
                state = state.iloc[0].to_dict() if len(state) else None
                intent, shares, strategy = infer_intent(state).name, _shares(state), "session"
            now = time.time()
            # stock changes after training: the live catalog decides, not the model's item table
            gone = self._out_of_stock if self.rules.in_stock_only else set()
            recs = model.recommend(user_id, k, history, derive_user_dict(feats, now) if feats else None,
                                   exclude=excl | bought | gone, now=now, rules=dataclasses.replace(self.rules, in_stock_only=False),
                                   intent=intent, session_categories=shares, session_items=live)
            if not recs:
                return self.fallback(user_id, k, excl | bought, model, "the model found no candidates", version)
            return RecommendResponse(user_id=user_id, items=_items(recs), model_version=version, fallback=False, strategy=strategy)
        except Exception as exc:
            log.exception("model failed for user %s", user_id)
            return self.fallback(user_id, k, excl, model, f"model error: {type(exc).__name__}", version)

    def _user_features(self, user_id: str) -> dict | None:
        """The user's online features; right after /track, while their refresh is still queued,
        computed here from the event store by the same function (read your own writes at once)."""
        if not self.refresher.is_pending(user=user_id):
            return self.features.online_user(user_id)
        ev = self.store.events_of([user_id])
        if ev.empty:
            return None
        return user_features(ev, pd.DataFrame({"user_id": [user_id], "as_of": pd.Timestamp.now(tz="UTC")}), self._items).iloc[0].to_dict()

    def cold_start(self, user_id: str, k: int, exclude: set[str], model, version: str | None) -> RecommendResponse:
        """A user with no events: their demographic segment's favourites when the users table knows
        their age, gender or region, else trending items (the fallback)."""
        row = self.store.user_row(user_id)
        demo = getattr(model, "demographic", None)
        if demo is None or not row or all(row.get(c) is None for c in ("age", "gender", "region")):
            return self.fallback(user_id, k, exclude, model, "unknown user: no events yet", version)
        gone = exclude | (self._out_of_stock if self.rules.in_stock_only else set())
        ids, scores, key = demo.score_profile(row, 3 * k + len(gone))
        who = ", ".join(str(row[c]) for c in ("region", "gender") if row.get(c)) or "your segment"
        top = float(scores[0]) if len(scores) and scores[0] > 0 else 1.0
        recs = [Recommendation(str(i), float(s), f"Popular with shoppers like you ({who})" if key else f"Popular now in {self._category.get(i, 'the catalog')}",
                               ["demographic"], round(DEMOGRAPHIC_CONFIDENCE * max(float(s), 0.0) / top, 4))
                for i, s in zip(ids, scores) if i not in gone][:k]
        if len(recs) < k:
            return self.fallback(user_id, k, exclude, model, "unknown user: no events yet", version)
        return RecommendResponse(user_id=user_id, items=_items(recs), model_version=version, fallback=False,
                                 strategy="demographic" if key else "trending")

    def fallback(self, user_id: str, k: int, exclude: set[str], model, why: str, version: str | None = None) -> RecommendResponse:
        """Trending items: the model's popularity list, else the event store's recent counts."""
        recs: list[Recommendation] = []
        if self.rules.in_stock_only:
            exclude = exclude | self._out_of_stock
        try:
            if model is not None:
                recs = model.popular(k, exclude, in_stock_only=False)
        except Exception:
            log.exception("popularity fallback failed; using the event store's")
        if not recs:
            recs = [Recommendation(i, float(n), f"Popular now in {self._category.get(i, 'the catalog')}", ["popularity"])
                    for i, n in self._popular if i not in exclude][:k]
        top = max((r.score for r in recs), default=0.0) or 1.0
        for r in recs:  # trending knows nothing about the person: low confidence, by the item's relative popularity
            r.confidence = round(TRENDING_CONFIDENCE * max(r.score, 0.0) / top, 4)
        return RecommendResponse(user_id=user_id, items=_items(recs), model_version=version, fallback=True, fallback_reason=why,
                                 strategy="trending")

    def session_recommend(self, session_id: str, k: int = 10, exclude: list[str] | None = None) -> SessionRecommendResponse:
        """Recommendations for an (anonymous) session from its live state: its items are the
        history, its behavioral features (built from its own events, as for a user) feed the
        ranker, and its intent tilts the ranking and writes the reasons. Items already carted or
        bought in the session are not shown again."""
        self.refresher.wait(session=session_id)
        state = self.features.online_session(session_id)
        intent = infer_intent(state)
        with self._lock:
            model, version = self.model, self.version
        excl = set(exclude or ())

        def answer(resp: RecommendResponse) -> SessionRecommendResponse:
            return SessionRecommendResponse(session_id=session_id, intent=intent.name, intent_reason=intent.why,
                                            signals=intent.signals, **resp.model_dump(exclude={"user_id"}))

        if state is None:
            return answer(self.fallback(session_id, k, excl, model, "new session: no events yet", version))
        if model is None:
            return answer(self.fallback(session_id, k, excl, None, f"no champion model: {self.load_error or 'not loaded'}"))
        try:
            history = json.loads(state["s_items"])
            done = self.store.user_state(session_id=session_id, n=0,
                                         exclude_types=(*self.rules.exclude_event_types, "add_to_cart")).excluded
            feats = self._session_features(session_id, state)
            now = time.time()
            gone = self._out_of_stock if self.rules.in_stock_only else set()
            recs = model.recommend(None, k, history, feats, exclude=excl | done | gone, now=now,
                                   rules=dataclasses.replace(self.rules, in_stock_only=False), intent=intent.name,
                                   session_categories=_shares(state), session_items=history)
            if not recs:
                return answer(self.fallback(session_id, k, excl | done, model, "the model found no candidates", version))
            return answer(RecommendResponse(user_id=session_id, items=_items(recs), model_version=version, fallback=False,
                                            strategy="session"))
        except Exception as exc:
            log.exception("model failed for session %s", session_id)
            return answer(self.fallback(session_id, k, excl, model, f"model error: {type(exc).__name__}", version))

    def _session_features(self, session_id: str, state: dict) -> dict:
        """The ranker's user features for a session: its user's when it has one, else the same
        features computed from the session's own events (an anonymous visitor seen as a user)."""
        now = time.time()
        user = state.get("s_user_id")
        feats = self.features.online_user(user) if user else None
        if feats is None:
            ev = self.store.events_of([], [session_id]).assign(user_id=session_id)
            row = user_features(ev, pd.DataFrame({"user_id": [session_id], "as_of": pd.Timestamp.now(tz="UTC")}), self._items)
            feats = row.iloc[0].to_dict()
        return derive_user_dict(feats, now)

    # -- track ----------------------------------------------------------------------------------
    def track(self, evs: list[TrackEvent]) -> TrackResponse:
        """Persist (durable before the 2xx; a repeated event_id is stored once), then queue the
        touched users and sessions for the online refresh (``recops.online.Refresher``): reads that
        need their online state wait for it, so the next request reflects the events."""
        now = time.time()
        rows = [_event_row(e, now) for e in evs]
        stored = len(self.store.insert_events(rows))
        unknown = sorted({r["item_id"] for r in rows} - self._known_items) if self._known_items else []
        users = sorted({r["user_id"] for r in rows if r["user_id"]})
        sessions = sorted({r["session_id"] for r in rows if r["session_id"]})
        self.refresher.submit(users, sessions)
        err = self.refresher.last_error
        return TrackResponse(accepted=len(rows), stored=stored, duplicates=len(rows) - stored, unknown_items=unknown,
                             online_updated=users, sessions_updated=sessions,
                             warning=f"events stored; the last online refresh failed ({err}), the next one retries" if err else None)

    # -- behavioral ---------------------------------------------------------------------------------
    def implicit_rating(self, user_id: str, item_id: str) -> ImplicitRatingResponse:
        """The user's implicit rating of an item from their events on it, as of now (same weights,
        decay and mapping as training: ``recops.ratings``)."""
        mine = self.store.user_events(user_id)
        ev = mine[mine["item_id"] == item_id]
        score = rating = 0.0
        if not ev.empty:
            r = implicit_ratings(ev, self.settings.event_types, self.settings.decay_half_life_days,
                                 as_of=pd.Timestamp.now(tz="UTC"))
            score, rating = float(r["score"].iloc[0]), float(r["rating"].iloc[0])
        return ImplicitRatingResponse(
            user_id=user_id, item_id=item_id, rating=round(rating, 4), score=round(score, 4),
            events={str(k): int(v) for k, v in ev["event_type"].value_counts().items()},
            last_event=ev["timestamp"].max().to_pydatetime() if not ev.empty else None,
            known_user=not mine.empty, known_item=item_id in self._known_items,
            half_life_days=self.settings.decay_half_life_days)

    def _context(self, user_id: str):
        """The served model and what it needs about a user: recent items, stored features."""
        with self._lock:
            model, version = self.model, self.version
        if model is None:
            raise NoModel(f"no champion model: {self.load_error or 'not loaded'}")
        history = self.store.user_state(user_id=user_id, n=HISTORY_LEN).history
        feats = self._user_features(user_id)
        return model, version, history, derive_user_dict(feats, time.time()) if feats else None

    def _check_item(self, model, item_id: str) -> None:
        if item_id not in model.items.index:
            raise UnknownItem(f"item {item_id!r} is not in the served model's catalog")

    def predict(self, user_id: str, item_id: str) -> PredictResponse:
        """The user's preference score for an item and the probability they interact with it."""
        model, version, history, feats = self._context(user_id)
        self._check_item(model, item_id)
        p = model.predict(user_id, item_id, history, feats)
        return PredictResponse(user_id=user_id, item_id=item_id, model_version=version, known_user=feats is not None or bool(history), **p)

    def explain(self, user_id: str, item_id: str) -> ExplainResponse:
        """Why an item for a user: generators that proposed it and the ranker's top contributions."""
        model, version, history, feats = self._context(user_id)
        self._check_item(model, item_id)
        return ExplainResponse(user_id=user_id, item_id=item_id, model_version=version, **model.explain(user_id, item_id, history, feats))

    def next_items(self, recent: list[str], k: int, exclude: list[str] | None = None) -> NextItemsResponse:
        """The likeliest next items after a session's recent items (newest first): directional
        sequential rules of the served model, popularity when the items say nothing yet."""
        with self._lock:
            model, version = self.model, self.version
        if model is None or getattr(model, "next_item", None) is None:
            raise NoModel(f"no champion model with a next-item model: {self.load_error or 'retrain to add one'}")
        gone = set(exclude or ()) | (self._out_of_stock if self.rules.in_stock_only else set())
        recs = model.next_items(recent, k, gone)
        unknown = [i for i in recent if i not in model.next_item.index_]
        return NextItemsResponse(items=_items(recs), model_version=version, unknown_items=unknown)

    def profile(self, user_id: str) -> ProfileResponse:
        """Static attributes, preferences and behavioral features of a user, as of now: the profile
        features (``recops.profile``, the offline code on the user's events), the stored online
        features (Feast) with their request-time derivations, and the recent items."""
        self.refresher.wait(user=user_id)
        now = pd.Timestamp.now(tz="UTC")
        ev, row = self.store.user_events(user_id), self.store.user_row(user_id)
        if ev.empty and row is None:
            raise UnknownUser(f"user {user_id!r} has no events and no row in the users table")
        prof = user_profile(ev, self._catalog, row, as_of=now, user_id=user_id)
        online = self.features.online_user(user_id)
        stored = derive_user_dict(online, now.timestamp()) if online else {}
        recent = json.loads(stored.pop("u_recent_items", None) or "[]")
        ratings = json.loads(stored.pop("u_recent_ratings", None) or "{}")
        affinity = json.loads(stored.pop("u_category_affinity", None) or "{}")
        return ProfileResponse(user_id=user_id, as_of=now.to_pydatetime(), events=len(ev), static=prof["static"],
                               preferences={**prof["preferences"], "category_affinity": affinity},
                               features=prof["features"], online_features=stored, recent_items=recent,
                               recent_ratings=ratings)

    def deals(self, user_id: str, k: int) -> DealsResponse:
        """Personalised deals on items the user is likely to want (their recommendations). The
        discount follows their price sensitivity, the item's demand, the season and their region,
        within the server's policy (``recops.deals``): capped, floored, expiring."""
        recs = self.recommend(user_id, min(3 * k, 100))
        ev, row = self.store.user_events(user_id), self.store.user_row(user_id) or {}
        sensitivity = user_profile(ev, self._catalog, row, user_id=user_id)["features"]["p_price_sensitivity"]
        now = pd.Timestamp.now(tz="UTC")
        deals = make_deals([(it.item_id, it.score) for it in recs.items], self._deal_info, sensitivity, row.get("region"),
                           now, self.deal_policy, k)
        return DealsResponse(user_id=user_id, deals=deals, price_sensitivity=sensitivity,
                             max_discount=self.deal_policy.max_discount, floor_ratio=self.deal_policy.floor_ratio,
                             model_version=recs.model_version, fallback=recs.fallback)

    def close(self) -> None:
        self.refresher.close()
        self.store.dispose()

    # -- introspection --------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "model_version": self.version, "model_loaded": self.model is not None,
                "load_error": self.load_error, "events": self.store.count_events(),
                "online_refresh": {"pending": self.refresher.pending(), "done": self.refresher.refreshes,
                                   "last_error": self.refresher.last_error}}

    def model_info(self) -> dict:
        m = self.model
        return {"name": self.settings.model_name, "alias": registry.CHAMPION, "version": self.version,
                "loaded_at": self.loaded_at, "load_error": self.load_error,
                "generators": list(m.generators) if m else [], "features": m.feature_names if m else [],
                "meta": m.meta if m else {}}


def _event_row(e: TrackEvent, now: float) -> dict:
    """A validated event as an event-store row (no pandas on the /track path: it cost 6 ms)."""
    ts = e.timestamp.timestamp() if e.timestamp else now
    event_id = e.event_id or make_event_id(e.user_id, e.item_id, e.event_type, pd.Timestamp(ts, unit="s", tz="UTC"), e.session_id)
    return {"event_id": event_id, "user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type, "timestamp": ts,
            "session_id": e.session_id, "value": e.value, "context": json.dumps(e.context, sort_keys=True) if e.context else None,
            "ingested_at": now}


def _items(recs: list[Recommendation]) -> list[RecommendedItem]:
    return [RecommendedItem(item_id=r.item_id, rank=n + 1, score=round(r.score, 6), reason=r.reason,
                            confidence=r.confidence, sources=r.sources) for n, r in enumerate(recs)]


def _shares(state: dict | None) -> dict[str, float]:
    """Each category's share of a session's events."""
    cats = json.loads(state["s_categories"]) if state and state.get("s_categories") else {}
    total = sum(cats.values()) or 1
    return {c: n / total for c, n in cats.items()}
