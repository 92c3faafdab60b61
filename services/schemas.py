"""Request and response models of the HTTP API (they also make the OpenAPI schema)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recops.config import load_settings

Id = Annotated[str, Field(min_length=1, max_length=128)]
# numbers are numbers: no "5" for 5, no true for 1 (the schema says integer or number, and so does the server)
K = Annotated[int, Field(ge=1, le=100, strict=True, description="how many items")]


def openapi30(schema: dict, _model=None) -> None:
    """Make a model's JSON Schema say what OpenAPI 3.0 readers (Swagger UI, client generators, BentoML's
    own document) understand:

    - an optional field (``anyOf: [X, {"type": "null"}]``) becomes X with ``nullable: true``: BentoML
      keeps only the first branch of an ``anyOf``, and the document then denied the nulls that are sent;
    - a field with JSON Schema ``examples`` also gets OpenAPI 3.0's ``example``: Swagger UI shows that
      one in its sample bodies (without it a field reads ``"string"``).
    """
    for prop in schema.get("properties", {}).values():
        nullable(prop)
        if prop.get("examples") and "example" not in prop:
            prop["example"] = prop["examples"][0]


def nullable(prop: dict) -> None:
    """``anyOf: [X, {"type": "null"}]`` -> X and ``nullable: true`` (a ``$ref`` X goes under ``allOf``), in place."""
    branches = prop.get("anyOf")
    if not branches or {"type": "null"} not in branches:
        return
    others = [b for b in prop.pop("anyOf") if b != {"type": "null"}]
    if len(others) == 1 and "$ref" in others[0]:
        prop["allOf"] = others
    elif len(others) == 1:
        prop.update({k: v for k, v in others[0].items() if k not in prop})
    else:
        prop["anyOf"] = others
    prop["nullable"] = True


class Schema(BaseModel):
    """The API's models: OpenAPI 3.0 nullables, and their field examples show in Swagger UI."""

    model_config = ConfigDict(json_schema_extra=openapi30)

_ALLOWED: set[str] | None = None


def allowed_event_types() -> set[str]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = set(load_settings().event_types)
    return _ALLOWED


class TrackEvent(Schema):
    """One behavioral event. ``event_id`` makes retries idempotent (derived from the fields when absent)."""

    # (no model-level "examples": BentoML 1.4's OpenAPI generator rejects that key with a 500)
    model_config = ConfigDict(extra="forbid")

    event_id: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(None, examples=["web-81f2c0"])
    user_id: Id | None = Field(None, examples=["u17"])
    session_id: Id | None = Field(None, examples=["s-7f3a"])
    item_id: Id = Field(examples=["i42"])
    event_type: str = Field(examples=["add_to_cart"], json_schema_extra=lambda s: s.update(
        enum=sorted(allowed_event_types())), description="one of the server's event types (built-in and custom)")
    timestamp: datetime | None = Field(
        default=None, json_schema_extra={"pattern": f"^({'|'.join(str(d) for d in range(197, 210))})[0-9]-"},
        description="ISO 8601, years 1970-2099; default: now. Naive times are UTC. A time more than 5 minutes ahead "
        "of the server's is stored as the server's time, the sent one kept in context.sent_timestamp (a warning "
        "says so)")
    value: Annotated[float, Field(ge=0, le=1_000_000, strict=True)] | None = Field(default=None,
                                                                       description="price, quantity or rating")
    context: dict[str, Any] | None = None
    request_id: Annotated[str, Field(min_length=1, max_length=32)] | None = Field(
        None, description="the request_id of the served list the event came from (attributes it exactly)")

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in allowed_event_types():
            raise ValueError(f"unknown event_type {v!r}; allowed: {sorted(allowed_event_types())}")
        return v

    @field_validator("timestamp", mode="before")
    @classmethod
    def _a_string(cls, v):
        if v is not None and not isinstance(v, str | datetime):
            raise ValueError("timestamp must be an ISO 8601 string, e.g. 2026-11-30T12:00:00Z")
        return v

    @field_validator("timestamp")
    @classmethod
    def _in_range(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if not 1970 <= v.year <= 2099:
            raise ValueError(f"timestamp year {v.year} is outside 1970-2099")
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _actor(self) -> TrackEvent:
        if self.user_id is None and self.session_id is None:
            raise ValueError("an event needs a user_id or a session_id")
        return self


Weight = Annotated[float, Field(gt=0, le=1000, strict=True)]


class Weights(Schema):
    """Signals to blend instead of the learned ranker, by weight. A signal the served model does not blend
    (``GET /model`` lists its generators) is ignored, and so is null; with none left the ranker answers."""

    model_config = ConfigDict(extra="forbid")

    popularity: Weight | None = Field(None, description="what is trending", examples=[0.2])
    covisit: Weight | None = Field(None, description="viewed together with the user's recent items", examples=[0.6])
    itemknn: Weight | None = Field(None, description="items similar to the user's")
    ease: Weight | None = Field(None, description="the EASE autoencoder's score")
    session: Weight | None = Field(None, description="what sessions like the live one went on to")
    svd: Weight | None = Field(None, description="the latent-factor score")
    content: Weight | None = Field(None, description="similar titles and categories")
    demographic: Weight | None = Field(None, description="what shoppers of the same age band, gender and region take")
    next_item: Weight | None = Field(None, description="what follows the live session's items", examples=[0.4])

    def given(self) -> dict[str, float]:
        """The weights that were sent, by signal."""
        return self.model_dump(exclude_none=True)


class TrackResponse(Schema):
    accepted: int = Field(examples=[1])
    stored: int = Field(description="new events (a repeated event_id is stored once)")
    duplicates: int
    unknown_items: list[str] = Field(default_factory=list,
                                     description="item ids not in the catalog (accepted, flagged)")
    online_updated: list[str] = Field(default_factory=list, description="users whose online features are being "
                                      "refreshed (in the background, in milliseconds; reads of them wait for it)")
    sessions_updated: list[str] = Field(default_factory=list,
                                        description="sessions whose live state is being refreshed")
    warning: str | None = None


class RecommendedItem(Schema):
    item_id: str = Field(examples=["i42"])
    rank: int = Field(examples=[1])
    score: float = Field(description="the ranker's score (or the answering generator's); comparable within one list")
    reason: str = Field(examples=["Often viewed together with Trail Shoe 12, which you looked at recently"])
    confidence: float = Field(0.0, ge=0, le=1, description="how much to trust it: evidence about the person "
                                                           "x agreement of the generators")
    sources: list[str] = Field(default_factory=list, description="the candidate generators that proposed it",
                               examples=[["covisit", "ease"]])
    team: str | None = Field(None, description="in an interleaving experiment: the model that contributed the item "
                             "(control or challenger); null otherwise", examples=[None])


class RankedList(Schema):
    model_config = ConfigDict(protected_namespaces=())

    items: list[RecommendedItem]
    model_version: str | None = Field(description="the registered model version that answered", examples=["3"])
    fallback: bool = Field(description="true when trending items answered instead of the model")
    fallback_reason: str | None = Field(None, examples=["unknown user: no events yet"])
    strategy: str = Field("personalized", description="personalized (the ranker on the person's history), session (a "
                          "new user's first events, read as a session with an intent), demographic (no events yet; "
                          "what shoppers of the same age band, gender and region take), trending (nothing known)",
                          examples=["personalized"])
    request_id: str | None = Field(None, description="names this list: send it with /track events on its items to "
                                   "attribute them", examples=["5f0c9e1d2a7b4c6e8f0a1b2c3d4e5f60"])
    experiment: str | None = Field(None, description="the running experiment this list is part of", examples=[None])
    variant: str | None = Field(None, description="control, challenger or interleaved; null outside an experiment",
                                examples=[None])
    degraded: bool = Field(False, description="true when a part of the service is down and the list was made "
                           "without it (the reason says which); false normally")
    degraded_reason: str | None = Field(None, examples=[None])


class RecommendResponse(RankedList):
    user_id: str
    weights_used: dict[str, float] | None = Field(
        None, description="the blend that ranked the list when the request sent weights (normalised to sum to 1); "
                          "null: the learned ranker", examples=[None])


class SessionRecommendResponse(RankedList):
    session_id: str
    intent: str = Field(description="browsing, research or transactional", examples=["research"])
    intent_reason: str = Field(examples=["comparing items in Outdoor"])
    signals: dict[str, float] = Field(default_factory=dict, description="what the intent was read from")


class ImplicitRatingResponse(Schema):
    """How much a user likes an item, from what they did with it: per-event-type weights with time decay."""

    user_id: str
    item_id: str
    rating: float = Field(description="implicit rating in [0, 5]: 5 * (1 - exp(-score / 3))", examples=[3.68])
    score: float = Field(description="summed decayed event weights")
    events: dict[str, int] = Field(default_factory=dict, description="the user's events on the item, by type")
    last_event: datetime | None = None
    known_user: bool = Field(description="the user has any event")
    known_item: bool = Field(description="the item is in the catalog")
    half_life_days: float


class PredictResponse(Schema):
    model_config = ConfigDict(protected_namespaces=())

    user_id: str
    item_id: str
    score: float = Field(description="preference score (the ranker's, or the answering generator's)")
    score_gap: float = Field(description="score minus the user's best candidate's score (0: the top item)")
    rank: int = Field(description="the item's rank among the user's candidates (before business rules)", examples=[3])
    candidates: int = Field(description="how many candidates the user's list was ranked from")
    probability: float | None = Field(
        description="calibrated P(the user interacts with the item soon), from held-out data", examples=[0.12])
    proposed_by: list[str] = Field(description="the candidate generators that proposed it", examples=[["covisit"]])
    known_user: bool
    model_version: str | None


class GeneratorVote(Schema):
    generator: str = Field(examples=["covisit"])
    rank: int = Field(examples=[4])
    score: float


class Contribution(Schema):
    feature: str = Field(examples=["x_category_affinity"])
    value: float
    contribution: float = Field(description="the feature's share of the ranker score (LightGBM pred_contrib)")
    reason: str = Field(examples=["raises it: beauty is 45% of your activity"])


class ExplainResponse(Schema):
    model_config = ConfigDict(protected_namespaces=())

    user_id: str
    item_id: str
    model_version: str | None
    scorer: str = Field(
        description="what ranked this user's list: the ranker, or a generator chosen for the user's segment")
    score: float
    rank: int
    proposed_by: list[GeneratorVote]
    contributions: list[Contribution] = Field(description="the ranker's largest feature contributions, largest first")
    reason: str


class Segment(Schema):
    segment: int = Field(examples=[2])
    size: int = Field(description="users in the segment")
    share: float
    dominant_region: str | None = Field(None, examples=["north"])
    dominant_age_group: str | None = Field(None, examples=["25-34"])
    mean_price_sensitivity: float = Field(description="0.5 neutral, toward 1 buys below the category's median price")
    top_categories: list[str] = Field(examples=[["books", "music"]])


class SegmentsResponse(Schema):
    k: int = Field(description="how many segments (chosen by silhouette)", examples=[4])
    silhouette: dict[str, float] = Field(description="the silhouette of each k tried")
    segments: list[Segment]
    note: str | None = Field(None, description="why there are none yet (no features flow has fitted them)",
                             examples=[None])


class ProfileResponse(Schema):
    user_id: str
    as_of: datetime = Field(description="the time the profile was computed for")
    events: int = Field(description="the user's stored events")
    static: dict[str, Any] = Field(description="age, gender, region (null when unknown)",
                                   examples=[{"age": 31, "gender": "f", "region": "north"}])
    preferences: dict[str, Any] = Field(description="top categories, price range, favourite action, active hours, "
                                        "category affinity")
    features: dict[str, float | int | None] = Field(
        description="behavioral profile features (recops.profile.PROFILE_FEATURES): activity, engagement, conversion, "
                    "peak hours and days, recency score, diversity, exploration, price sensitivity",
        examples=[{"p_view_to_purchase": 0.08, "p_peak_hour": 20}])
    online_features: dict[str, Any] = Field(description="the stored online features (Feast user_behavior), plus "
                                            "recency and tenure derived at request time")
    recent_items: list[str] = Field(description="recent distinct items, newest first", examples=[["i42", "i7"]])
    recent_ratings: dict[str, float] = Field(default_factory=dict, description="implicit ratings (0-5) of the recent "
                                             "items, as of the last online update", examples=[{"i42": 3.68}])
    segment: Segment | None = Field(None, description="the user's segment (GET /segments); null before the features "
                                    "flow fitted any")


class DealsRequest(Schema):
    """Only who and how many: prices and discounts are the server's to decide."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(examples=["u17"])
    k: int = Field(5, ge=1, le=50, strict=True, description="how many deals at most")


class Deal(Schema):
    item_id: str = Field(examples=["i42"])
    title: str
    list_price: float = Field(examples=[40.0])
    deal_price: float = Field(description="never below the floor price, never above the list price", examples=[34.0])
    discount: float = Field(ge=0, le=1, description="share off the list price, at most the policy's cap",
                            examples=[0.15])
    expires_at: datetime
    reason: str = Field(examples=["15% off this kitchen item: you often choose lower-priced items"])
    score: float


class DealsResponse(Schema):
    model_config = ConfigDict(protected_namespaces=())

    user_id: str
    deals: list[Deal]
    price_sensitivity: float = Field(description="0.5 neutral; towards 1 the user buys below category medians")
    max_discount: float = Field(description="the server's cap on any discount")
    floor_ratio: float = Field(description="a deal price never goes below this share of the list price")
    model_version: str | None
    fallback: bool = Field(description="the deals were picked from trending items, not the model's recommendations")


class NextItemsResponse(Schema):
    model_config = ConfigDict(protected_namespaces=())

    items: list[RecommendedItem]
    model_version: str | None
    unknown_items: list[str] = Field(default_factory=list,
                                     description="recent items the model has never seen (ignored)")


class OnlineRefresh(Schema):
    pending: int = Field(description="/track requests whose online refresh has not landed yet", examples=[0])
    done: int = Field(description="online refreshes done since the server started")
    last_error: str | None = None


class ImpressionLogState(Schema):
    pending: int = Field(description="served lists not written to the event store yet (written every half second)")
    written: int = Field(description="served lists written since the server started")
    last_error: str | None = None


class HealthResponse(Schema):
    model_config = ConfigDict(protected_namespaces=())

    status: str = Field(examples=["ok"])
    worker: int = Field(description="the process id of the worker that answered (the server runs serve_workers)",
                        examples=[4242])
    model_version: str | None = Field(examples=["3"])
    model_loaded: bool
    load_error: str | None = None
    degraded: str | None = Field(None, description="what is down, and what answers instead: the registry (the "
                                 "served model may be behind it) or the online store (features are computed from "
                                 "the event store); null normally", examples=[None])
    events: int | None = Field(description="events in the event store (null: it cannot be reached)")
    online_refresh: OnlineRefresh
    experiment: str | None = Field(None, description="the running experiment being served, if any")
    experiment_share: float | None = Field(None, description="its challenger share, as served")
    impressions: ImpressionLogState | None = None


class ModelInfoResponse(Schema):
    name: str = Field(examples=["recops"])
    alias: str = Field(examples=["champion"])
    source: str = Field(description="registry: the alias is followed and reloaded; bento:TAG: the packaged model "
                        "this Bento serves (recops package), never reloaded", examples=["registry"])
    version: str | None = Field(examples=["3"])
    loaded_at: float | None = Field(description="epoch seconds")
    load_error: str | None = None
    generators: list[str] = Field(examples=[["popularity", "covisit", "itemknn", "ease", "svd"]])
    features: list[str] = Field(description="the ranker's features, in order")
    meta: dict[str, Any] = Field(description="training split, ranker statistics, tuned hyper-parameters, scorers")


class VariantFigures(Schema):
    users: int = Field(description="users (or anonymous sessions) served a non-fallback list")
    impressions: int = Field(description="non-fallback lists served")
    clicks: int = Field(description="shown items clicked (once per list and item), attributed to these lists")
    conversions: int = Field(description="shown items carted or bought, attributed to these lists")
    revenue: float = Field(description="the value of purchases of shown items")
    ctr: float | None = None
    conversion_rate: float | None = None
    revenue_per_impression: float | None = None
    fallback_impressions: int = Field(description="fallback lists: counted apart, never a success of the variant")
    error_rate: float | None = Field(None, description="share of lists where the model failed")
    fallback_rate: float | None = None
    p99_latency_ms: float | None = None
    team_credit: dict[str, float] | None = Field(None, description="interleaving: the credit each team earned")


class ExperimentDecision(Schema):
    action: str = Field(examples=["continue"])
    reason: str
    at: float = Field(description="epoch seconds")


class ExperimentChange(Schema):
    at: float = Field(description="epoch seconds")
    action: str = Field(examples=["ramp"])
    status: str
    share: float
    reason: str
    details: dict[str, Any] | None = None


class ExperimentSummary(Schema):
    name: str = Field(examples=["ranker-v4"])
    control: str = Field(description="the control's registry version (@champion at start)", examples=["3"])
    challenger: str = Field(description="the challenger's registry version", examples=["4"])
    method: str = Field(description="ab or interleave", examples=["ab"])
    share: float = Field(description="the challenger's traffic share", examples=[0.05])
    salt: str
    metric: str = Field(description="the primary metric: ctr, conversion or revenue", examples=["ctr"])
    guardrails: list[str]
    status: str = Field(description="running, stopped, promoted or rolled_back", examples=["running"])
    started_at: float
    updated_at: float
    ended_at: float | None = None


class ExperimentStatus(ExperimentSummary):
    variants: dict[str, VariantFigures] = Field(description="per variant: control and challenger (interleaved in an "
                                                "interleaving experiment)")
    lift: float | None = Field(None, description="the challenger's relative lift on the primary metric")
    ci: list[float | None] = Field(description="the lift's 95% interval (fixed horizon); interleaving: the win share's")
    ci_always_valid: list[float | None] = Field(description="the always-valid 95% interval (confidence sequence)")
    p_value: float | None = Field(None, description="the primary metric's always-valid p-value (mSPRT)")
    p_value_fixed: float | None = None
    srm_p_value: float | None = Field(None, description="sample-ratio mismatch: chi-square p-value (flagged < 0.001)")
    srm: bool
    interleaving: dict[str, Any] | None = None
    look: dict[str, Any] = Field(description="this look's difference and variance (the sequential test's input)")
    decision: ExperimentDecision | None = Field(None, description="the last evaluation's decision")
    history: list[ExperimentChange]
