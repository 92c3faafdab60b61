"""A thin wrapper over the Feast store: write offline tables, materialize, point-in-time reads, push.

Feast's import costs seconds, so it happens here on first use, never in the CLI's start-up path.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from recops.config import Settings
from recops.features import ITEM_FEATURES, RECENT_FEATURES, SESSION_FEATURES, USER_FEATURES
from recops.vocabulary import ITEM_VIEW, OFFLINE_TABLES, RECENT_VIEW, SESSION_VIEW, USER_VIEW

log = logging.getLogger("recops.featurestore")

_LOCAL = threading.Lock()  # Feast's SQLite online store shares one connection: one thread at a time
ONLINE_DOWN = "the online store is unreachable"  # how ``OnlineStoreDown``'s message starts
RETRY_SECONDS = 1.0  # after a failed read, reads fail at once for this long before the store is tried again
# the Redis client's timeouts unless the redis_url sets them (redis-py's default is to wait forever)
REDIS_TIMEOUTS = {"socket_connect_timeout": 1, "socket_timeout": 5}


def _expired(ts, ttl) -> bool:
    """Whether a row written at ``ts`` is past its view's TTL (Feast answers such a row as null)."""
    if not ttl:
        return False
    written = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return datetime.now(UTC) - written > ttl


class OnlineStoreDown(RuntimeError):
    """The online store (Redis) cannot be reached; the message says why."""


def _feature_repo_dir() -> Path:
    from recops import feature_repo

    return Path(feature_repo.__file__).resolve().parent


def feature_store_yaml(settings: Settings) -> str:
    """The ``feature_store.yaml`` for these settings, from the packaged template of the online store.

    Args:
        settings: selects the template (``online_store == "redis"``: scaleout, else local/SQLite) and
            fills in the Feast project, the recops home (absolute) and the Redis address.

    Returns:
        The YAML text.
    """
    tmpl = "scaleout" if settings.online_store == "redis" else "local"
    text = (_feature_repo_dir() / f"feature_store.{tmpl}.yaml").read_text()
    redis = settings.redis_url + "".join(f",{k}={v}" for k, v in REDIS_TIMEOUTS.items()
                                         if f"{k}=" not in settings.redis_url)
    return text.format(project=settings.feast_project, home=Path(settings.home).resolve(), redis=redis)


def _coerce(df: pd.DataFrame, spec: dict[str, str]) -> pd.DataFrame:
    """Feast wants float64 for Float64 fields, plain ints for Int64 ones and strings (one cast per
    kind: the online refresh runs this on every cycle)."""
    out = df.copy()
    kinds = {t: [n for n, k in spec.items() if k == t and n in out] for t in ("int", "float", "str")}
    if kinds["int"]:
        out[kinds["int"]] = out[kinds["int"]].apply(pd.to_numeric).fillna(0).astype("int64")
    if kinds["float"]:
        out[kinds["float"]] = out[kinds["float"]].apply(pd.to_numeric).astype("float64")
    if kinds["str"]:
        out[kinds["str"]] = out[kinds["str"]].fillna("").astype(str)
    return out


class FeatureStoreClient:
    """One Feast ``FeatureStore`` for a recops home; definitions are applied on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.repo_dir = Path(settings.home).resolve() / "feast"
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        (self.repo_dir / "feature_store.yaml").write_text(feature_store_yaml(settings))
        self._store = None
        self._down: str | None = None  # why the last online read failed (None: it succeeded)
        self._retry_at = 0.0  # monotonic time before which reads fail without trying the store
        self._views: dict = {}  # view name -> FeatureView, for online reads
        self.user_refs = [f"{USER_VIEW}:{n}" for n in USER_FEATURES]
        self.item_refs = [f"{ITEM_VIEW}:{n}" for n in ITEM_FEATURES]

    @property
    def store(self):
        """The Feast ``FeatureStore`` over ``repo_dir``, created (and Feast imported) on first access."""
        if self._store is None:
            from feast import FeatureStore

            self._store = FeatureStore(repo_path=str(self.repo_dir))
            if self.settings.online_store == "redis":
                self._fail_fast(self._store)
        return self._store

    @staticmethod
    def _fail_fast(store) -> None:
        """One immediate retry for the Redis client, not redis-py's three with up to seconds of back-off
        each: a request must not wait on an online store that is down (``OnlineStoreDown`` answers)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            online = store._get_provider().online_store  # the provider and client the reads use
            online._get_client(store.config.online_store).set_retry(Retry(NoBackoff(), 1))
        except Exception:  # Feast moved its internals: reads still work, only slower to fail
            log.exception("could not set the Redis client's retries; an outage will be slower to detect")

    @property
    def down(self) -> str | None:
        """Why the online store could not be read at the last try (None: the last read succeeded)."""
        return self._down

    def _outage_errors(self) -> tuple[type[BaseException], ...]:
        """The errors that mean the online store is away (not a bug): Redis's connection and timeout errors."""
        if self.settings.online_store != "redis":
            return ()
        import redis

        return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def apply(self) -> None:
        """Register the entities, sources and feature views (``feature_repo.definitions``) with Feast."""
        from recops.feature_repo.definitions import build

        self.store.apply(build(self.settings.feature_dir))

    def write_offline(self, user_feats: pd.DataFrame, item_feats: pd.DataFrame, sessions: pd.DataFrame,
                      recent: pd.DataFrame) -> None:
        """Replace the offline parquet tables atomically (write to a temp file, then rename).

        Each frame holds its key column, ``event_timestamp`` and the view's features; columns are cast
        to the Feast types first.

        Args:
            user_feats: user feature snapshots (``recops.features.user_features``).
            item_feats: item feature snapshots (``recops.features.item_features``).
            sessions: session states (``recops.features.session_states``).
            recent: the users' recent items and ratings (``recops.features.user_recent``).
        """
        d = self.settings.feature_dir
        d.mkdir(parents=True, exist_ok=True)
        for view, df, spec in ((USER_VIEW, user_feats, USER_FEATURES), (ITEM_VIEW, item_feats, ITEM_FEATURES),
                               (SESSION_VIEW, sessions, SESSION_FEATURES), (RECENT_VIEW, recent, RECENT_FEATURES)):
            name = OFFLINE_TABLES[view]
            tmp = d / f".{name}.parquet.tmp"
            _coerce(df, spec).to_parquet(tmp, index=False)
            tmp.replace(d / f"{name}.parquet")

    def materialize(self, end: pd.Timestamp) -> None:
        """Load the latest offline rows up to ``end`` into the online store.

        Args:
            end: the newest feature timestamp to include (tz-aware); rows at ``end`` itself are included.
        """
        start = pd.Timestamp("1990-01-01", tz="UTC")
        self.store.materialize(start_date=start.to_pydatetime(),
                               end_date=(end + pd.Timedelta(seconds=1)).to_pydatetime())

    def historical(self, entity_df: pd.DataFrame, kind: str) -> pd.DataFrame:
        """Point-in-time features for ``entity_df`` (key column + ``event_timestamp``), same row order.

        Feast's file store drops rows that precede every feature row, collapses duplicates and
        reorders: the result is merged back onto the entity rows, so every input row is answered
        (with nulls where nothing was known yet).

        Args:
            entity_df: rows with the key column (``user_id`` or ``item_id``) and ``event_timestamp``, the
                time each row's features are looked up at; other columns are ignored.
            kind: ``"user"`` reads ``user_behavior`` by ``user_id``; anything else the item view by ``item_id``.

        Returns:
            One row per row of ``entity_df``, in that order: the key, ``event_timestamp`` (UTC) and the view's
            features (null where nothing was known at that time).
        """
        key = "user_id" if kind == "user" else "item_id"
        refs = self.user_refs if kind == "user" else self.item_refs
        ents = entity_df[[key, "event_timestamp"]].copy()
        ents["event_timestamp"] = pd.to_datetime(ents["event_timestamp"], utc=True)
        uniq = ents.drop_duplicates().reset_index(drop=True)
        got = self.store.get_historical_features(entity_df=uniq, features=refs).to_df()
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
        return ents.merge(got, on=[key, "event_timestamp"], how="left")

    def use_wal(self) -> None:
        """Put the SQLite online store in WAL mode, so that reads (the server) and writes (the online
        refresher, which calls this at its start) do not wait for each other. No-op for Redis."""
        db = self.repo_dir / "online.db"
        if self.settings.online_store == "sqlite" and db.exists():
            with sqlite3.connect(db) as conn:
                conn.execute("PRAGMA journal_mode=WAL")

    def online_user(self, user_id: str) -> dict | None:
        """The user's stored behavioral features (view ``user_behavior``).

        Args:
            user_id: the user.

        Returns:
            Feature name -> value, or None when the store knows nothing about the user.
        """
        return self._online(USER_VIEW, USER_FEATURES, "user_id", user_id, "u_last_event_ts")

    def online_recent(self, user_id: str) -> dict | None:
        """The user's recent items and their implicit ratings as the refresher last pushed them (view
        ``user_recent``; the profile shows them, the request path reads recent items from the event store).

        Args:
            user_id: the user.

        Returns:
            ``u_recent_items`` and ``u_recent_ratings`` (JSON strings), or None when nothing is stored.
        """
        return self._online(RECENT_VIEW, RECENT_FEATURES, "user_id", user_id, "u_recent_items")

    def online_session(self, session_id: str) -> dict | None:
        """A session's live state (view ``session_state``).

        Args:
            session_id: the session.

        Returns:
            ``SESSION_FEATURES`` name -> value, or None when the store has none (a new or expired session).
        """
        return self._online(SESSION_VIEW, SESSION_FEATURES, "session_id", session_id, "s_last_ts")

    def _online(self, view: str, spec: dict[str, str], key: str, value: str, present: str) -> dict | None:
        """One entity's online row; None when its ``present`` field is missing (nothing stored, or older
        than the view's TTL).

        Read with the online store's own ``online_read`` (what ``get_online_features`` runs underneath,
        without resolving feature references and building a response per call: 0.1 ms, not 0.5).

        Raises:
            OnlineStoreDown: the store cannot be reached (for ``RETRY_SECONDS`` after a failure, at once).
        """
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        if self._down and time.monotonic() < self._retry_at:
            raise OnlineStoreDown(self._down)
        fv, provider = self._view(view), self._provider()
        entity = EntityKey(join_keys=[key], entity_values=[Value(string_val=value)])
        try:
            with _LOCAL if self.settings.online_store == "sqlite" else contextlib.nullcontext():
                [(ts, values)] = provider.online_read(config=self.store.config, table=fv, entity_keys=[entity],
                                                      requested_features=list(spec))
        except self._outage_errors() as exc:
            if self._down is None:
                log.warning("%s: %s", ONLINE_DOWN, exc)
            self._down = f"{ONLINE_DOWN} ({type(exc).__name__})"
            self._retry_at = time.monotonic() + RETRY_SECONDS
            raise OnlineStoreDown(self._down) from exc
        if self._down is not None:
            log.warning("the online store answers again")
            self._down = None
        if values is None or ts is None or _expired(ts, fv.ttl):
            return None
        row = {key: value, **dict.fromkeys(spec), **{n: feast_value_type_to_python_type(v) for n, v in values.items()}}
        return row if row.get(present) is not None else None

    def _view(self, name: str):
        """A registered feature view, looked up once."""
        if name not in self._views:
            self._views[name] = self.store.get_feature_view(name)
        return self._views[name]

    def _provider(self):
        """Feast's provider of this store (it holds the online store and its client)."""
        return self.store._get_provider()

    # Writes go straight to each view's online table (what a push does for every view its push source
    # feeds, without the registry lookup that cost ~8 ms per call).
    def push_user(self, feats: pd.DataFrame) -> None:
        """Write user feature rows to the online store (no-op when empty).

        Args:
            feats: rows of ``user_id``, ``event_timestamp`` and ``USER_FEATURES``.
        """
        self._write(USER_VIEW, feats, USER_FEATURES)

    def push_recent(self, recent: pd.DataFrame) -> None:
        """Write the users' recent items and ratings to the online store (no-op when empty).

        Args:
            recent: rows of ``user_id``, ``event_timestamp`` and ``RECENT_FEATURES`` (``user_recent``).
        """
        self._write(RECENT_VIEW, recent, RECENT_FEATURES)

    def push_sessions(self, states: pd.DataFrame) -> None:
        """Write session states to the online store (no-op when empty).

        Args:
            states: rows of ``session_id``, ``event_timestamp`` and ``SESSION_FEATURES`` (``session_states``).
        """
        self._write(SESSION_VIEW, states, SESSION_FEATURES)

    def _write(self, view: str, df: pd.DataFrame, spec: dict[str, str]) -> None:
        if not df.empty:
            frame = _coerce(df, spec)
            with _LOCAL:
                self.store.write_to_online_store(view, frame)

    def teardown(self) -> None:
        """Remove the infrastructure Feast created for the registered views (e.g. the online tables)."""
        self.store.teardown()
