"""The FastAPI application: routes, limits, the API key, errors as one line, the page.

``create_app(service)`` builds it around a loaded :class:`Service`; ``app_from_env()`` is
the factory each uvicorn worker calls (``prom3e serve --workers N``), reading the
:class:`ServeConfig` JSON from ``PROM3E_SERVE_CONFIG``.

Errors: every 4xx body is ``{"detail": "<field>: <reason>", "field": "<field>"}`` — 400
malformed JSON, 401 missing/wrong API key, 404 unknown path or example row, 413 body over
``max_body_bytes`` or more than ``max_rows`` rows, 422 any invalid field, 501 a feature this
server was started without (an index, prototypes, examples). A 500 says only "internal
error" (details go to the server's log).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from prom3e import __version__
from prom3e.errors import Prom3eError
from prom3e.serve import schemas as S
from prom3e.serve.inputs import BadInput
from prom3e.serve.service import ServeConfig, Service

CONFIG_ENV = "PROM3E_SERVE_CONFIG"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8", "world.svg": "image/svg+xml"}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
REQUESTS = {"/encode": S.EncodeRequest, "/reconstruct": S.ReconstructRequest, "/retrieve": S.RetrieveRequest,
            "/classify": S.ClassifyRequest, "/next-modality": S.NextModalityRequest}
log = logging.getLogger("prom3e.serve")


class FastJSON(JSONResponse):
    """JSON through orjson: NumPy float arrays written directly (float32 → shortest float32 text)."""

    def render(self, content) -> bytes:
        import orjson

        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, detail: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 before any parsing
    (by its Content-Length, or while it streams in when there is none)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, f"body: over {self.limit} bytes (--max-body-bytes)", "body")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_big(scope, receive, send)
            more = msg.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _field(loc: tuple) -> str:
    out = ""
    for p in loc:
        if p == "body" and not out:
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _validation_message(err: dict, request_fields: list[str]) -> tuple[int, str, str]:
    kind, loc = err.get("type", ""), tuple(err.get("loc", ()))
    if kind == "json_invalid":
        pos = loc[1] if len(loc) > 1 else "?"
        why = (err.get("ctx") or {}).get("error", "not valid JSON")
        return 400, f"body: malformed JSON at character {pos} ({why})", "body"
    field = _field(loc)
    if kind == "extra_forbidden":
        return 422, f"{field}: unknown option (this endpoint takes: {', '.join(request_fields)})", field
    if kind == "missing" and field == "body":
        return 422, "body: missing (send a JSON object with 'rows')", field
    if kind == "missing":
        return 422, f"{field}: required", field
    if kind in ("dict_type", "model_attributes_type") and field == "body":
        return 422, "body: expected a JSON object with 'rows'", field
    if kind == "dict_type" and field.startswith("rows["):
        return 422, f"{field}: expected an object {{modality: value}}", field
    return 422, f"{field}: {err.get('msg', 'invalid')}", field


def create_app(service: Service) -> FastAPI:
    cfg = service.cfg
    key = None
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise Prom3eError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set or empty")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key named by --api-key-env")

    def require_key(given: str | None = Depends(header)) -> None:
        if key is None:
            return
        if given is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise BadInput("X-API-Key", "missing or wrong API key", 401)

    app = FastAPI(title="prom3e", version=__version__,
                  description="Probabilistic multimodal embeddings with missing modalities: encode, "
                              "reconstruct, retrieve, classify and rank the next modality to collect, "
                              "from any subset of modalities. Rows: `{modality: vector | raw input | null}`.")
    app.state.service = service
    keyed = [Depends(require_key)]
    errors = {status: {"model": S.Error} for status in (400, 401, 413, 422, 501)}
    static = {name: (resources.files("prom3e.serve") / "static" / name).read_bytes() for name in STATIC}

    @app.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput):
        return _error(exc.status, str(exc), exc.field or None)

    @app.exception_handler(Prom3eError)
    async def _prom3e_error(request: Request, exc: Prom3eError):
        return _error(422, str(exc).splitlines()[0])

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        model = REQUESTS.get(request.url.path)
        status, msg, field = _validation_message(exc.errors()[0], list(model.model_fields) if model else [])
        return _error(status, msg, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, f"{request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, "internal error (see the server's log)")

    def ok(results) -> JSONResponse:
        return FastJSON({"results": results})

    # --- the page --------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(static["index.html"], media_type=STATIC["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:  # a fixed set read at start-up: no path from the client reaches the disk
            raise BadInput("name", f"no static file '{name[:60]}'", 404)
        return Response(static[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    # --- description -----------------------------------------------------------------------
    @app.get("/health", summary="Liveness (open even with an API key)")
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/schema", dependencies=keyed, responses=errors,
             summary="Modalities, dims, raw inputs, model config, aligner, indexes, prototypes, limits")
    def schema() -> JSONResponse:
        return JSONResponse(service.schema())

    @app.get("/examples", dependencies=keyed, responses=errors, summary="The example table's rows (metadata)")
    def examples() -> JSONResponse:
        return JSONResponse({"rows": service.example_list()})

    @app.get("/examples/{row}", dependencies=keyed, responses=errors, summary="One example row's vectors")
    def example(row: int) -> JSONResponse:
        return JSONResponse(service.example(row))

    # --- the model -------------------------------------------------------------------------
    @app.post("/encode", dependencies=keyed, response_model=S.EncodeResponse, responses=errors,
              summary="Posterior μ and ‖σ‖₁ of each row given its visible modalities")
    def encode(req: S.EncodeRequest) -> JSONResponse:
        return ok(service.encode(req.rows, req.return_logvar, req.subsets))

    @app.post("/reconstruct", dependencies=keyed, response_model=S.ReconstructResponse, responses=errors,
              summary="Reconstruct target modalities from each row's visible ones")
    def reconstruct(req: S.ReconstructRequest) -> JSONResponse:
        return ok(service.reconstruct(req.rows, req.targets, req.n_samples, req.seed, req.return_spread))

    @app.post("/retrieve", dependencies=keyed, response_model=S.RetrieveResponse, responses=errors,
              summary="Top-k gallery items of the target modality (modality inversion)")
    def retrieve(req: S.RetrieveRequest) -> JSONResponse:
        return ok(service.retrieve(req.rows, req.target, req.k, req.delta))

    @app.post("/classify", dependencies=keyed, response_model=S.ClassifyResponse, responses=errors,
              summary="Zero-shot labels with probabilities against the class prototypes")
    def classify(req: S.ClassifyRequest) -> JSONResponse:
        return ok(service.classify(req.rows, req.k, req.delta))

    @app.post("/next-modality", dependencies=keyed, response_model=S.NextModalityResponse, responses=errors,
              summary="Absent modalities ranked by the expected drop of ‖σ‖₁")
    def next_modality(req: S.NextModalityRequest) -> JSONResponse:
        return ok(service.next_modality(req.rows))

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key"])
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory of each worker: the config comes as JSON in ``PROM3E_SERVE_CONFIG``."""
    cfg = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    return create_app(Service(cfg))
