"""Application factory. `uvicorn service.main:app` serves the settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__, metrics
from service.batching import BatcherPool
from service.config import Settings
from service.deps import require_api_key
from service.registry import ModelRegistry, resolve_device
from service.routes import explain, health, models, web
from service.state import ServiceState

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's own request id is kept when it is short and harmless in logs.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_EXPLAIN_PREFIX = "/explain/"


def configure_logging(level: str) -> None:
    """Give the service's loggers a level, and a handler when nothing set one up."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("service").setLevel(level)


class RequestContextMiddleware:
    """Give every request an id, limit the body size, log unhandled errors and record explain metrics.

    The id comes from the client's `X-Request-ID` when that is a plain token,
    else it is a new UUID; it is returned in the `X-Request-ID` header and in
    every error body. A body larger than `max_body_bytes` gets a 413: at once
    when the `Content-Length` header exceeds it, else as soon as the bytes received pass the
    limit, so an oversized upload is never buffered whole.
    """

    def __init__(self, app: ASGIApp, get_state, max_body_bytes: int) -> None:
        self.app = app
        self.get_state = get_state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        scope["state"]["started"] = started
        response_status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                response_status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        too_large = HTTPException(
            status_code=413, detail=f"the request body exceeds the limit of {self.max_body_bytes} bytes"
        )
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # FastAPI passes an HTTPException raised while it reads
                    # the body on to the exception handlers unchanged.
                    raise too_large
            return message

        try:
            if _content_length(scope) > self.max_body_bytes:
                logger.info("request %s: %s %s failed with 413: %s", request_id, scope["method"], scope["path"], too_large.detail)
                response = _json_error(too_large.status_code, too_large.detail, request_id)
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_with_limit, send_with_id)
        except Exception:
            logger.exception("request %s: unhandled error on %s %s", request_id, scope["method"], scope["path"])
            if response_started:
                raise
            await _json_error(500, "internal server error", request_id)(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            if scope["method"] == "POST" and path.startswith(_EXPLAIN_PREFIX):
                self._record(path[len(_EXPLAIN_PREFIX) :], response_status, time.perf_counter() - started)

    def _record(self, class_name: str, status_code: int, seconds: float) -> None:
        state = self.get_state()
        known = state is not None and class_name in state.registry.snapshot.models
        label = class_name if known else metrics.UNKNOWN_CLASS
        metrics.REQUESTS.labels(label, str(status_code)).inc()
        metrics.REQUEST_DURATION.labels(label, metrics.outcome_of(status_code)).observe(seconds)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _json_error(status_code: int, detail: str, request_id: str) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"detail": detail, "request_id": request_id})


def _error_response(request: Request, status_code: int, detail, headers=None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "")
    return JSONResponse(
        status_code=status_code,
        content={"detail": jsonable_encoder(detail), "request_id": request_id},
        headers=headers,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application.

    Args:
        settings: The settings to use; `None` reads them from the environment.

    Returns:
        The application. Models load when its lifespan starts.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = resolve_device(settings.device)
        max_batch_size = settings.max_batch_size or (8 if device.type == "cuda" else 1)
        logger.info(
            "aexad service %s starting: model store %s, device %s, batch window %.1f ms, max batch %d, API key %s",
            __version__,
            settings.model_store.resolve(),
            device,
            settings.batch_window_ms,
            max_batch_size,
            "required" if settings.api_key else "not required",
        )
        executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="aexad-model")
        state = ServiceState(
            settings=settings,
            registry=ModelRegistry(settings.model_store, device, executor),
            batchers=BatcherPool(
                window_s=settings.batch_window_ms / 1000.0,
                max_batch_size=max_batch_size,
                executor=executor,
            ),
            executor=executor,
        )
        await state.reload()
        app.state.service = state

        if settings.energy_tracking:
            await asyncio.to_thread(
                metrics.acquire_energy_tracker,
                country_iso_code=settings.codecarbon_country,
                interval_s=settings.energy_interval_s,
            )
        sighup_installed = _install_sighup(state)
        logger.info("aexad service ready")
        try:
            yield
        finally:
            logger.info("aexad service stopping")
            if sighup_installed:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await state.batchers.close()
            executor.shutdown(wait=True)
            if settings.energy_tracking:
                await asyncio.to_thread(metrics.release_energy_tracker)
            app.state.service = None

    app = FastAPI(
        title="aexad",
        version=__version__,
        summary="AE-XAD explainable anomaly detection: heatmap, defect mask and anomaly score of an image.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = None
    app.add_middleware(
        RequestContextMiddleware, get_state=lambda: app.state.service, max_body_bytes=settings.max_upload_bytes
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        level = logging.ERROR if error.status_code >= 500 else logging.INFO
        logger.log(
            level,
            "request %s: %s %s failed with %d: %s",
            getattr(request.state, "request_id", ""),
            request.method,
            request.url.path,
            error.status_code,
            error.detail,
        )
        return _error_response(request, error.status_code, error.detail, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        logger.info(
            "request %s: %s %s failed validation: %s",
            getattr(request.state, "request_id", ""),
            request.method,
            request.url.path,
            "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()),
        )
        return _error_response(request, 422, error.errors())

    protected = [Depends(require_api_key)]
    app.include_router(explain.router, dependencies=protected)
    app.include_router(models.router, dependencies=protected)
    app.include_router(health.router)
    app.include_router(web.router)
    return app


def _install_sighup(state: ServiceState) -> bool:
    """Reload the model store on SIGHUP, which works only in the main thread."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def on_sighup() -> None:
        logger.info("SIGHUP received, reloading the model store")
        task = loop.create_task(state.reload())
        tasks.add(task)
        task.add_done_callback(on_reload_done)

    def on_reload_done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("reload after SIGHUP failed: %r", task.exception())

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
        logger.info("SIGHUP reload not available here (%s); use POST /models/reload", error)
        return False
    return True


app = create_app()
