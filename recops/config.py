"""Settings: one YAML file plus ``RECOPS_*`` environment overrides select the backends.

Precedence (highest first): environment variables, the file named by ``RECOPS_CONFIG``
(or ``./recops.yaml`` when present), the built-in defaults of the chosen profile.

Profiles:
- ``local`` (default): SQLite event store, MLflow on SQLite with local artifacts, Feast parquet
  offline store + SQLite online store, Prefect without a server. Nothing to install.
- ``scaleout``: PostgreSQL event store and MLflow backend, Redis online store, a Prefect server.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recops.vocabulary import DEFAULT_EVENT_WEIGHTS, DEFAULT_EXCLUDE_TYPES, RATING_HALF_LIFE_DAYS

PROFILES = ("local", "scaleout")


@dataclass
class Settings:
    """Everything that selects a backend or tunes a step. Paths are resolved against ``home``."""

    profile: str = "local"
    home: Path = Path(".recops")
    # Event store (SQLAlchemy URL). Empty: SQLite file in home.
    event_store_url: str = ""
    # MLflow. Empty tracking URI: SQLite file in home; artifacts in home/mlartifacts.
    mlflow_tracking_uri: str = ""
    mlflow_artifact_root: str = ""
    mlflow_experiment: str = "recops"
    model_name: str = "recops"
    # Feast online store: sqlite (file in home) or redis.
    online_store: str = "sqlite"
    redis_url: str = "127.0.0.1:6379"
    feast_project: str = "recops"
    # Prefect: empty means no server (ephemeral API inside the process).
    prefect_api_url: str = ""
    # Event semantics.
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    custom_event_types: dict[str, float] = field(default_factory=dict)
    decay_half_life_days: float = RATING_HALF_LIFE_DAYS
    # Validation.
    max_bad_share: float = 0.05
    max_event_age_days: float = 365.0 * 30
    future_tolerance_seconds: float = 300.0
    max_value: float = 1_000_000.0
    # Training and evaluation.
    k: int = 10
    holdout_days: float = 0.0  # 0: from the data (last week or last tenth of events); else days
    candidates_per_source: int = 100
    # candidate generators of the model (recops.training.make_generator): popularity, covisit, itemknn,
    # ease, svd, session, content, demographic
    generators: list[str] = field(default_factory=lambda: ["popularity", "covisit", "itemknn", "ease", "svd"])
    ease_l2: list[float] = field(default_factory=lambda: [100.0, 250.0, 500.0, 1000.0])  # tuned on the inner split
    ranker_windows: int = 3  # labelled windows the ranker learns from, each carved out of the previous one's train
    ranker_max_users: int = 5000  # labelled users at most: half global cuts (no older ones past it), half returning
    tuning_users: int = 2000  # users the generators' hyper-parameters are tuned on (a fixed sample)
    svd_factors: list[float] = field(default_factory=lambda: [16.0, 32.0, 64.0])  # tuned on the inner split
    # item-kNN's neighbours: a grid of several values is tuned on the inner split like the others. Not by
    # default: its own NDCG always favours more neighbours, and past 200 the ranked lists got worse
    itemknn_neighbors: list[float] = field(default_factory=lambda: [200.0])
    # co-visitation's decay from the newest event, tuned on the inner split: a shop's pairs go stale
    # within weeks, a film site's users who came and went months ago still say what goes together
    covisit_half_life_days: list[float] = field(default_factory=lambda: [7.0, 30.0, 365.0])
    promote_tolerance: float = 0.0
    random_state: int = 42
    # LightGBM threads when training (the next-item ranker, trained beside the rest, gets half); 0: every
    # core. Serving uses one
    num_threads: int = 0
    # Business rules, applied after ranking at request time (recops.models.rules).
    exclude_event_types: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE_TYPES))  # never recommend again
    in_stock_only: bool = True
    max_per_category: int = 0  # at most this many items of one category per list; 0: no cap
    fresh_item_days: float = 14.0
    fresh_item_boost: float = 0.0  # score boost for items younger than fresh_item_days, x the list's score spread
    # Serving.
    segments_k: list[float] = field(default_factory=lambda: [2.0, 8.0])  # user segments: k tried (inclusive range)
    new_user_items: int = 5  # a live user with fewer distinct items is served session-style (events read as a visit)
    deal_max_discount: float = 0.5  # the most any deal takes off a list price (enforced on the server)
    deal_floor_ratio: float = 0.6  # a deal price never goes below this share of the list price
    deal_ttl_hours: float = 48.0  # how long a deal stays valid
    # month (1-12) -> discount factor (January and summer sales, Black Friday, the holidays); region -> factor
    deal_season_boost: dict[str, float] = field(default_factory=lambda: {"1": 1.2, "7": 1.1, "11": 1.25, "12": 1.1})
    deal_region_factor: dict[str, float] = field(default_factory=dict)
    reload_interval_seconds: float = 10.0
    # Online experiments (recops.experiments).
    experiment_min_lift: float = 0.05  # the relative lift worth detecting: the mSPRT's mixing scale (tau)
    experiment_alpha: float = 0.05  # the always-valid test's error rate
    experiment_ramp: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5, 1.0])  # challenger shares in turn
    experiment_max_days: float = 14.0  # then stop with "no detectable difference"
    experiment_guardrail_margin: float = 0.02  # how much worse (absolute) an error or fallback rate may be
    experiment_latency_margin: float = 1.5  # how many times control's p99 latency the challenger may take
    experiment_cuped: bool = True  # take out what each user's activity before the start predicts (less variance)
    attribution_window_hours: float = 24.0  # an outcome without request_id goes to the latest impression this recent
    # Monitoring (recops.monitoring) and what triggers a retrain.
    monitor_window_hours: float = 24.0  # the recent window compared with the champion's training reference
    monitor_reference_days: float = 7.0  # the reference: the events of this many days before the training cut
    monitor_sample: int = 20_000  # events sampled on each side for the drift scores
    monitor_min_events: int = 500  # a window with fewer events gets no drift verdict
    monitor_top_items: int = 100  # the reference's most popular items, for the popularity rank correlation
    # per column: Jensen-Shannon distance (categories), Wasserstein distance over the reference's std (numbers)
    drift_threshold: float = 0.1
    # ... or, where it is larger, what chance alone reaches on a window of that size: the mean plus this many
    # standard deviations of windows drawn from the reference (recops.monitoring.null_scores)
    drift_null_z: float = 4.0
    drift_min_rank_correlation: float = 0.3  # Spearman of the top items' events, reference vs window
    drift_max_new_item_share: float = 0.3  # events on items training never saw
    drift_max_new_user_share: float = 0.75  # active users training never saw
    performance_baseline_days: float = 7.0  # the champion's own baseline: this many days before the window
    performance_alpha: float = 0.01  # a drop counts when the lift's (1 - alpha) interval lies below zero ...
    performance_min_drop: float = 0.1  # ... and it is at least this large (relative)
    performance_min_users: int = 50  # users on each side before performance is judged
    retrain_min_new_events: int = 100_000  # the volume trigger: this many events after the champion's training cut
    retrain_cooldown_hours: float = 6.0  # an event-triggered retrain waits this long after the last one
    serve_host: str = "127.0.0.1"
    # Who may call the HTTP API (recops.auth): tokens with scopes; off only by this setting (a warning at start)
    auth: bool = True
    metrics_auth: bool = False  # /metrics needs a token with the metrics (or admin) scope
    auth_refresh_seconds: float = 2.0  # a new token works, a revoked one stops, within this time
    # Per token (a token's own --rate overrides it): requests/s sustained, and at once; 0: no limit. Above what
    # one server answers, so that only a runaway caller meets it. Anonymous callers (auth off): per client address.
    rate_limit_per_second: float = 1000.0
    rate_limit_burst: int = 2000
    anonymous_rate_limit_per_second: float = 1000.0
    anonymous_rate_limit_burst: int = 2000
    max_body_bytes: int = 4 * 2**20  # a larger request body gets a 413 (a full /track/batch is ~2 MB)
    serve_port: int = 3000
    # HTTP worker processes of recops serve; 0: one per core, at most 4 (each holds the model: ~400 MB)
    serve_workers: int = 0

    @property
    def workers(self) -> int:
        """The HTTP worker processes to run (``serve_workers``, resolved)."""
        return self.serve_workers if self.serve_workers > 0 else max(1, min(os.cpu_count() or 1, 4))

    @property
    def event_types(self) -> dict[str, float]:
        """Known event types and their implicit-rating weights (built-in plus custom ones)."""
        return {**self.event_weights, **self.custom_event_types}

    @property
    def event_store_uri(self) -> str:
        """SQLAlchemy URL of the event store: ``event_store_url``, else a SQLite file ``events.db`` in home."""
        return self.event_store_url or f"sqlite:///{(self.home / 'events.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: ``mlflow_tracking_uri``, else a SQLite file ``mlflow.db`` in home."""
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        """MLflow artifact root (a URI): ``mlflow_artifact_root``, else ``home/mlartifacts`` as a file URI."""
        return self.mlflow_artifact_root or (self.home / "mlartifacts").resolve().as_uri()

    @property
    def feature_dir(self) -> Path:
        """Absolute directory of the Feast offline feature files (``home/features``)."""
        return (self.home / "features").resolve()

    @property
    def staging_dir(self) -> Path:
        """Absolute directory for staged model artifacts (``home/staging``)."""
        return (self.home / "staging").resolve()

    @property
    def segments_path(self) -> Path:
        """Absolute path of the fitted user segments (``home/segments.pkl``, written by the features flow)."""
        return (self.home / "segments.pkl").resolve()

    @property
    def reports_dir(self) -> Path:
        """Absolute directory the steps write their JSON reports to (``home/reports``)."""
        return (self.home / "reports").resolve()

    def ensure_dirs(self) -> None:
        """Create home and the feature, staging and reports directories (no error when they exist)."""
        for d in (self.home, self.feature_dir, self.staging_dir, self.reports_dir):
            Path(d).mkdir(parents=True, exist_ok=True)

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process (server, flow run) see these settings.

        Returns:
            ``RECOPS_<FIELD>`` variable names mapped to their values (read back by :func:`load_settings`):
            home resolved to an absolute path, booleans, lists and dicts as JSON, other scalars as ``str``.
        """
        env = {"RECOPS_HOME": str(Path(self.home).resolve()), "RECOPS_PROFILE": self.profile}
        for f in dataclasses.fields(self):
            if f.name in ("home", "profile"):
                continue
            val = getattr(self, f.name)
            if isinstance(val, (bool, dict, list, tuple)):
                env[f"RECOPS_{f.name.upper()}"] = json.dumps(val if not isinstance(val, tuple) else list(val))
            elif isinstance(val, (str, int, float)):
                env[f"RECOPS_{f.name.upper()}"] = str(val)
        return env


def _profile_defaults(profile: str) -> dict[str, Any]:
    if profile == "scaleout":
        return {
            "event_store_url": "postgresql+psycopg2://postgres@127.0.0.1:5432/recops",
            "mlflow_tracking_uri": "postgresql+psycopg2://postgres@127.0.0.1:5432/recops_mlflow",
            "online_store": "redis",
            "prefect_api_url": "http://127.0.0.1:4200/api",
        }
    return {}


def _coerce(name: str, raw: str) -> Any:
    ftype = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    if ftype == "bool":
        if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"RECOPS_{name.upper()} must be true or false, got {raw!r}")
        return raw.strip().lower() in ("1", "true", "yes")
    if ftype.startswith("list"):
        parsed = yaml.safe_load(raw)
        parsed = [] if parsed is None else parsed
        if not isinstance(parsed, list):
            raise ValueError(f"RECOPS_{name.upper()} must be a list, got {raw!r}")
        return [float(v) for v in parsed] if ftype == "list[float]" else [str(v) for v in parsed]
    if ftype in ("int",):
        return int(raw)
    if ftype in ("float",):
        return float(raw)
    if ftype == "Path":
        return Path(raw)
    if ftype.startswith("dict"):
        parsed = yaml.safe_load(raw)
        if not isinstance(parsed, dict):
            raise ValueError(f"RECOPS_{name.upper()} must be a mapping, got {raw!r}")
        return {str(k): float(v) for k, v in parsed.items()}
    return raw


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, the config file, ``RECOPS_*`` variables and ``overrides``.

    Args:
        path: YAML file of settings; ``None``: the file named by ``RECOPS_CONFIG``, else ``./recops.yaml``.
            A missing file is not an error (defaults and the environment apply).
        **overrides: settings fields that win over everything else (e.g. ``home=``, ``profile=``).

    Returns:
        The validated settings.

    Raises:
        ValueError: the file is not a mapping or names unknown settings, a ``RECOPS_*`` value cannot be
            parsed, the profile is unknown, custom event types redefine built-in ones,
            ``exclude_event_types`` names unknown types, a tuning list or ``generators`` is empty, or
            ``max_per_category``, ``fresh_item_days`` or ``fresh_item_boost`` is negative.
    """
    file_values: dict[str, Any] = {}
    cfg_path = Path(path or os.environ.get("RECOPS_CONFIG", "recops.yaml"))
    if cfg_path.exists():
        loaded = yaml.safe_load(cfg_path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{cfg_path}: expected a mapping of settings")
        file_values = loaded
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(file_values) - known
    if unknown:
        raise ValueError(f"{cfg_path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")

    env_values = {
        name: _coerce(name, os.environ[f"RECOPS_{name.upper()}"])
        for name in known
        if f"RECOPS_{name.upper()}" in os.environ
    }
    profile = overrides.get("profile") or env_values.get("profile") or file_values.get("profile") or "local"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    values = {**_profile_defaults(profile), **file_values, **env_values, **overrides, "profile": profile}
    values["home"] = Path(values.get("home", Settings.home))
    settings = Settings(**values)
    clash = set(settings.custom_event_types) & set(DEFAULT_EVENT_WEIGHTS)
    if clash:
        raise ValueError(f"custom_event_types redefine built-in types {sorted(clash)}")
    unknown_ex = set(settings.exclude_event_types) - set(settings.event_types)
    if unknown_ex:
        raise ValueError(f"exclude_event_types names unknown event types {sorted(unknown_ex)}; "
                         f"known: {sorted(settings.event_types)}")
    if not settings.generators or not settings.ease_l2 or not settings.svd_factors or not settings.itemknn_neighbors \
            or not settings.covisit_half_life_days:
        raise ValueError("generators, ease_l2, svd_factors, itemknn_neighbors and covisit_half_life_days need at "
                         "least one entry")
    if settings.max_per_category < 0 or settings.fresh_item_boost < 0 or settings.fresh_item_days < 0:
        raise ValueError("max_per_category, fresh_item_days and fresh_item_boost must be >= 0")
    return settings
