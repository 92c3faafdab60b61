"""API tokens with scopes, stored hashed in the event store's database.

Each token (or, with auth off, each client address) has a rate limit: a token bucket per server
process (``Buckets``; ``services/guard.py`` answers 429 with ``Retry-After``).

    read     recommend, session, next-items, profile, explain, predict, deals, implicit-rating, segments, model
    track    /track, /track/batch
    admin    experiments, and anything that changes state (and every path not named here)
    metrics  /metrics, when ``metrics_auth`` is on (admin also may)

A token is ``rk_`` and 43 random URL-safe characters (256 bits), shown once when it is created. The
database keeps its SHA-256 digest, never the token: a salted slow hash buys nothing for a secret of
that entropy, and a fast one keeps the check off the request's latency. A server compares the sent
token's digest with every active one it holds by ``hmac.compare_digest``, with no early exit; one it
does not hold yet (just created) is looked up by digest, which tells nothing about the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from typing import NamedTuple

import sqlalchemy as sa

from recops.store import create_tables, metadata

log = logging.getLogger("recops.auth")

READ, TRACK, ADMIN, METRICS = "read", "track", "admin", "metrics"
SCOPES = (READ, TRACK, ADMIN, METRICS)
PREFIX = "rk_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True, comment="SHA-256 of the token, hex"),
    sa.Column("scopes", sa.String(64), nullable=False, comment="comma-separated"),
    sa.Column("created_at", sa.Float, nullable=False, comment="UTC epoch seconds"),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("rate", sa.Float, nullable=True, comment="requests/s; null: the rate_limit_per_second setting"),
)

# What each route needs. Open: liveness, readiness and the API's documentation.
OPEN_PATHS = frozenset({"/", "/docs", "/docs.json", "/schema.json", "/health", "/healthz", "/livez", "/readyz"})
OPEN_PREFIXES = ("/static_content/", "/assets/")  # the Swagger UI's files
ROUTE_SCOPES = {
    "/recommend": READ, "/session/recommend": READ, "/next-items": READ, "/explain": READ, "/predict": READ,
    "/deals": READ, "/implicit-rating": READ, "/segments": READ, "/model": READ,
    "/track": TRACK, "/track/batch": TRACK,
    "/metrics": METRICS,
}
PREFIX_SCOPES = (("/users/", READ), ("/experiments", ADMIN))


class TokenError(ValueError):
    """A token request that cannot be done (bad name or scope, a name in use, an unknown token)."""


class Token(NamedTuple):
    """An active token, as a request is checked against it."""

    name: str
    scopes: frozenset[str]
    rate: float | None = None  # its own rate limit (requests/s), or None: the setting's

    def allows(self, scope: str) -> bool:
        """Whether this token may call a route that needs ``scope`` (admin may call everything)."""
        return scope in self.scopes or ADMIN in self.scopes


def digest(token: str) -> str:
    """The stored form of a token.

    Args:
        token: the token as sent.

    Returns:
        Its SHA-256, hex.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(text: str) -> frozenset[str]:
    """Scopes from ``read,track``.

    Args:
        text: comma-separated scope names.

    Returns:
        The scopes.

    Raises:
        TokenError: none given, or one that does not exist.
    """
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise TokenError(f"unknown scope {', '.join(unknown)}" if unknown else "no scope given"
                         f" (scopes: {', '.join(SCOPES)})")
    return scopes


def required_scope(path: str) -> str | None:
    """The scope a request path needs.

    Args:
        path: the request's path.

    Returns:
        The scope, or None for an open path. A path no route names needs ``admin``.
    """
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path in ROUTE_SCOPES:
        return ROUTE_SCOPES[path]
    return next((scope for prefix, scope in PREFIX_SCOPES if path.startswith(prefix)), ADMIN)


class TokenStore:
    """Tokens in the event store's database."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        create_tables(engine, [api_tokens])

    def create(self, name: str, scopes: frozenset[str], rate: float | None = None) -> str:
        """A new token.

        Args:
            name: what it is for (unique among tokens, revoked ones included).
            scopes: what it may call.
            rate: its own rate limit in requests/s (0: none); None: the ``rate_limit_per_second`` setting.

        Returns:
            The token: shown this once, stored only as its digest.

        Raises:
            TokenError: a bad name or scope, or a name in use.
        """
        if not NAME.match(name):
            raise TokenError(f"bad token name {name!r}: letters, digits, _ . - (at most 64, first a letter or digit)")
        parse_scopes(",".join(scopes))
        if rate is not None and not rate >= 0:
            raise TokenError(f"bad rate {rate}: requests per second, >= 0 (0: no limit)")
        token = PREFIX + secrets.token_urlsafe(32)
        try:
            with self.engine.begin() as conn:
                conn.execute(api_tokens.insert().values(name=name, digest=digest(token),
                                                        scopes=",".join(sorted(scopes)), created_at=time.time(),
                                                        rate=rate))
        except sa.exc.IntegrityError:
            raise TokenError(f"a token named {name!r} exists: revoke it and pick another name") from None
        return token

    def revoke(self, name: str) -> None:
        """Revoke a token: servers refuse it within ``auth_refresh_seconds``.

        Args:
            name: the token's name.

        Raises:
            TokenError: no active token has that name.
        """
        with self.engine.begin() as conn:
            n = conn.execute(api_tokens.update().where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                             .values(revoked_at=time.time())).rowcount
        if n == 0:
            raise TokenError(f"no active token is named {name!r} (recops token list)")

    def list(self) -> list[dict]:
        """Every token, newest first, without digests.

        Returns:
            ``name``, ``scopes`` (list), ``created_at``, ``revoked_at``, ``rate`` per token.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at.desc())).all()
        return [{"name": r.name, "scopes": r.scopes.split(","), "created_at": r.created_at,
                 "revoked_at": r.revoked_at, "rate": r.rate} for r in rows]

    def active(self, digest: str | None = None) -> dict[str, Token]:
        """The tokens not revoked.

        Args:
            digest: only the token with this digest (a unique index finds it); None: all.

        Returns:
            digest -> token.
        """
        q = sa.select(api_tokens.c.name, api_tokens.c.digest, api_tokens.c.scopes,
                      api_tokens.c.rate).where(api_tokens.c.revoked_at.is_(None))
        if digest is not None:
            q = q.where(api_tokens.c.digest == digest)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return {r.digest: Token(r.name, frozenset(r.scopes.split(",")), r.rate) for r in rows}


class Buckets:
    """Token buckets, one per caller: ``rate`` requests/s sustained, ``burst`` at once. Used from one
    event loop (no locks); full buckets are dropped when more than ``max_keys`` callers are held."""

    def __init__(self, max_keys: int = 100_000):
        self.max_keys = max_keys
        self._state: dict[str, tuple[float, float]] = {}  # caller -> (tokens left, when)

    def take(self, key: str, rate: float, burst: float) -> float:
        """Spend one request of a caller's allowance.

        Args:
            key: the caller.
            rate: requests/s refilled (0: no limit).
            burst: the bucket's size.

        Returns:
            0 when the request may go ahead, else the seconds until it may.
        """
        if rate <= 0:
            return 0.0
        now = time.monotonic()
        burst = max(burst, 1.0)
        tokens, at = self._state.get(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now)
            return 0.0
        self._state[key] = (tokens, now)
        if len(self._state) > self.max_keys:
            self._state = {k: v for k, v in self._state.items() if v[0] < burst - 1}
        return (1 - tokens) / rate


class Verifier:
    """What a server checks requests with: the active tokens, re-read at most every ``refresh_seconds``
    (a revoked token stops working within that time). A token it does not hold is looked up by its
    digest at once (one indexed query), so a new token works right away; a digest found nowhere is not
    looked up again for ``miss_seconds``."""

    def __init__(self, store: TokenStore, refresh_seconds: float, miss_seconds: float = 1.0):
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.miss_seconds = miss_seconds
        self._tokens: dict[str, Token] = {}
        self._misses: dict[str, float] = {}  # digest -> when it was found nowhere
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def _current(self) -> dict[str, Token]:
        if time.monotonic() - self._read_at >= self.refresh_seconds:
            with self._lock:
                now = time.monotonic()
                if now - self._read_at >= self.refresh_seconds:
                    try:
                        self._tokens, self._misses = self.store.active(), {}
                    except Exception:  # the database away: the tokens known last keep working until it is back
                        log.exception("could not re-read the API tokens; keeping the %d known", len(self._tokens))
                    finally:
                        self._read_at = now
        return self._tokens

    def _look_up(self, d: str) -> Token | None:
        now = time.monotonic()
        if now - self._misses.get(d, float("-inf")) < self.miss_seconds:
            return None
        try:
            found = self.store.active(d).get(d)
        except Exception:  # the database away: an unknown token stays unknown
            log.exception("could not look a token up")
            return None
        if found is None:
            if len(self._misses) > 10_000:
                self._misses.clear()
            self._misses[d] = now
        else:
            self._tokens = {**self._tokens, d: found}
        return found

    def check(self, token: str) -> Token | None:
        """The active token this is, if any.

        Args:
            token: the bearer token as sent.

        Returns:
            The token (name, scopes, rate), or None.
        """
        d = digest(token)
        found = None
        for stored, tok in self._current().items():  # every digest, no early exit: the same time for any token
            if hmac.compare_digest(stored, d):
                found = tok
        return found if found is not None else self._look_up(d)
