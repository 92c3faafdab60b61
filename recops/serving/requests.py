"""Builds the one ``RecommendRequest`` of a recommendation: the only place that decides what a
request knows about the person (history, live session, features, intent) and what it excludes.

- a user (``/recommend``, batch scoring): history and exclusions from the event store (fresh at
  once), the live session (a named one, else the last ``SESSION_GAP_SECONDS``), online features;
  a user with fewer than ``new_user_items`` items is read as a visit, so their intent steers;
- a session (``/session/recommend``): its live state, its user's features or its own.

Reads your own writes, whichever worker stored them: while an id is marked pending in the event store
(a ``/track`` whose online refresh has not landed), its features or state are computed here from the
event store by the offline functions instead of read from Feast. The same happens while the online
store (Redis) is down, and ``online_down`` says why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

import pandas as pd

from recops.config import Settings
from recops.features import derive_user_dict, session_states, user_features, user_recent
from recops.featurestore import FeatureStoreClient, OnlineStoreDown
from recops.models.intent import Intent, infer_intent
from recops.models.request import RecommendRequest
from recops.models.rules import BusinessRules
from recops.online import Refresher
from recops.serving.state import LiveCatalog
from recops.store import EventStore
from recops.vocabulary import CART, HISTORY_LEN, SESSION_GAP_SECONDS


class RequestBuilder:
    """Fills ``RecommendRequest`` for a user or a session from the stores and the live catalog."""

    def __init__(self, settings: Settings, store: EventStore, features: FeatureStoreClient, catalog: LiveCatalog,
                 refresher: Refresher):
        self.settings = settings
        self.rules = BusinessRules.from_settings(settings)
        self.store, self.features, self.catalog, self.refresher = store, features, catalog, refresher

    def for_user(self, user_id: str, k: int, session_id: str | None = None, exclude: Iterable[str] = (),
                 weights: Mapping[str, float] | None = None) -> RecommendRequest | None:
        """The request of ``/recommend``.

        Args:
            user_id: the user.
            k: how many items.
            session_id: the visit the user is in, when the caller knows it.
            exclude: the caller's items never to show.
            weights: the caller's blend of the signals (checked against the model by the caller);
                None: the learned ranker.

        Returns:
            The request, or None when nothing is known about the user (no events, no features): a
            cold start.
        """
        history, bought, seen = self.store.user_state(user_id=user_id, n=HISTORY_LEN,
                                                      exclude_types=self.rules.exclude_event_types)
        now = time.time()
        live = [h for h, t in zip(history, seen) if t >= now - SESSION_GAP_SECONDS]
        intent, shares, strategy = None, {}, "personalized"
        if session_id:
            live = self.store.user_state(session_id=session_id, n=HISTORY_LEN).history
            history = list(dict.fromkeys(live + history))[:HISTORY_LEN]
            visit = self.visit(session_id)
            if visit:
                intent, shares = infer_intent(visit).name, category_shares(visit)
        feats = self.user_features(user_id)
        if not history and feats is None:
            return None
        if intent is None and live and len(history) < self.settings.new_user_items:
            # a new user's first events, while they are on the site: read them as a visit, so their
            # intent steers the list (a user back after a while is not in that visit any more)
            visit = self._visit_from_events(self.store.events_of([user_id]).assign(session_id=user_id))
            intent, shares, strategy = infer_intent(visit).name, category_shares(visit), "session"
        return RecommendRequest(k=k, user_id=user_id, history=tuple(history), session_items=tuple(live),
                                exclude=frozenset(exclude) | bought | self.unavailable(), now=now,
                                features=derive_user_dict(feats, now) if feats else None,
                                intent=intent, category_shares=shares, rules=self.rules, strategy=strategy,
                                weights=dict(weights) if weights else None)

    def for_session(self, session_id: str, visit: dict, intent: Intent, k: int,
                    exclude: Iterable[str] = ()) -> RecommendRequest:
        """The request of ``/session/recommend``: the session's items are its history and its live
        session; what it carted or bought is not shown again.

        Args:
            session_id: the session.
            visit: its live state (``visit``).
            intent: its intent, read from that state.
            k: how many items.
            exclude: the caller's items never to show.

        Returns:
            The request (anonymous: ``user_id`` None; the features are its user's or its own).
        """
        history = tuple(json.loads(visit["s_items"]))
        done = self.store.user_state(session_id=session_id, n=0,
                                     exclude_types=(*self.rules.exclude_event_types, CART)).excluded
        now = time.time()
        return RecommendRequest(k=k, user_id=None, history=history, session_items=history,
                                exclude=frozenset(exclude) | done | self.unavailable(), now=now,
                                features=derive_user_dict(self._session_features(session_id, visit), now),
                                intent=intent.name, category_shares=category_shares(visit), rules=self.rules,
                                strategy="session")

    def for_item(self, user_id: str) -> RecommendRequest:
        """What ``/predict`` and ``/explain`` need about a user: their history and features.

        Args:
            user_id: the user.

        Returns:
            A request for one item (nothing excluded, no session).
        """
        history = self.store.user_state(user_id=user_id, n=HISTORY_LEN).history
        feats, now = self.user_features(user_id), time.time()
        return RecommendRequest(k=1, user_id=user_id, history=tuple(history), now=now,
                                features=derive_user_dict(feats, now) if feats else None, rules=self.rules)

    def unavailable(self) -> frozenset[str]:
        """Items no list may show now.

        Returns:
            The live catalog's out-of-stock items when the rules keep lists in stock, else none.
        """
        return self.catalog.out_of_stock if self.rules.in_stock_only else frozenset()

    def user_features(self, user_id: str) -> dict | None:
        """The user's stored online features; while their refresh is pending (right after ``/track``) or
        the online store is down, computed from the event store by the same function.

        Args:
            user_id: the user.

        Returns:
            Feature name -> value, or None when nothing is known about the user.
        """
        return self._online_or_events(
            lambda: self.features.online_user(user_id),
            lambda: self._user_row(user_id, lambda ev, at: user_features(ev, at, self.catalog.items)), user=user_id)

    def recent(self, user_id: str) -> dict:
        """The user's recent items and their implicit ratings: the online store's, or computed from the
        event store by the refresher's function while their refresh is pending or the online store is down.

        Args:
            user_id: the user.

        Returns:
            ``u_recent_items`` and ``u_recent_ratings`` (JSON strings); empty when nothing is known.
        """
        ratings = (self.settings.event_types, self.settings.decay_half_life_days)
        return self._online_or_events(
            lambda: self.features.online_recent(user_id),
            lambda: self._user_row(user_id, lambda ev, at: user_recent(ev, at, ratings)), user=user_id) or {}

    def visit(self, session_id: str) -> dict | None:
        """A session's live state: the online store's, or computed from the event store by the same
        function while a refresh is pending for it or the online store is down.

        Args:
            session_id: the session.

        Returns:
            ``SESSION_FEATURES`` name -> value, or None for a new (or expired) session.
        """
        return self._online_or_events(lambda: self.features.online_session(session_id),
                                      lambda: self._visit_from_events(self.store.events_of([], [session_id])),
                                      session=session_id)

    def _online_or_events(self, online, from_events, user: str | None = None, session: str | None = None):
        """``online()`` (a read of the online store), unless a refresh is pending for ``user``/``session``
        or the online store is down: then ``from_events()`` (the same state computed from the event store)."""
        if not self.refresher.is_pending(user=user, session=session):
            try:
                return online()
            except OnlineStoreDown:
                pass  # computed from the events
        return from_events()

    def _user_row(self, user_id: str, compute) -> dict | None:
        """``compute(events, point)``'s row for the user, from their events as of now (None: no events)."""
        ev = self.store.events_of([user_id])
        return None if ev.empty else compute(ev, _now_point(user_id)).iloc[0].to_dict()

    @property
    def online_down(self) -> str | None:
        """Why the online store could not be read at the last try (None: it answers)."""
        return self.features.down

    def _visit_from_events(self, events: pd.DataFrame) -> dict | None:
        """The state of the one session in ``events`` (``recops.features.session_states``)."""
        state = session_states(events, self.catalog.category)
        return state.iloc[0].to_dict() if len(state) else None

    def _session_features(self, session_id: str, visit: dict) -> dict:
        """The ranker's user features for a session: its user's when it has one, else the same
        features computed from the session's own events (an anonymous visitor seen as a user)."""
        user = visit.get("s_user_id")
        feats = self.user_features(user) if user else None
        if feats is None:
            ev = self.store.events_of([], [session_id]).assign(user_id=session_id)
            feats = user_features(ev, _now_point(session_id), self.catalog.items).iloc[0].to_dict()
        return feats


def category_shares(visit: dict | None) -> dict[str, float]:
    """Each category's share of a session's events.

    Args:
        visit: a session state (``s_categories``: JSON {category: events}), or None.

    Returns:
        category -> share; empty for no state.
    """
    cats = json.loads(visit["s_categories"]) if visit and visit.get("s_categories") else {}
    total = sum(cats.values()) or 1
    return {c: n / total for c, n in cats.items()}


def _now_point(entity: str) -> pd.DataFrame:
    """One (user_id, as_of=now) point for ``user_features``."""
    return pd.DataFrame({"user_id": [entity], "as_of": pd.Timestamp.now(tz="UTC")})
