"""What ``GET /docs.json`` (and so the Swagger UI at ``/``) says about the API itself.

BentoML fills the OpenAPI ``info`` with its own: the version is "None" unless the service runs from a
Bento, the description is its README boilerplate and the contact is BentoML's team. ``ApiInfo``, an
ASGI middleware (``Service.add_asgi_middleware``), puts recops's there instead; every other request
passes through untouched. It also completes the document where BentoML's generator cannot say what
the server does (``document_*``): a client generated from it, or schemathesis, meets no surprise.
"""

from __future__ import annotations

import json
import logging

import recops

log = logging.getLogger("recops.services")
RETRY_AFTER_SECONDS = 5  # what a 503 (the event store or the model away) tells a caller to wait

TITLE = "recops"
DESCRIPTION = """Real-time behavioral recommendations.

- **Track** what people do (`POST /track`, `/track/batch`): each event is stored before the answer, and
  the person's online features and session are refreshed, so the next request reflects it.
- **Recommend** (`POST /recommend`, `/session/recommend`, `/next-items`): every item comes with a reason;
  every list names the model version that answered, its strategy, and whether (and why) the fallback
  answered. A valid request never gets a 5xx.
- **Understand** (`/predict`, `/explain`, `/users/{id}/profile`, `/segments`, `/deals`), **operate**
  (`/health`, `/model`, `/metrics`, `/experiments`).

Invalid input gets a 4xx whose message names the field."""


def info() -> dict:
    """The OpenAPI ``info`` object recops serves.

    Returns:
        Title, description (Markdown) and version (the recops package's).
    """
    return {"title": TITLE, "description": DESCRIPTION, "version": recops.__version__}


ERROR = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}},
                                         "required": ["error"]}}}
# what a route answers besides BentoML's own 400/404/500 (and FastAPI's 422), in BentoML's error shape
EXTRA_ERRORS = {"/predict": {503: "no model is served"}, "/next-items": {503: "no model is served"},
                "/track": {503: "the event store is unreachable: nothing was stored (Retry-After)"},
                "/track/batch": {503: "the event store is unreachable: nothing was stored (Retry-After)"}}


def document_doors(spec: dict, auth: bool, metrics_open: bool) -> None:
    """Declare what the guard (``services/guard.py``) may answer before a route runs: on every route
    that is not open, 429 (rate) and, for a body, 413; with auth on, the bearer scheme, the route's
    scope, ``security``, 401 and 403 (Swagger UI's Authorize button uses them).

    Args:
        spec: the OpenAPI document, changed in place.
        auth: tokens are required.
        metrics_open: ``/metrics`` needs no token.
    """
    from recops.auth import METRICS, required_scope

    if auth:
        spec.setdefault("components", {}).setdefault("securitySchemes", {})["token"] = {
            "type": "http", "scheme": "bearer",
            "description": "a recops API token (`recops token create --scope read,track --name NAME`)"}
    for path, ops in spec.get("paths", {}).items():
        need = required_scope(path)
        if need is None:
            continue
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            r = op["responses"]
            r.setdefault("429", {"description": "over the caller's rate limit: retry after `Retry-After` seconds",
                                 "content": ERROR, "headers": {"Retry-After": {"schema": {"type": "integer"}}}})
            if method in ("post", "put", "patch"):
                r.setdefault("413", {"description": "the body is larger than the server's max_body_bytes",
                                     "content": ERROR})
                r.setdefault("415", {"description": "a multipart body: send JSON", "content": ERROR})
            if not auth or (need == METRICS and metrics_open):
                continue
            op["security"] = [{"token": []}]
            op["description"] = f"{op.get('description') or ''}\n\nScope: `{need}` (or `admin`).".lstrip()
            r.setdefault("401", {"description": "no token, or not an active one", "content": ERROR})
            r.setdefault("403", {"description": f"the token lacks the `{need}` scope", "content": ERROR})


def document_errors(spec: dict) -> None:
    """Make the error responses say what is sent: BentoML's 400 carries pydantic's list of problems in
    ``detail`` (its schema said a string), and some routes answer codes BentoML does not list.

    Args:
        spec: the OpenAPI document, changed in place.
    """
    schemas = spec.get("components", {}).get("schemas", {})
    detail = schemas.get("InvalidArgument", {}).get("properties", {}).get("detail")
    if detail is not None:
        detail.pop("type", None)
        detail["oneOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]
    for path, codes in EXTRA_ERRORS.items():
        for op in spec.get("paths", {}).get(path, {}).values():
            for code, what in codes.items():
                op.get("responses", {}).setdefault(str(code), {"description": what, "content": ERROR})
    invalid = {"$ref": "#/components/schemas/InvalidArgument"} if detail is not None else ERROR["application/json"][
        "schema"]
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            if not isinstance(op, dict):
                continue
            r = op.get("responses", {})
            if "422" in r:  # the FastAPI routes answer invalid input with BentoML's 400 (services.service)
                r.pop("422")
                r.setdefault("400", {"description": "Bad Request"})
            for code, resp in r.items():  # every error is {"error": message} (services.openapi.OneErrorShape)
                if code.startswith(("4", "5")):
                    resp["content"] = {"application/json": {"schema": invalid if code == "400" else
                                                            ERROR["application/json"]["schema"]}}
            if "requestBody" in op:
                op["requestBody"]["required"] = True


def document_events(spec: dict) -> None:
    """An event needs a ``user_id`` or a ``session_id`` (not null): say so on every event schema (the
    request bodies of ``/track`` and ``/track/batch`` and the ``TrackEvent`` components).

    Args:
        spec: the OpenAPI document, changed in place.
    """
    actor = {"anyOf": [{"required": [k], "properties": {k: {"type": "string"}}} for k in ("user_id", "session_id")]}

    def mark(schema: dict) -> None:
        if {"user_id", "session_id", "item_id", "event_type"} <= set(schema.get("properties", {})):
            schema.update(actor)

    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        if name.startswith("TrackEvent"):
            mark(schema)
    for path in ("/track", "/track/batch"):
        body = spec.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {})
        schema = body.get("content", {}).get("application/json", {}).get("schema", {})
        mark(schema)
        if isinstance(schema.get("items"), dict):
            mark(schema["items"])


def _openapi30(node) -> None:
    """What OpenAPI 3.0 says differently from the JSON Schema that pydantic writes, everywhere in the
    document: a property whose default is null accepts null (``nullable``, where BentoML's generator
    dropped the ``null`` branch of the field's ``anyOf``), and ``exclusiveMinimum``/``exclusiveMaximum``
    are flags beside ``minimum``/``maximum``, not numbers."""
    if isinstance(node, dict):
        if "default" in node and node["default"] is None and "nullable" not in node and (
                "type" in node or "allOf" in node or "$ref" in node):
            node["nullable"] = True
            if "$ref" in node:  # OpenAPI 3.0 ignores a $ref's siblings: the reference goes under allOf
                node["allOf"] = [{"$ref": node.pop("$ref")}]
        for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(node.get(flag), int | float) and not isinstance(node.get(flag), bool):
                node[bound], node[flag] = node[flag], True
        for v in node.values():
            _openapi30(v)
    elif isinstance(node, list):
        for v in node:
            _openapi30(v)


def group_routes(spec: dict) -> None:
    """The routes recops serves through FastAPI (``/track``, ``/health``, ...) join BentoML's groups in
    Swagger UI instead of a group called "default".

    Args:
        spec: the OpenAPI document, changed in place.
    """
    service, infra = "Service APIs", "Infrastructure"  # BentoML's two groups
    for path, ops in spec.get("paths", {}).items():
        for op in ops.values():
            if isinstance(op, dict) and op.get("tags", ["default"]) == ["default"]:
                op["tags"] = [infra if path in ("/health", "/model") else service]


def complete(spec: dict, auth: bool, metrics_open: bool) -> dict:
    """BentoML's OpenAPI document as recops serves it: its ``info`` and every ``document_*`` fix.

    Args:
        spec: the document, changed in place.
        auth: tokens are required.
        metrics_open: ``/metrics`` needs no token.

    Returns:
        The document.
    """
    spec["info"] = info()
    group_routes(spec)
    document_doors(spec, auth, metrics_open)
    document_errors(spec)
    document_events(spec)
    _openapi30(spec)
    return spec


class BodyRewriter:
    """ASGI middleware that holds back a response it changes until the whole body is in, then sends the
    changed body with its new length. Subclasses say which requests (``applies``) and responses
    (``wants``) and how (``change``); everything else passes through untouched."""

    def __init__(self, app):
        self.app = app

    def applies(self, scope) -> bool:
        return scope["type"] == "http"

    def wants(self, status: int) -> bool:
        return True

    def change(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
               ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return headers, body

    async def __call__(self, scope, receive, send):
        if not self.applies(scope):
            await self.app(scope, receive, send)
            return
        start: dict = {}
        chunks: list[bytes] = []

        async def hold(message):
            if message["type"] == "http.response.start":
                if self.wants(message["status"]):
                    start.update(message)  # sent with the body, once its length is known
                else:
                    await send(message)
                return
            if not start or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers, body = self.change(start["status"], headers, b"".join(chunks))
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, hold)


class OneErrorShape(BodyRewriter):
    """Every error body is one JSON object, ``{"error": message, ...}``. BentoML answers the exceptions
    of its API routes with a one-element list (``[{"error": ...}]``): that list becomes its object;
    Starlette's plain-text 404 and 405 become ``{"error": "Not Found"}``. Only error responses are read."""

    def wants(self, status: int) -> bool:
        return status >= 400

    def change(self, status, headers, body):
        if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):  # every 503 here is passing
            headers = [*headers, (b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
        kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        if not kind.startswith(b"application/json"):  # Starlette's own 404, 405: plain text
            body = json.dumps({"error": body.decode("utf-8", "replace") or "error"}).encode()
            headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            headers.append((b"content-type", b"application/json"))
        elif body.startswith(b"[{"):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict):
                body = json.dumps(parsed[0]).encode()
        return headers, body


class ApiInfo(BodyRewriter):
    """``GET /docs.json``: recops's ``info`` (no ``contact``: BentoML's team is not whom an API caller
    should write to), the guard's answers and tokens, the errors as sent, the event rules (``complete``)."""

    PATH = "/docs.json"

    def __init__(self, app):
        from recops.config import load_settings

        super().__init__(app)
        settings = load_settings()
        self.auth, self.metrics_open = settings.auth, not settings.metrics_auth

    def applies(self, scope) -> bool:
        return scope["type"] == "http" and scope["path"] == self.PATH

    def wants(self, status: int) -> bool:
        return status == 200

    def change(self, status, headers, body):
        try:
            return headers, json.dumps(complete(json.loads(body), self.auth, self.metrics_open)).encode()
        except Exception:  # BentoML's own document, rather than none
            log.exception("could not complete the OpenAPI document; serving BentoML's")
            return headers, body
