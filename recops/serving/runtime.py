"""``Serving``: everything the HTTP service holds, built once, with one object per endpoint family.

    Serving
    ├── champion       ModelSlot      the served model, followed by alias, hot-swapped (state.py)
    ├── catalog        LiveCatalog    stock, categories, the model-free popular list (state.py)
    ├── requests       RequestBuilder the one place a RecommendRequest is built (requests.py)
    ├── recommendations               a model's list for a user or session, fallback (recommend.py)
    ├── experiments    ExperimentRouting  /recommend, /session/recommend as served: the running experiment's
    │                                 variant, interleaving, every list logged as an impression (experiment.py)
    ├── tracking                      /track, /track/batch (track.py)
    └── behavior                      /implicit-rating, /predict, /explain, /next-items, /profile, /deals
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from recops import registry
from recops.config import Settings
from recops.experiments.records import ExperimentStore
from recops.featurestore import FeatureStoreClient
from recops.impressions import ImpressionLog
from recops.online import Refresher
from recops.serving.behavior import Behavior
from recops.serving.experiment import ExperimentRouting
from recops.serving.recommend import Recommendations
from recops.serving.requests import RequestBuilder
from recops.serving.state import LiveCatalog, ModelSlot, SegmentView
from recops.serving.track import Tracking
from recops.store import EventStore

if TYPE_CHECKING:
    from recops.services.packaging import Packaged

log = logging.getLogger("recops.serving")

WARM_ID = "recops-warm-up"  # the id the warm-up reads (nobody's: it finds nothing)


class Serving:
    """The service's parts. ``version``: serve that registered version and never reload (batch
    scoring); ``packaged``: serve that packaged model (a Bento), with no registry; default: follow
    the @champion alias."""

    def __init__(self, settings: Settings, version: str | None = None, packaged: Packaged | None = None):
        self.settings = settings
        self.store = EventStore(settings.event_store_uri)
        self.features = FeatureStoreClient(settings)
        self.catalog = LiveCatalog(self.store)
        self.champion = ModelSlot(settings, registry.CHAMPION, pinned=version, packaged=packaged)
        self.refresher = Refresher(settings, self.store)
        self.segments = SegmentView(settings)
        self.requests = RequestBuilder(settings, self.store, self.features, self.catalog, self.refresher)
        self.recommendations = Recommendations(self.champion, self.requests, self.catalog, self.store)
        self.tracking = Tracking(self.store, self.catalog, self.refresher)
        self.impressions = ImpressionLog(self.store.engine)
        self.experiment_records = ExperimentStore(self.store.engine)
        # one model (batch scoring, a Bento): no online experiment is routed
        self.experiments = ExperimentRouting(settings, self.experiment_records, self.champion, self.recommendations,
                                             self.impressions, follow=version is None and packaged is None)
        self.behavior = Behavior(settings, self.champion, self.requests, self.catalog, self.store,
                                 self.recommendations, self.segments)

    def run_reloader(self, stop: threading.Event) -> None:
        """Every ``reload_interval_seconds``, follow the alias and re-read the catalog (a thread's loop).

        Args:
            stop: set it to end the loop.
        """
        while not stop.wait(self.settings.reload_interval_seconds):
            self.champion.reload()
            self.experiments.refresh()
            self.segments.refresh()
            try:
                self.catalog.refresh()
            except Exception:
                log.exception("could not refresh the catalog")

    def warm(self) -> float:
        """Pay a worker's one-time costs before it takes requests, so its first request is as fast as the
        rest (without this it took 3 s: Feast's import and registry, the first predict, the first queries).
        Nothing is written, logged as an impression or counted.

        Returns:
            The seconds it took. A part that fails (a store away) is left to the first request.
        """
        from recops.models.request import RecommendRequest

        t0 = time.perf_counter()
        for part in (lambda: self.features.online_user(WARM_ID), lambda: self.features.online_session(WARM_ID),
                     lambda: self.store.user_state(user_id=WARM_ID), lambda: self.refresher.is_pending(WARM_ID)):
            try:
                part()
            except Exception:
                log.warning("warm-up: a store did not answer; the first request will", exc_info=True)
        served = self.champion.get()
        if served is not None and len(served.model.items.ids):
            history = (str(served.model.items.ids[0]),)
            try:
                served.model.recommend(RecommendRequest(k=10, history=history, session_items=history))
            except Exception:
                log.warning("warm-up: the model did not answer a first request", exc_info=True)
        return time.perf_counter() - t0

    def health(self) -> dict:
        """Liveness plus what is served.

        Returns:
            The version, why nothing is served (if so), the events stored, the online refresher's
            backlog, the running experiment and the impression log (``HealthResponse``'s fields).
        """
        served = self.champion.get()
        degraded = "; ".join(w for w in (self.champion.degraded, self.features.down) if w) or None
        return {"status": "ok", "worker": os.getpid(),
                "model_version": served.version if served else None, "model_loaded": served is not None,
                "load_error": self.champion.load_error, "degraded": degraded,
                "events": self._count_events(),
                "online_refresh": {"pending": self.refresher.pending(), "done": self.refresher.refreshes,
                                   "last_error": self.refresher.last_error},
                "experiment": self.experiments.current.name if self.experiments.current else None,
                "experiment_share": self.experiments.current.share if self.experiments.current else None,
                "impressions": {"pending": self.impressions.pending(), "written": self.impressions.written,
                                "last_error": self.impressions.last_error}}

    def _count_events(self) -> int | None:
        """The stored events, or None when the event store cannot be reached (health must answer)."""
        try:
            return self.store.count_events()
        except Exception:
            log.exception("the event store is unreachable")
            return None

    def model_info(self) -> dict:
        """The served model.

        Returns:
            Registry name, alias, version, when it was loaded, its generators, features and training
            metadata (``ModelInfoResponse``'s fields).
        """
        served = self.champion.get()
        m = served.model if served else None
        return {"name": self.settings.model_name, "alias": self.champion.alias, "source": self.champion.source,
                "version": served.version if served else None, "loaded_at": self.champion.loaded_at,
                "load_error": self.champion.load_error, "generators": list(m.generators) if m else [],
                "features": m.feature_names if m else [], "meta": m.meta if m else {}}

    def close(self) -> None:
        """Write the pending impressions, stop the refresher and release the event store's connections."""
        self.impressions.close()
        self.refresher.close()
        self.store.dispose()
