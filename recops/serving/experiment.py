"""Served lists under the running experiment: which model answers whom, interleaving, and the
impression of every list.

The running experiment is re-read with the champion (every ``reload_interval_seconds``); its
control and challenger versions get pinned ``ModelSlot``s (the champion's own slot when it is the
control). An experiment becomes active only once both of its models are loaded, so a user is never
told "challenger" while control answers. Assignment is ``Experiment.variant_of``: a hash, nothing
stored.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping

from recops.config import Settings
from recops.experiments.assignment import CHALLENGER, CONTROL
from recops.experiments.interleave import team_draft
from recops.experiments.records import INTERLEAVED, Experiment, ExperimentStore
from recops.impressions import ImpressionLog
from recops.services.schemas import RankedList, RecommendResponse, SessionRecommendResponse
from recops.serving.recommend import MODEL_ERROR, Recommendations
from recops.serving.state import ModelSlot

log = logging.getLogger("recops.serving")



class ExperimentRouting:
    """``/recommend`` and ``/session/recommend`` as served: the variant's model, logged as an impression."""

    def __init__(self, settings: Settings, records: ExperimentStore, champion: ModelSlot,
                 recommendations: Recommendations, impressions: ImpressionLog, follow: bool = True):
        self.settings, self.records, self.champion = settings, records, champion
        self.recommendations, self.impressions = recommendations, impressions
        self.follow = follow  # False: never serve an experiment (a pinned version, batch scoring)
        self._slots: dict[str, ModelSlot] = {}  # pinned version -> slot
        self.current: Experiment | None = None
        self.load_error: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the running experiment and load its models (the reloader's thread calls this)."""
        if not self.follow:
            return
        try:
            exp = self.records.running()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not read the running experiment; keeping the last one")
            return
        if exp is None:
            self.current, self._slots, self.load_error = None, {}, None
            return
        for version in (exp.control, exp.challenger):
            if self._is_champion(version):
                continue
            if version not in self._slots:
                self._slots[version] = ModelSlot(self.settings, pinned=version)
            elif self._slots[version].get() is None:  # it failed to load last time: try again
                self._slots[version].reload()
        missing = [v for v in (exp.control, exp.challenger) if self.slot(v).get() is None]
        if missing:
            self.load_error = f"experiment {exp.name}: version(s) {missing} not loaded; serving the champion alone"
            self.current = None
            return
        self._slots = {v: s for v, s in self._slots.items() if v in (exp.control, exp.challenger)}
        self.current, self.load_error = exp, None

    def _is_champion(self, version: str) -> bool:
        served = self.champion.get()
        return served is not None and served.version == version

    def slot(self, version: str) -> ModelSlot:
        """The slot serving a version: the champion's when it is that version, else a pinned one.

        Args:
            version: the registry version.

        Returns:
            The slot.
        """
        return self.champion if self._is_champion(version) else self._slots.get(version, self.champion)

    def recommend(self, user_id: str, k: int = 10, session_id: str | None = None,
                  exclude: Iterable[str] | None = None,
                  weights: Mapping[str, float] | None = None) -> RecommendResponse:
        """A user's list from their variant's model, logged as an impression.

        Args:
            user_id: the user (the unit of assignment).
            k: how many items.
            session_id: the visit the user is in, when the caller knows it.
            exclude: the caller's items never to show.
            weights: the caller's blend of the signals instead of the ranker (``Recommendations.recommend``).

        Returns:
            The list with ``request_id``, ``experiment`` and ``variant``.
        """
        return self._serve("recommend", user_id, user_id, session_id,
                           lambda slot: self.recommendations.recommend(user_id, k, session_id, exclude, slot, weights),
                           k)

    def session_recommend(self, session_id: str, k: int = 10,
                          exclude: Iterable[str] | None = None) -> SessionRecommendResponse:
        """A session's list from its variant's model (the session is the unit), logged as an impression.

        Args:
            session_id: the session.
            k: how many items.
            exclude: the caller's items never to show.

        Returns:
            The list with ``request_id``, ``experiment`` and ``variant``.
        """
        return self._serve("session", session_id, None, session_id,
                           lambda slot: self.recommendations.session_recommend(session_id, k, exclude, slot), k)

    def _serve(self, endpoint: str, unit: str, user_id: str | None, session_id: str | None, ask, k: int):
        t0 = time.perf_counter()
        exp = self.current
        rid = uuid.uuid4().hex
        variant = exp.variant_of(unit) if exp else None
        if exp is None:
            resp = ask(None)
        elif variant == INTERLEAVED:
            resp = self._interleave(ask, exp, k, rid)
        else:
            resp = ask(self.slot(exp.control if variant == CONTROL else exp.challenger))
        resp.request_id, resp.experiment, resp.variant = rid, exp.name if exp else None, variant
        online_down = self.recommendations.requests.online_down
        why = [w for w in (resp.degraded_reason, self.champion.degraded, online_down) if w]
        if why:
            resp.degraded, resp.degraded_reason = True, "; ".join(dict.fromkeys(why))
        self._log(resp, endpoint, unit, user_id, session_id, (time.perf_counter() - t0) * 1000)
        return resp

    def _interleave(self, ask, exp: Experiment, k: int, rid: str) -> RankedList:
        """Team-draft both models' lists; when either falls back, its fallback answers (never counted)."""
        a, b = ask(self.slot(exp.control)), ask(self.slot(exp.challenger))
        if a.fallback or b.fallback:
            return a if a.fallback else b
        by_team = {CONTROL: {i.item_id: i for i in a.items}, CHALLENGER: {i.item_id: i for i in b.items}}
        merged = team_draft([i.item_id for i in a.items], [i.item_id for i in b.items], k, rid)
        items = [by_team[team][item].model_copy(update={"rank": n + 1, "team": team})
                 for n, (item, team) in enumerate(merged)]
        return a.model_copy(update={"items": items, "model_version": f"{a.model_version}+{b.model_version}"})

    def _log(self, resp: RankedList, endpoint: str, unit: str, user_id: str | None, session_id: str | None,
             latency_ms: float) -> None:
        reason = resp.fallback_reason if resp.fallback else None
        self.impressions.add(
            {"request_id": resp.request_id, "served_at": time.time(), "unit": unit, "user_id": user_id,
             "session_id": session_id, "endpoint": endpoint, "experiment": resp.experiment, "variant": resp.variant,
             "model_version": resp.model_version, "strategy": resp.strategy, "fallback": resp.fallback,
             "fallback_reason": reason, "error": bool(reason and reason.startswith(MODEL_ERROR)),
             "latency_ms": latency_ms},
            [(i.item_id, i.team) for i in resp.items])
