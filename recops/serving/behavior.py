"""The behavioral endpoints: ``/implicit-rating``, ``/predict``, ``/explain``, ``/next-items``,
``/users/{id}/profile`` and ``/deals``."""

from __future__ import annotations

import json

import pandas as pd

from recops.config import Settings
from recops.deals import DealPolicy, make_deals
from recops.features import derive_user_dict
from recops.profile import user_profile
from recops.ratings import implicit_ratings
from recops.services.schemas import (
    DealsResponse,
    ExplainResponse,
    ImplicitRatingResponse,
    NextItemsResponse,
    PredictResponse,
    ProfileResponse,
)
from recops.serving.errors import NoModel, UnknownItem, UnknownUser
from recops.serving.recommend import Recommendations, as_items
from recops.serving.requests import RequestBuilder
from recops.serving.state import LiveCatalog, ModelSlot, SegmentView, Served
from recops.store import EventStore


class Behavior:
    """What recops knows about one user, one item or one session, beyond a list."""

    def __init__(self, settings: Settings, slot: ModelSlot, requests: RequestBuilder, catalog: LiveCatalog,
                 store: EventStore, recommendations: Recommendations, segments: SegmentView):
        self.settings, self.slot, self.requests, self.catalog = settings, slot, requests, catalog
        self.store, self.recommendations = store, recommendations
        self.segments = segments
        self.deal_policy = DealPolicy.from_settings(settings)

    def implicit_rating(self, user_id: str, item_id: str) -> ImplicitRatingResponse:
        """The user's implicit rating of an item from their events on it, as of now (the weights,
        decay and mapping of training: ``recops.ratings``).

        Args:
            user_id: the user.
            item_id: the item.

        Returns:
            The rating (0-5), the decayed score, the events per type and the last event's time.
        """
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
            known_user=not mine.empty, known_item=item_id in self.catalog.known,
            half_life_days=self.settings.decay_half_life_days)

    def _for_item(self, item_id: str) -> Served:
        """The served model, which must know ``item_id``.

        Raises:
            NoModel: nothing is served.
            UnknownItem: the served model's catalog lacks the item.
        """
        served = self.slot.require()
        if item_id not in served.model.items.index:
            raise UnknownItem(f"item {item_id!r} is not in the served model's catalog")
        return served

    def predict(self, user_id: str, item_id: str) -> PredictResponse:
        """The user's preference score for an item and the probability they interact with it.

        Args:
            user_id: the user.
            item_id: an item of the served model's catalog.

        Returns:
            Score, rank among the user's candidates, calibrated probability, the proposing generators.
        """
        served = self._for_item(item_id)
        request = self.requests.for_item(user_id)
        p = served.model.predict(request, item_id)
        return PredictResponse(user_id=user_id, item_id=item_id, model_version=served.version,
                               known_user=request.features is not None or bool(request.history), **p)

    def explain(self, user_id: str, item_id: str) -> ExplainResponse:
        """Why an item for a user.

        Args:
            user_id: the user.
            item_id: an item of the served model's catalog.

        Returns:
            The generators that proposed it and the ranker's top contributions, in words.
        """
        served = self._for_item(item_id)
        return ExplainResponse(user_id=user_id, item_id=item_id, model_version=served.version,
                               **served.model.explain(self.requests.for_item(user_id), item_id))

    def next_items(self, recent: list[str], k: int, exclude: list[str] | None = None) -> NextItemsResponse:
        """The likeliest next items after a session's recent items.

        Args:
            recent: the session's items, newest first.
            k: how many items.
            exclude: items never to propose (out-of-stock ones are added).

        Returns:
            The items with the recent item leading to each (popularity when the items say nothing
            yet) and the recent items the model has never seen.

        Raises:
            NoModel: nothing is served, or the served model has no next-item part.
        """
        served = self.slot.require()
        if served.model.next_item is None:
            raise NoModel("the served model has no next-item model: retrain to add one")
        recs = served.model.next_items(recent, k, set(exclude or ()) | self.requests.unavailable())
        return NextItemsResponse(items=as_items(recs), model_version=served.version,
                                 unknown_items=served.model.next_item.unknown(recent))

    def profile(self, user_id: str) -> ProfileResponse:
        """Static attributes, preferences and behavioral features of a user, as of now.

        Args:
            user_id: the user.

        Returns:
            The profile features (``recops.profile``, the offline code on the user's events), the
            stored online features (Feast) with their request-time derivations, and the recent
            items with their ratings as the online store holds them.

        Raises:
            UnknownUser: the user has no events and no row in the users table.
        """
        now = pd.Timestamp.now(tz="UTC")
        ev, row = self.store.user_events(user_id), self.store.user_row(user_id)
        if ev.empty and row is None:
            raise UnknownUser(f"user {user_id!r} has no events and no row in the users table")
        prof = user_profile(ev, self.catalog.profile_catalog, row, as_of=now, user_id=user_id)
        online = self.requests.user_features(user_id)  # from the events while the online store is down
        stored = derive_user_dict(online, now.timestamp()) if online else {}
        recent = self.requests.recent(user_id)  # from the events while pending or the online store is down
        affinity = json.loads(stored.pop("u_category_affinity", None) or "{}")
        return ProfileResponse(user_id=user_id, as_of=now.to_pydatetime(), events=len(ev), static=prof["static"],
                               preferences={**prof["preferences"], "category_affinity": affinity},
                               features=prof["features"], online_features=stored,
                               recent_items=json.loads(recent.get("u_recent_items") or "[]"),
                               recent_ratings=json.loads(recent.get("u_recent_ratings") or "{}"),
                               segment=self.segments.of(user_id, prof["features"], ev, self.catalog.category, row))

    def segments_summary(self) -> dict:
        """The user segments the features flow fitted.

        Returns:
            ``k``, ``silhouette`` (per k tried) and ``segments`` (size, share, dominant region and age
            group, mean price sensitivity, top categories); before any fit, none and a ``note`` saying so.
        """
        seg = self.segments.segments
        if seg is None:
            return {"k": 0, "silhouette": {}, "segments": [],
                    "note": "no user segments yet: the features flow fits them (recops features)"}
        return {"k": seg.k, "silhouette": {str(k): v for k, v in seg.silhouettes.items()}, "segments": seg.summary}

    def deals(self, user_id: str, k: int) -> DealsResponse:
        """Personalised deals on items the user is likely to want (their recommendations).

        The discount follows their price sensitivity, the item's demand, the season and their
        region, within the server's policy (``recops.deals``): capped, floored, expiring.

        Args:
            user_id: the user.
            k: how many deals.

        Returns:
            The deals with the policy they were made under.
        """
        recs = self.recommendations.recommend(user_id, min(3 * k, 100))
        ev, row = self.store.user_events(user_id), self.store.user_row(user_id) or {}
        prof = user_profile(ev, self.catalog.profile_catalog, row, user_id=user_id)
        sensitivity = prof["features"]["p_price_sensitivity"]
        deals = make_deals([(it.item_id, it.score) for it in recs.items], self.catalog.deal_info, sensitivity,
                           row.get("region"), pd.Timestamp.now(tz="UTC"), self.deal_policy, k)
        return DealsResponse(user_id=user_id, deals=deals, price_sensitivity=sensitivity,
                             max_discount=self.deal_policy.max_discount, floor_ratio=self.deal_policy.floor_ratio,
                             model_version=recs.model_version, fallback=recs.fallback)
