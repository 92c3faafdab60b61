"""Request and response models of the HTTP API (they also make the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recops.config import load_settings

Id = Annotated[str, Field(min_length=1, max_length=128)]

_ALLOWED: set[str] | None = None


def allowed_event_types() -> set[str]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = set(load_settings().event_types)
    return _ALLOWED


class TrackEvent(BaseModel):
    """One behavioral event. ``event_id`` makes retries idempotent (derived from the fields when absent)."""

    # (no model-level "examples": BentoML 1.4's OpenAPI generator rejects that key with a 500)
    model_config = ConfigDict(extra="forbid")

    event_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    user_id: Id | None = None
    session_id: Id | None = None
    item_id: Id
    event_type: Annotated[str, Field(min_length=1, max_length=64)]
    timestamp: datetime | None = Field(default=None, description="ISO 8601; default: now. Naive times are UTC.")
    value: Annotated[float, Field(ge=0, le=1_000_000)] | None = Field(default=None, description="price, quantity or rating")
    context: dict[str, Any] | None = None

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in allowed_event_types():
            raise ValueError(f"unknown event_type {v!r}; allowed: {sorted(allowed_event_types())}")
        return v

    @field_validator("timestamp")
    @classmethod
    def _not_future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        v = v if v.tzinfo else v.replace(tzinfo=timezone.utc)
        if (v - datetime.now(timezone.utc)).total_seconds() > 300:
            raise ValueError("timestamp is in the future")
        return v

    @model_validator(mode="after")
    def _actor(self) -> "TrackEvent":
        if self.user_id is None and self.session_id is None:
            raise ValueError("an event needs a user_id or a session_id")
        return self


class TrackResponse(BaseModel):
    accepted: int
    stored: int = Field(description="new events (a repeated event_id is stored once)")
    duplicates: int
    unknown_items: list[str] = Field(default_factory=list, description="item ids not in the catalog (accepted, flagged)")
    online_updated: list[str] = Field(default_factory=list, description="users whose online features were refreshed")
    warning: str | None = None


class RecommendedItem(BaseModel):
    item_id: str
    rank: int
    score: float
    reason: str


class RecommendResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    user_id: str
    items: list[RecommendedItem]
    model_version: str | None
    fallback: bool
    fallback_reason: str | None = None


class ImplicitRatingResponse(BaseModel):
    """How much a user likes an item, from what they did with it: per-event-type weights with time decay."""

    user_id: str
    item_id: str
    rating: float = Field(description="implicit rating in [0, 5]: 5 * (1 - exp(-score / 3))")
    score: float = Field(description="summed decayed event weights")
    events: dict[str, int] = Field(default_factory=dict, description="the user's events on the item, by type")
    last_event: datetime | None = None
    known_user: bool = Field(description="the user has any event")
    known_item: bool = Field(description="the item is in the catalog")
    half_life_days: float
