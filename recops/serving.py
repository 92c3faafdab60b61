"""What the HTTP service does, as a plain class: load the champion, recommend, fall back, track.

``services/service.py`` is a thin BentoML shell over :class:`Serving`. Keeping the work here keeps
the service module's imports light (BentoML's supervisor process imports it too) and lets the logic
run in-process in tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pandas as pd

from recops import registry
from recops.config import Settings
from recops.features import derive_user_dict
from recops.featurestore import FeatureStoreClient
from recops.models.recommender import Recommendation
from recops.models.rules import BusinessRules
from recops.online import refresh_users
from recops.schema import normalize_events
from recops.ratings import implicit_ratings
from recops.services.schemas import (ImplicitRatingResponse, RecommendedItem, RecommendResponse, TrackEvent,
                                     TrackResponse)
from recops.store import EventStore
from recops.training import HISTORY_LEN

log = logging.getLogger("recops.serving")


class Serving:
    """``version``: serve that registered version and never reload (batch scoring); default: follow
    the @champion alias."""

    def __init__(self, settings: Settings, version: str | None = None):
        self.settings = settings
        self.pinned = version
        self.rules = BusinessRules.from_settings(settings)
        self.store = EventStore(settings.event_store_uri)
        self.features = FeatureStoreClient(settings)
        self._lock = threading.Lock()
        self.model = None
        self.version: str | None = None
        self.load_error: str | None = None
        self.loaded_at: float | None = None
        self.refresh_catalog()
        self.reload()

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
        self._popular = self.store.popular_items()

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
            history, bought = self.store.user_state(user_id=user_id, n=HISTORY_LEN, exclude_types=self.rules.exclude_event_types)
            if session_id:
                s_hist, _ = self.store.user_state(session_id=session_id, n=HISTORY_LEN)
                history = list(dict.fromkeys(s_hist + history))[:HISTORY_LEN]
            feats = self.features.online_user(user_id)
            if not history and feats is None:
                return self.fallback(user_id, k, excl, model, "unknown user: no events yet", version)
            now = time.time()
            # stock changes after training: the live catalog decides, not the model's item table
            gone = self._out_of_stock if self.rules.in_stock_only else set()
            recs = model.recommend(user_id, k, history, derive_user_dict(feats, now) if feats else None,
                                   exclude=excl | bought | gone, now=now, rules=dataclasses.replace(self.rules, in_stock_only=False))
            if not recs:
                return self.fallback(user_id, k, excl | bought, model, "the model found no candidates", version)
            return RecommendResponse(user_id=user_id, items=_items(recs), model_version=version, fallback=False)
        except Exception as exc:
            log.exception("model failed for user %s", user_id)
            return self.fallback(user_id, k, excl, model, f"model error: {type(exc).__name__}", version)

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
        return RecommendResponse(user_id=user_id, items=_items(recs), model_version=version, fallback=True, fallback_reason=why)

    # -- track ----------------------------------------------------------------------------------
    def track(self, evs: list[TrackEvent]) -> TrackResponse:
        """Persist first (durable before the 2xx), then refresh the users' online features."""
        now = pd.Timestamp.now(tz="UTC")
        frame = pd.DataFrame([e.model_dump() for e in evs])
        frame["timestamp"] = [e.timestamp or now for e in evs]
        frame = normalize_events(frame)
        stored = self.store.add_events(frame)
        unknown = sorted(set(frame["item_id"]) - self._known_items) if self._known_items else []
        users = sorted(set(frame["user_id"].dropna()))
        warning = None
        try:
            refresh_users(self.store, self.features, users, self._items, as_of=now)
        except Exception as exc:  # stored already; the next features run will catch up
            log.exception("online feature update failed")
            warning = f"events stored, but the online feature update failed: {type(exc).__name__}: {exc}"
            users = []
        return TrackResponse(accepted=len(frame), stored=stored, duplicates=len(frame) - stored,
                             unknown_items=unknown, online_updated=users, warning=warning)

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

    def close(self) -> None:
        self.store.dispose()

    # -- introspection --------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "model_version": self.version, "model_loaded": self.model is not None,
                "load_error": self.load_error, "events": self.store.count_events()}

    def model_info(self) -> dict:
        m = self.model
        return {"name": self.settings.model_name, "alias": registry.CHAMPION, "version": self.version,
                "loaded_at": self.loaded_at, "load_error": self.load_error,
                "generators": list(m.generators) if m else [], "features": m.feature_names if m else [],
                "meta": m.meta if m else {}}


def _items(recs: list[Recommendation]) -> list[RecommendedItem]:
    return [RecommendedItem(item_id=r.item_id, rank=n + 1, score=round(r.score, 6), reason=r.reason) for n, r in enumerate(recs)]
