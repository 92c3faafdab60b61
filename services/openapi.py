"""What ``GET /docs.json`` (and so the Swagger UI at ``/``) says about the API itself.

BentoML fills the OpenAPI ``info`` with its own: the version is "None" unless the service runs from a
Bento, the description is its README boilerplate and the contact is BentoML's team. ``ApiInfo``, an
ASGI middleware (``Service.add_asgi_middleware``), puts recops's there instead; every other request
passes through untouched.
"""

from __future__ import annotations

import json

import recops

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


def document_auth(spec: dict, metrics_open: bool) -> None:
    """Declare the bearer tokens: the security scheme, and on every operation that needs one its
    scope, ``security`` and the 401 and 403 it may answer (Swagger UI's Authorize button uses them).

    Args:
        spec: the OpenAPI document, changed in place.
        metrics_open: ``/metrics`` needs no token.
    """
    from recops.auth import METRICS, required_scope

    spec.setdefault("components", {}).setdefault("securitySchemes", {})["token"] = {
        "type": "http", "scheme": "bearer",
        "description": "a recops API token (`recops token create --scope read,track --name NAME`)"}
    error = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}},
                                             "required": ["error"]}}}
    for path, ops in spec.get("paths", {}).items():
        need = required_scope(path)
        if need is None or (need == METRICS and metrics_open):
            continue
        for op in ops.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            op["security"] = [{"token": []}]
            op["description"] = f"{op.get('description') or ''}\n\nScope: `{need}` (or `admin`).".lstrip()
            op["responses"].setdefault("401", {"description": "no token, or not an active one", "content": error})
            op["responses"].setdefault("403", {"description": f"the token lacks the `{need}` scope",
                                               "content": error})


class ApiInfo:
    """ASGI middleware: replaces ``info`` in the ``GET /docs.json`` response (no ``contact``: BentoML's
    team is not whom an API caller should write to) and, with auth on, declares the tokens."""

    PATH = "/docs.json"

    def __init__(self, app):
        from recops.config import load_settings

        self.app = app
        settings = load_settings()
        self.auth, self.metrics_open = settings.auth, not settings.metrics_auth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.PATH:
            await self.app(scope, receive, send)
            return
        start: dict = {}
        chunks: list[bytes] = []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                start.update(message)  # sent with the body, once its length is known
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if start.get("status") == 200:
                spec = json.loads(body)
                spec["info"] = info()
                if self.auth:
                    document_auth(spec, self.metrics_open)
                body = json.dumps(spec).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
