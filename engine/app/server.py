"""`engine serve`: the encoder and the index stay loaded and answer over HTTP.

The app is assembled here: the :class:`~engine.app.batcher.Batcher` thread that
owns the encoder and the index (:mod:`engine.app.batcher`), the index it answers
from (:mod:`engine.app.served`), the routes (:mod:`engine.app.routes`), the
guard every request passes first, and errors as one line of JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from engine import __version__
from engine.api import Index
from engine.app.batcher import ApiError, Batcher, Limits
from engine.app.routes import DOCS_ASSETS, STATIC_DIR, router
from engine.app.served import ServedIndex, ServedMilvus
from engine.encoder import Encoder
from engine.errors import EngineError
from engine.instructions import InstructionConflict
from indexer.milvus import MilvusIndex

log = logging.getLogger("engine.server")

# The one route reachable without the API key: liveness, for load balancers and probes.
OPEN_PATHS = ("/health",)
# Requests that wait for the encoder: the batcher counts them to decide how long a batch waits.
ENCODER_PATHS = ("/search", "/v1/embeddings")


class AccessLog:
    """ASGI middleware, outermost: one line per request on stdout once it is answered.

    ``METHOD path status milliseconds``; the query string stays out (queries can be
    private), and requests the guard refuses are logged too.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app answers

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            elapsed = (time.perf_counter() - started) * 1000
            print(
                f"{client[0]} {scope['method']} {scope['path']} {status} {elapsed:.1f} ms",
                flush=True,
            )


class Guard:
    """ASGI middleware, before any work: the API key, the body size, requests in flight."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, batcher: Batcher) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key is not None else None
        self.max_body_bytes = max_body_bytes
        self.batcher = batcher

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":  # every GET route answers HEAD: the GET, without a body
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
        path = scope["path"]
        headers = dict(scope["headers"])
        if self.api_key is not None and path not in OPEN_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                message = "missing or wrong API key: send Authorization: Bearer <key>"
                response = JSONResponse(
                    error_body(401, message),
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            response = JSONResponse(
                error_body(413, f"request body over {self.max_body_bytes} bytes"), status_code=413
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:  # a chunked body without a length
                raise ApiError(413, f"request body over {self.max_body_bytes} bytes")
            return message

        counted = path in ENCODER_PATHS
        if counted:
            self.batcher.requests_in_flight += 1
        try:
            await self.app(scope, limited_receive, send)
        finally:
            if counted:
                self.batcher.requests_in_flight -= 1


def _without_body(send):
    async def send_head(message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head


def json_400_protocol(base: type) -> type:
    """uvicorn's HTTP protocol class answering what its parser refuses (a malformed or
    oversized request line or header) in the JSON error shape instead of plain text."""

    class JsonErrorProtocol(base):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(
                error_body(
                    400,
                    "invalid HTTP request: malformed, or a request line or "
                    "header over the size limit (send long queries with POST /search)",
                )
            ).encode()
            head = (
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            )
            self.transport.write(head + body)
            self.transport.close()

    return JsonErrorProtocol


def http_protocol() -> type:
    """The protocol uvicorn's "auto" picks (httptools when installed, else h11), with JSON 400s."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return json_400_protocol(HttpToolsProtocol)
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return json_400_protocol(H11Protocol)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, so their clients show the message; one line of JSON."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {
        "error": {
            "message": " ".join(message.split()),
            "type": kind,
            "param": param,
            "code": status,
        }
    }


def check_api_key(api_key: str | None) -> None:
    """An empty key (``--api-key "$KEY"`` with KEY unset) would silently open every route."""
    if api_key is not None and not api_key.strip():
        raise EngineError(
            "the API key is empty (--api-key or ENGINE_API_KEY): give a key, "
            "or unset both to serve without one"
        )


def create_app(
    index_dir: str | Path,
    encoder: Encoder,
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
    backend: MilvusIndex | None = None,
    access_log: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``index_dir`` (or a Milvus ``backend``) with ``encoder``.

    ``access_log`` prints a line per request (:class:`AccessLog`).
    """
    check_api_key(api_key)
    limits = limits or Limits()
    index_dir = Path(index_dir)
    served = ServedMilvus(backend) if backend is not None else ServedIndex(index_dir, encoder)
    batcher = Batcher(served, encoder, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(batcher.start)
        yield
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="engine",
        version=__version__,
        summary="Search and embeddings with LLM text embeddings (E5-mistral recipe).",
        lifespan=lifespan,
        # /docs and /redoc come from routes.py, on assets served here (no CDN).
        docs_url=None,
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.created = int(time.time())

    app.add_middleware(
        Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes, batcher=batcher
    )
    if access_log:
        app.add_middleware(AccessLog)  # added last: outermost, so refusals are logged too
    add_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers one line of JSON in OpenAI's shape; a bug answers 500, not a trace."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail), getattr(exc, "param", None)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # 400, as OpenAI answers a body it cannot parse
            reason = first.get("ctx", {}).get("error", "")
            message = f"the request body is not valid JSON ({reason})" if reason else ""
            return JSONResponse(
                error_body(400, message or "the request body is not valid JSON"), status_code=400
            )
        loc = tuple(first.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header"):  # where FastAPI looked
            loc = loc[1:]
        where = ".".join(str(part) for part in loc)
        reason = str(first.get("msg")).removeprefix("Value error, ")
        message = f"{where}: {reason}" if where else reason
        return JSONResponse(error_body(422, message, where or None), status_code=422)

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> JSONResponse:
        status = 422 if isinstance(exc, InstructionConflict) else 400
        return JSONResponse(error_body(status, str(exc)), status_code=status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(
            error_body(500, f"internal error ({type(exc).__name__})"), status_code=500
        )


def run_server(
    index_dir: Path,
    *,
    host: str,
    port: int,
    model: str | None,
    device: str | None,
    api_key: str | None,
    limits: Limits,
    access_log: bool = False,
    backend: MilvusIndex | None = None,
    shutdown_timeout: float | None = None,
) -> None:
    """Load the encoder and the index once, then serve until SIGTERM or Ctrl-C.

    On SIGTERM the server stops accepting and answers every request in flight within
    ``shutdown_timeout`` seconds (default: the request timeout + 5 s), with its result or a
    JSON 503, then exits 0.
    """
    if shutdown_timeout is None:
        shutdown_timeout = limits.request_timeout + 5
    check_api_key(api_key)  # before the model loads: a misconfiguration is said at once
    if backend is not None:
        index = Index.on_milvus(backend, model=model, device=device)
        encoder, documents, what = index.encoder, index.count(), str(backend)
    else:
        with Index.open(index_dir, model=model, device=device) as index:
            encoder, documents, what = index.encoder, index.count(), str(index_dir)
    app = create_app(
        index_dir, encoder, api_key=api_key, limits=limits, backend=backend, access_log=access_log
    )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"Serving {what} ({documents} documents, {encoder.name}) at http://{shown}:{port}/"
        + (" (API key required)" if api_key else "")
        + "; Ctrl-C stops.",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler found at start: a no-op one lets `engine serve` exit 0 after a clean stop.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # AccessLog prints engine's own lines, with the time taken
        http=http_protocol(),
        timeout_graceful_shutdown=shutdown_timeout,
    )
    GracefulServer(config, app.state.batcher, shutdown_timeout).run()
    print("Stopped.", flush=True)


class GracefulServer(uvicorn.Server):
    """uvicorn's server; on SIGTERM/SIGINT the batcher learns the grace first, so every request
    in flight gets its answer or a JSON 503 before uvicorn would cancel it (a plain 500)."""

    # Seconds kept back from the grace to send the last answers.
    ANSWER_MARGIN_S = 1.5

    def __init__(self, config: uvicorn.Config, batcher: Batcher, grace: float) -> None:
        super().__init__(config)
        self.batcher = batcher
        self.grace = grace

    def handle_exit(self, sig: int, frame) -> None:
        if not self.should_exit:
            self.batcher.begin_shutdown(max(self.grace - self.ANSWER_MARGIN_S, 0.0))
        super().handle_exit(sig, frame)
