"""The recops HTTP service (BentoML): recommendations from the @champion model, event tracking.

- ``POST /recommend``: items, scores, a reason per item, the model version, and whether (and why)
  the fallback answered. The fallback (trending/popular) answers when there is no champion, the
  model fails, or the user is unknown: a valid request never gets a 5xx.
- ``POST /track`` (one event) and ``POST /track/batch`` (a list). Events are persisted first, then the users' online features
  are recomputed and pushed to the Feast online store, so the next request sees them.
- ``GET /health``, ``GET /model``. Invalid input gets a 400 naming the bad field.

The champion is loaded from the MLflow registry by alias and re-checked every
``reload_interval_seconds``: promoting a new version needs no restart.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated

import bentoml
import pandas as pd
from fastapi import FastAPI
from pydantic import Field

from recops import registry
from recops.config import load_settings
from recops.features import derive_user_dict
from recops.featurestore import FeatureStoreClient
from recops.models.recommender import Recommendation
from recops.online import refresh_users
from recops.schema import normalize_events
from recops.store import EventStore
from recops.training import EXCLUDE_EVENT_TYPES, HISTORY_LEN
from recops.services.schemas import RecommendedItem, RecommendResponse, TrackEvent, TrackResponse

log = logging.getLogger("recops.service")
app = FastAPI(title="recops", description="Real-time behavioral recommendations")

MAX_BATCH = 10_000


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="recops", workers=1, threads=4, traffic={"timeout": 30})
class Recops:
    def __init__(self) -> None:
        self.settings = load_settings()
        self.store = EventStore(self.settings.event_store_uri)
        self.features = FeatureStoreClient(self.settings)
        self._lock = threading.Lock()
        self.model = None
        self.version: str | None = None
        self.load_error: str | None = None
        self.loaded_at: float | None = None
        self._items = self.store.items()
        self._popular = self.store.popular_items()
        self._reload()
        self._stop = threading.Event()
        threading.Thread(target=self._reload_loop, name="champion-reloader", daemon=True).start()

    # -- model lifecycle ------------------------------------------------------------------------
    def _reload(self) -> None:
        """Load the @champion version if it changed; on failure keep serving what is loaded."""
        try:
            version = registry.alias_version(self.settings, registry.CHAMPION)
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

    def _reload_loop(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_seconds):
            self._reload()
            try:
                self._items = self.store.items()
                self._popular = self.store.popular_items()
            except Exception:
                log.exception("could not refresh the catalog")

    # -- API ------------------------------------------------------------------------------------
    @bentoml.api(route="/recommend")
    def recommend(
        self,
        user_id: Annotated[str, Field(min_length=1, max_length=128, description="the user to recommend for")],
        k: Annotated[int, Field(ge=1, le=100, description="how many items")] = 10,
        session_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None,
        exclude: Annotated[list[str], Field(max_length=1000)] | None = None,
    ) -> RecommendResponse:
        """Top-k items for a user, each with a reason. Never a 5xx for a valid request."""
        with self._lock:
            model, version = self.model, self.version
        excl = set(exclude or ())
        if model is None:
            return self._fallback(user_id, k, excl, None, f"no champion model: {self.load_error or 'not loaded'}")
        try:
            history, bought = self.store.user_state(user_id=user_id, n=HISTORY_LEN, exclude_types=EXCLUDE_EVENT_TYPES)
            if session_id:
                s_hist, _ = self.store.user_state(session_id=session_id, n=HISTORY_LEN)
                history = list(dict.fromkeys(s_hist + history))[:HISTORY_LEN]
            feats = self.features.online_user(user_id)
            if not history and feats is None:
                return self._fallback(user_id, k, excl, model, "unknown user: no events yet", version)
            now = time.time()
            recs = model.recommend(user_id, k, history, derive_user_dict(feats, now) if feats else None,
                                   exclude=excl | bought, now=now)
            if not recs:
                return self._fallback(user_id, k, excl | bought, model, "the model found no candidates", version)
            return RecommendResponse(user_id=user_id, items=_items(recs), model_version=version, fallback=False)
        except Exception as exc:
            log.exception("model failed for user %s", user_id)
            return self._fallback(user_id, k, excl, model, f"model error: {type(exc).__name__}", version)

    def _fallback(self, user_id: str, k: int, exclude: set[str], model, why: str, version: str | None = None) -> RecommendResponse:
        recs: list[Recommendation] = []
        try:
            if model is not None:
                recs = model.popular(k, exclude)
        except Exception:
            log.exception("popularity fallback failed; using the event store's")
        if not recs:
            cats = dict(zip(self._items["item_id"], self._items["category"])) if len(self._items) else {}
            stock = dict(zip(self._items["item_id"], self._items["in_stock"])) if len(self._items) else {}
            recs = [Recommendation(i, float(n), f"Popular now in {cats.get(i, 'the catalog')}", ["popularity"])
                    for i, n in self._popular if i not in exclude and stock.get(i, True)][:k]
        return RecommendResponse(user_id=user_id, items=_items(recs), model_version=version, fallback=True, fallback_reason=why)

    @bentoml.api(route="/track")
    def track(self, event: TrackEvent, /) -> TrackResponse:
        """Store one event (idempotent on event_id), then refresh the user's online features."""
        return self._track([event])

    @bentoml.api(route="/track/batch")
    def track_batch(self, events: list[TrackEvent], /) -> TrackResponse:
        """Store a list of events (all or nothing if any is invalid), then refresh online features."""
        if not events:
            raise bentoml.exceptions.InvalidArgument("empty batch: send at least one event")
        if len(events) > MAX_BATCH:
            raise bentoml.exceptions.InvalidArgument(f"batch too large: {len(events)} events (max {MAX_BATCH})")
        return self._track(events)

    def _track(self, evs: list[TrackEvent]) -> TrackResponse:
        now = pd.Timestamp.now(tz="UTC")
        frame = pd.DataFrame([e.model_dump() for e in evs])
        frame["timestamp"] = [e.timestamp or now for e in evs]
        frame = normalize_events(frame)
        stored = self.store.add_events(frame)  # durable before any 2xx
        known = set(self._items["item_id"]) if len(self._items) else set()
        unknown = sorted(set(frame["item_id"]) - known) if known else []
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

    @app.get("/health")
    def health(self) -> dict:
        """Liveness plus what is being served."""
        return {"status": "ok", "model_version": self.version, "model_loaded": self.model is not None,
                "load_error": self.load_error, "events": self.store.count_events()}

    @app.get("/model")
    def model_info(self) -> dict:
        """The served champion: registry name, version, when it was loaded, its features."""
        m = self.model
        return {"name": self.settings.model_name, "alias": registry.CHAMPION, "version": self.version,
                "loaded_at": self.loaded_at, "load_error": self.load_error,
                "generators": list(m.generators) if m else [], "features": m.feature_names if m else [],
                "meta": m.meta if m else {}}


def _items(recs: list[Recommendation]) -> list[RecommendedItem]:
    return [RecommendedItem(item_id=r.item_id, rank=n + 1, score=round(r.score, 6), reason=r.reason) for n, r in enumerate(recs)]
