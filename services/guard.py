"""The service's door: who may call what (``recops.auth``), how often and how much, as an ASGI middleware
in front of every route.

A request to a route that needs a scope must carry ``Authorization: Bearer <token>``: none (or a token
that is not active) gets a 401, a token without the scope a 403, both with a JSON body that says what is
wrong. Liveness, readiness and the documentation stay open; ``/metrics`` is open unless ``metrics_auth``.
``auth = false`` opens everything, and the server says so in a warning at start. A caller over its rate
gets a 429 with ``Retry-After``; a body over ``max_body_bytes`` a 413.

Only light imports at module level: BentoML's supervisor imports the service module, and with it this one.
"""

from __future__ import annotations

import json
import logging
import math

log = logging.getLogger("recops.services")
REFUSED = None  # the refusal counter (``bentoml.metrics``), made by the first Guard in the worker


async def reply(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer a request here with a JSON error body (BentoML's shape: ``{"error": ...}``).

    Args:
        send: the ASGI send callable.
        status: the HTTP status.
        message: what is wrong, for the caller.
        headers: extra response headers.
    """
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def bearer(headers: dict[bytes, bytes]) -> str | None:
    """The bearer token of a request.

    Args:
        headers: the request's headers (lower-case names, as ASGI gives them).

    Returns:
        The token, or None when the request has no ``Authorization: Bearer`` header.
    """
    value = headers.get(b"authorization")
    if value is None:
        return None
    kind, _, token = value.decode("latin-1").partition(" ")
    return token.strip() or None if kind.lower() == "bearer" else None


class Guard:
    """ASGI middleware, in this order: the body's size (413), the token and its scope (401, 403), the
    caller's rate (429 with ``Retry-After``). Each refusal is counted (``recops_refused_total{status}``)."""

    def __init__(self, app):
        import bentoml

        from recops.auth import METRICS, Buckets, required_scope
        from recops.config import load_settings

        self.app = app
        self.required_scope = required_scope
        s = load_settings()
        self.tokenless = frozenset() if s.metrics_auth else frozenset({METRICS})  # scopes that need no token
        self.max_body = s.max_body_bytes
        self.rate, self.burst = s.rate_limit_per_second, s.rate_limit_burst
        self.anon_rate, self.anon_burst = s.anonymous_rate_limit_per_second, s.anonymous_rate_limit_burst
        self.buckets = Buckets()
        global REFUSED
        if REFUSED is None:
            REFUSED = bentoml.metrics.Counter(name="recops_refused", labelnames=["status"],
                                              documentation="requests refused at the door: 401 no or bad token, "
                                              "403 scope, 413 body too large, 429 rate limit")
        for status in ("401", "403", "413", "429"):
            REFUSED.labels(status=status)
        self.verifier = None
        if not s.auth:
            log.warning("auth is off (setting auth = false): anyone who reaches this server may track events and "
                        "read experiments; create tokens with `recops token create` and turn it on")
            return
        import sqlalchemy as sa

        from recops.auth import TokenStore, Verifier

        engine = sa.create_engine(s.event_store_uri, pool_size=1, max_overflow=1)
        self.verifier = Verifier(TokenStore(engine), s.auth_refresh_seconds)

    async def _refuse(self, send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        REFUSED.labels(status=str(status)).inc()
        await reply(send, status, message, headers)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        need = self.required_scope(scope["path"])
        if need is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if headers.get(b"content-type", b"").startswith(b"multipart/"):  # every route takes JSON
            await reply(send, 415, "send the body as JSON (Content-Type: application/json), not multipart")
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._refuse(send, 413, f"the request body has {int(length)} bytes; at most {self.max_body} "
                               "(setting max_body_bytes): send fewer events per /track/batch")
            return
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            receive = await self._bounded(receive)
            if receive is None:
                await self._refuse(send, 413, f"the request body is larger than {self.max_body} bytes "
                                   "(setting max_body_bytes)")
                return
        if self.verifier is None or need in self.tokenless:
            client = (scope.get("client") or ("?", 0))[0]
            wait = self.buckets.take(f"addr:{client}", self.anon_rate, self.anon_burst)
            if wait:
                await self._limited(send, wait, f"callers without a token may make {self.anon_rate:g} requests/s "
                                    f"each (burst {self.anon_burst})")
                return
            await self.app(scope, receive, send)
            return
        token = bearer(headers)
        if token is None:
            await self._refuse(send, 401, f"{scope['path']} needs a token: send 'Authorization: Bearer <token>' "
                               f"(recops token create --scope {need} --name NAME)", {"WWW-Authenticate": "Bearer"})
            return
        found = self.verifier.check(token)
        if found is None:
            await self._refuse(send, 401, "the token is not an active recops token (revoked, or never created here)",
                               {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        if not found.allows(need):
            await self._refuse(send, 403, f"token {found.name!r} lacks the scope {need!r} that {scope['path']} "
                               f"needs (it has: {', '.join(sorted(found.scopes))})")
            return
        rate, burst = (self.rate, self.burst) if found.rate is None else (found.rate, 2 * found.rate)
        wait = self.buckets.take(f"token:{found.name}", rate, burst)
        if wait:
            await self._limited(send, wait, f"token {found.name!r} may make {rate:g} requests/s (burst {burst:g})")
            return
        await self.app(scope, receive, send)

    async def _limited(self, send, wait: float, what: str) -> None:
        await self._refuse(send, 429, f"rate limit: {what}; retry in {wait:.2f} s",
                           {"Retry-After": str(max(1, math.ceil(wait)))})

    async def _bounded(self, receive):
        """Read a body sent without ``Content-Length`` (chunked) up to the limit.

        Returns:
            A receive callable that replays it, or None when it is larger than the limit.
        """
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay
