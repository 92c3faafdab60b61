"""The recops HTTP service (BentoML), a thin shell over ``recops.serving.Serving``.

- ``POST /recommend``: items, scores, a reason per item, the model version, and whether (and why)
  the fallback answered (no champion, a failing model, an unknown user): never a 5xx for a valid request.
- ``POST /track`` (one event) and ``POST /track/batch`` (a list): persisted before the 2xx, then the
  users' online features, their sessions' state and recent items are recomputed and written to the
  Feast online store by a background refresher; reads that need that state wait for it.
- ``POST /session/recommend``: the same for a session (anonymous shoppers), steered by its intent.
- ``GET /implicit-rating?user_id=&item_id=``: the user's implicit rating of an item, as of now.
- ``POST /next-items``: what usually comes next after a session's recent items.
- ``POST /predict`` (preference score, calibrated probability), ``GET /explain`` (generators and the
  ranker's feature contributions in words).
- ``GET /users/{id}/profile``: static attributes, preferences, 20+ behavioral features.
- ``POST /deals``: personalised deals, capped and floored by the server's policy.
- ``GET /segments``: the user segments (K-Means, k by silhouette) the features flow fitted.
- ``GET /experiments``, ``GET /experiments/{name}``: online experiments and their figures (the same
  JSON as ``recops experiment status NAME --json``).
- ``GET /health``, ``GET /model``. Invalid input gets a 4xx naming the bad field.
- Every route but liveness, readiness and the docs needs a bearer token with its scope (``read``,
  ``track``, ``admin``; ``recops.auth``, ``recops.services.guard``).
- ``GET /metrics``: Prometheus text: BentoML's requests and latency per endpoint, then recops's own
  (answers by strategy, variant and fallback; events by outcome; the refresher's backlog and lag;
  the served model and its age): ``recops.services.metrics``.

Under a running experiment, ``/recommend`` and ``/session/recommend`` answer from the user's variant
(or interleave both models) and say so (``request_id``, ``experiment``, ``variant``); every served
list is logged as an impression.

The champion is loaded from the MLflow registry by alias and re-checked every
``reload_interval_seconds``: promoting a new version needs no restart. Served from a Bento
(``recops package``), the Bento's ``model`` argument names a packaged model instead: that one is
served, with no registry (``recops.services.packaging``).

Only light imports here: BentoML's supervisor process imports this module too, and pandas, LightGBM,
Feast and MLflow there would cost ~200 MB for nothing. The worker loads them in ``__init__``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Annotated

import bentoml
from fastapi import Body, FastAPI, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from recops.config import load_settings
from recops.services.guard import Guard
from recops.services.openapi import RETRY_AFTER_SECONDS, ApiInfo, OneErrorShape
from recops.services.schemas import (
    DealsRequest,
    DealsResponse,
    ExperimentStatus,
    ExperimentSummary,
    ExplainResponse,
    HealthResponse,
    ImplicitRatingResponse,
    K,
    ModelInfoResponse,
    NextItemsResponse,
    PredictResponse,
    ProfileResponse,
    RecommendResponse,
    SegmentsResponse,
    SessionRecommendResponse,
    TrackEvent,
    TrackResponse,
    Weights,
)

# FastAPI's own /docs page loads its assets from a CDN (blank offline): BentoML's Swagger UI at / is the docs
app = FastAPI(title="recops", docs_url=None, redoc_url=None)


@app.get("/docs", include_in_schema=False)
def docs() -> RedirectResponse:
    return RedirectResponse("/")


@app.exception_handler(RequestValidationError)
async def invalid_request(_request, exc: RequestValidationError) -> JSONResponse:
    """The FastAPI routes' invalid input: a 400 in BentoML's shape (``error``, ``detail``), as the other routes'."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    what = "; ".join(f"{'.'.join(str(x) for x in d['loc'][1:]) or 'body'}: {d['msg']}" for d in detail[:5])
    return JSONResponse({"error": f"{len(detail)} validation error(s): {what}", "detail": detail}, status_code=400)


@app.exception_handler(StarletteHTTPException)
async def http_error(_request, exc: StarletteHTTPException) -> JSONResponse:
    """The FastAPI routes' errors (404, 503) in BentoML's shape: ``{"error": message}``."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

MAX_BATCH = 10_000
def example(value) -> dict:
    """A field's example for JSON Schema (``examples``) and for Swagger UI (OpenAPI 3.0's ``example``)."""
    return {"examples": [value], "json_schema_extra": {"example": value}}


UserQuery = Annotated[str, Query(min_length=1, max_length=128, description="the user")]
ItemQuery = Annotated[str, Query(min_length=1, max_length=128, description="the item")]


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="recops", workers=load_settings().workers, threads=4, traffic={"timeout": 30})
class Recops:
    def __init__(self) -> None:
        parent = os.getppid()  # now: if BentoML's supervisor dies while this worker starts, the watch still sees it
        try:
            self._start(parent)
        except BaseException:
            # uvicorn would go on serving this worker with no service behind it (a 500 for every request):
            # exit, and BentoML starts the worker again
            logging.getLogger("recops.service").exception("this worker could not start; it exits to be restarted")
            os._exit(3)

    def _start(self, parent: int) -> None:
        # a registry outage must not hold the server for minutes of MLflow's retries (the champion is re-checked
        # every reload_interval_seconds, and a local copy serves meanwhile)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        from recops.services.metrics import ServiceMetrics
        from recops.services.packaging import from_arguments
        from recops.serving import Serving

        self.rt = Serving(load_settings(), packaged=from_arguments())  # a Bento's model, or the registry's
        self.metrics = ServiceMetrics(self.rt)
        self.rt.refresher.start()  # one worker runs it; it first refreshes what a crash left marked
        logging.getLogger("recops.service").info("worker warmed up in %.1f s", self.rt.warm())
        self._stop = threading.Event()
        threading.Thread(target=self.rt.run_reloader, args=(self._stop,), name="champion-reloader", daemon=True).start()
        # a kill -9 of BentoML's supervisor leaves this worker (and so the refresher) with nobody to stop it:
        # write what is pending and exit
        from recops.online import watch_parent

        threading.Thread(target=watch_parent, args=(parent, self.rt.close, self._stop), name="orphan-watch",
                         daemon=True).start()

    @bentoml.api(route="/recommend")
    async def recommend(
        self,
        user_id: Annotated[str, Field(min_length=1, max_length=128, description="the user to recommend for",
                                      **example("u17"))],
        k: K = 10,
        session_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None,
        exclude: Annotated[list[str], Field(max_length=1000)] | None = None,
        weights: Annotated[Weights, Field(description="blend these signals instead of the learned ranker, by "
                                          "weight (> 0)", **example({"covisit": 0.6, "next_item": 0.4}))] | None = None,
    ) -> RecommendResponse:
        """Top-k items for a user, each with a reason. Never a 5xx for a valid request. With ``weights``,
        the named signals' normalised scores are blended by them instead of the learned ranker
        (business rules, reasons and the fallback stay): ``weights_used`` says how; signals the served
        model does not blend are left out, and with none left the learned ranker answers."""
        # async on purpose: the work is ~3 ms of GIL-bound CPU, and running it on the event loop saves the
        # thread-pool hand-off, which cost more than the work itself (bench/serving.py)
        resp = self.rt.experiments.recommend(user_id, k, session_id, exclude, weights.given() if weights else None)
        self.metrics.answered("/recommend", resp)
        return resp

    @bentoml.api(route="/session/recommend")
    def session_recommend(
        self,
        session_id: Annotated[str, Field(min_length=1, max_length=128, description="the session (anonymous or not)",
                                         **example("s-7f3a"))],
        k: K = 10,
        exclude: Annotated[list[str], Field(max_length=1000)] | None = None,
    ) -> SessionRecommendResponse:
        """Top-k for a session from its live state, steered by its intent (browsing, research,
        transactional), with the intent, the signals it was read from and a reason per item."""
        resp = self.rt.experiments.session_recommend(session_id, k, exclude)
        self.metrics.answered("/session/recommend", resp)
        return resp

    @bentoml.api(route="/next-items")
    def next_items(
        self,
        recent_item_ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]],
                                   Field(min_length=1, max_length=50, description="the session's items, newest first",
                                         **example(["i42", "i7"]))],
        k: K = 10,
        exclude: Annotated[list[str], Field(max_length=1000)] | None = None,
    ) -> NextItemsResponse:
        """What usually comes next after these items (directional sequential rules), with the
        recent item that leads to each; popularity when the items say nothing yet."""
        return _answer(self.rt.behavior.next_items, recent_item_ids, k, exclude, api=True)

    @app.post("/track", responses={400: {"description": "an invalid event (nothing is stored)"}})
    async def track(self, event: TrackEvent) -> TrackResponse:
        """Store one event (idempotent on event_id), then refresh the user's online state."""
        # async: one indexed insert (~1 ms) costs less on the event loop than the thread-pool hand-off;
        # the batch endpoint, whose insert takes longer, stays in the pool. A FastAPI route, as the batch's:
        # BentoML's exceptions cannot say why a 503 is one
        return self._track([event])

    def _track(self, events: list) -> TrackResponse:
        """Store events; the event store away is a 503 with Retry-After (nothing stored)."""
        from recops.serving.errors import StoreDown

        try:
            resp = self.rt.tracking.track(events)
        except StoreDown as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        self.metrics.tracked(events, resp)
        return resp

    @app.post("/track/batch", responses={400: {"description": "an invalid event (none of the batch is stored)"}})
    def track_batch(self, events: Annotated[list[TrackEvent], Body(min_length=1, max_length=MAX_BATCH)]
                    ) -> TrackResponse:
        """Store a list of 1 to 10,000 events (none if any is invalid), then refresh the users' online state."""
        # a FastAPI route: BentoML answers a malformed JSON list with a 500, and builds its JSON schema per request
        return self._track(events)

    @app.get("/implicit-rating")
    def implicit_rating(self, user_id: UserQuery, item_id: ItemQuery) -> ImplicitRatingResponse:
        """The user's implicit rating (0-5) of an item, from their events on it, as of now."""
        return self.rt.behavior.implicit_rating(user_id, item_id)

    @bentoml.api(route="/predict")
    def predict(
        self,
        user_id: Annotated[str, Field(min_length=1, max_length=128, **example("u17"))],
        item_id: Annotated[str, Field(min_length=1, max_length=128, **example("i42"))],
    ) -> PredictResponse:
        """The user's preference score for an item and the calibrated probability of an interaction."""
        return _answer(self.rt.behavior.predict, user_id, item_id, api=True)

    @app.get("/explain", responses={404: {"description": "the item is not in the served model's catalog"},
                                    503: {"description": "no model is served"}})
    def explain(self, user_id: UserQuery, item_id: ItemQuery) -> ExplainResponse:
        """Why this item for this user: the generators that proposed it and the ranker's top feature
        contributions (LightGBM ``pred_contrib``) as readable reasons."""
        return _answer(self.rt.behavior.explain, user_id, item_id)

    @app.get("/users/{user_id}/profile", responses={404: {"description": "nobody knows the user: no events, "
                                                            "no row in the users table"}})
    def profile(self, user_id: Annotated[str, Path(min_length=1, max_length=128)]) -> ProfileResponse:
        """Static attributes, preferences and 20+ behavioral features of a user, as of now."""
        return _answer(self.rt.behavior.profile, user_id)

    @bentoml.api(route="/deals")
    def deals(self, request: DealsRequest, /) -> DealsResponse:
        """Personalised deals on items the user is likely to want: discounts from their price
        sensitivity, the item's demand, season and region, capped and floored by the server."""
        return self.rt.behavior.deals(request.user_id, request.k)

    @app.get("/segments")
    def segments(self) -> SegmentsResponse:
        """User segments (K-Means over activity, conversion, price sensitivity, category mix, age group
        and region; k by silhouette): size, dominant region and age group, mean price sensitivity,
        top categories. The profile names each user's segment. Before the features flow has fitted
        them: none, and a note saying so."""
        return _answer(self.rt.behavior.segments_summary)

    @app.get("/experiments")
    def experiments(self) -> list[ExperimentSummary]:
        """Every online experiment, newest first."""
        return [e.as_dict() for e in self.rt.experiment_records.list()]

    @app.get("/experiments/{name}", responses={404: {"description": "no experiment has that name"}})
    def experiment(self, name: Annotated[str, Path(min_length=1, max_length=64)]) -> ExperimentStatus:
        """An experiment with its figures now: per-variant counts, lift and interval, the always-valid
        p-value, SRM, the last decision and its history (``recops experiment status NAME --json``)."""
        from recops.experiments.lifecycle import status
        from recops.experiments.records import ExperimentError

        self.rt.impressions.flush()  # what was served up to this request is counted
        try:
            return status(self.rt.settings, name, self.rt.experiment_records)
        except ExperimentError as exc:
            raise HTTPException(404, str(exc)) from None

    def __metrics__(self, content: str) -> str:
        """BentoML's hook on ``GET /metrics``: its text, then recops's scrape-time gauges."""
        return content + self.metrics.live()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """A clean shutdown writes the pending impressions and stops the refresher."""
        self._stop.set()
        self.rt.close()

    @app.get("/health")
    def health(self) -> HealthResponse:
        """Liveness plus what is being served."""
        return self.rt.health()

    @app.get("/model")
    def model_info(self) -> ModelInfoResponse:
        """The served champion: registry name, version, when it was loaded, its features."""
        return self.rt.model_info()


Recops.add_asgi_middleware(ApiInfo)  # /docs.json: recops's title, description and version, not BentoML's
Recops.add_asgi_middleware(Guard)  # tokens and scopes (recops.auth): 401 without a token, 403 without the scope
Recops.add_asgi_middleware(OneErrorShape)  # every error body one {"error": ...} object (BentoML sends a list)


def _answer(fn, *args, api: bool = False):
    """Map the domain errors of ``Serving`` to HTTP: an unknown item is a 404, no model a 503
    (as BentoML exceptions in ``bentoml.api`` methods, as FastAPI's in the FastAPI routes)."""
    from recops.serving import NoModel, UnknownItem, UnknownUser

    try:
        return fn(*args)
    except (UnknownItem, UnknownUser) as exc:
        raise (bentoml.exceptions.NotFound(str(exc)) if api else HTTPException(404, str(exc))) from None
    except NoModel as exc:
        raise (bentoml.exceptions.ServiceUnavailable(str(exc)) if api else HTTPException(503, str(exc))) from None
