"""The Falcon app: routes, middleware, and the one place where errors become HTTP.

``create_app()`` is what gunicorn loads (see gunicorn.conf.py); it
bootstraps from the environment and refuses to run without BROKER_URL.
``build_app()`` builds the API over an already bootstrapped runtime.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import falcon
import peewee
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram

from . import logs
from .bootstrap import Runtime, bootstrap
from .messaging import context
from .messaging.consistency import ConsistencyGate, InvalidConsistencyTokenError
from .messaging.database import database
from .messaging.middleware import discard_dead_connection, drop_broken_connection
from .openapi import DOCUMENT
from .settings import Settings
from .warehouse.commands import IncreaseQuantityResource, ShipQuantityResource
from .warehouse.errors import WarehouseError
from .warehouse.views.products import ProductResource, ProductsResource

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Check = Callable[[], None]


class _Metrics:
    """HTTP and command metrics of this process (multiprocess-aware via the env)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "cqrs_http_requests_total", "HTTP requests.", ["route", "method", "status"]
        )
        self.durations = Histogram(
            "cqrs_http_request_duration_seconds",
            "HTTP request durations.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.commands = Counter(
            "cqrs_commands_total", "Commands by outcome.", ["command", "outcome"]
        )
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def labels(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, kept: prometheus_client converts the values
        and takes a lock on every call; the set of label values stays small."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def _process_metrics() -> _Metrics:
    # Created once per process, on first use: after gunicorn's fork, so
    # Prometheus's multiprocess mode sees each worker as its own process.
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


class _RequestContext:
    """Correlation id in (X-Request-ID, or a new one) and out; one log line and
    the metrics per request."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-ID")
        correlation_id = given if given and _REQUEST_ID.fullmatch(given) else None
        req.context.correlation_token = context.correlation_id.set(
            correlation_id or context.new_correlation_id()
        )
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        correlation_id = context.correlation_id.get()
        if correlation_id:
            resp.set_header("X-Request-ID", correlation_id)
        route = req.uri_template or "unmatched"
        status = resp.status_code
        elapsed = time.perf_counter() - getattr(req.context, "started", time.perf_counter())
        metrics = _process_metrics()
        metrics.labels(metrics.requests, route, req.method, str(status)).inc()
        metrics.labels(metrics.durations, route, req.method).observe(elapsed)
        command = getattr(req.context, "command", None)
        if command is not None:
            outcome = "accepted" if status < 300 else "refused" if status < 500 else "failed"
            metrics.labels(metrics.commands, command, outcome).inc()
        logger.info(
            "%s %s %d %.1fms",
            req.method,
            req.path,
            status,
            elapsed * 1000,
        )
        token = getattr(req.context, "correlation_token", None)
        if token is not None:
            context.correlation_id.reset(token)


class _Hardening:
    """Bearer token on writes (when API_TOKEN is set), body size and JSON bodies."""

    def __init__(self, *, api_token: str | None, max_body_bytes: int) -> None:
        self.api_token = api_token.encode() if api_token else None
        self.max_body_bytes = max_body_bytes

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict
    ) -> None:
        if req.method not in _WRITE_METHODS or resource is None:
            return
        if self.api_token is not None:
            scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.api_token
            ):
                raise falcon.HTTPUnauthorized(
                    title="Unauthorized.",
                    description="This endpoint needs 'Authorization: Bearer <API_TOKEN>'.",
                    challenges=["Bearer"],
                )
        length = req.content_length
        if length is not None and length > self.max_body_bytes:
            raise falcon.HTTPContentTooLarge(
                title="Body too large.",
                description=f"The body is {length} bytes; the limit is {self.max_body_bytes}.",
            )
        if req.content_type and falcon.MEDIA_JSON not in req.content_type:
            raise falcon.HTTPUnsupportedMediaType(
                title="Unsupported media type.",
                description=f"Send the body as {falcon.MEDIA_JSON}, not {req.content_type}.",
            )


class _DatabaseConnection:
    """Each request thread keeps its connection (peewee connects on first use,
    so /livez needs no database); one the server closed is dropped first."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        discard_dead_connection()


class _Liveness:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "alive"}


class _Readiness:
    def __init__(self, checks: dict[str, Check]) -> None:
        self.checks = checks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        failing = {}
        for name, check in self.checks.items():
            try:
                check()
            except Exception as error:
                failing[name] = f"{type(error).__name__}: {error}"
        if failing:
            raise falcon.HTTPServiceUnavailable(
                title=f"Not ready: {', '.join(sorted(failing))}.",
                description="; ".join(f"{name}: {why}" for name, why in sorted(failing.items())),
                retry_after=1,
            )
        resp.media = {"status": "ready", "checks": sorted(self.checks)}


class _Metrics_Resource:
    def __init__(self, collectors: list[Any]) -> None:
        self.collectors = collectors

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
        else:
            registry = prometheus_client.REGISTRY
        output = prometheus_client.generate_latest(registry)
        extra = CollectorRegistry()
        for collector in self.collectors:
            extra.register(collector)
        output += prometheus_client.generate_latest(extra)
        resp.content_type = prometheus_client.CONTENT_TYPE_LATEST
        resp.data = output


class _OpenApi:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = DOCUMENT


def _json_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    # Errors are JSON whatever the client accepts (Falcon would send XML to a
    # browser, and nothing to a client that accepts only HTML).
    resp.data = error.to_json()
    resp.content_type = falcon.MEDIA_JSON


def _warehouse_error(
    req: falcon.Request, resp: falcon.Response, error: WarehouseError, params: Any
) -> None:
    raise falcon.HTTPBadRequest(title=error.title, description=str(error))


def _invalid_token(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: Any
) -> None:
    raise falcon.HTTPBadRequest(title="Invalid consistency token.", description=str(error))


def _database_error(
    req: falcon.Request,
    resp: falcon.Response,
    error: peewee.DatabaseError | peewee.InterfaceError,
    params: Any,
) -> None:
    logger.error("database error on %s %s: %r", req.method, req.path, error)
    drop_broken_connection(error)
    if isinstance(error, peewee.OperationalError | peewee.InterfaceError):
        raise falcon.HTTPServiceUnavailable(
            title="Database unavailable.",
            description="The database could not be reached; nothing was changed. Try again.",
            retry_after=1,
        )
    raise falcon.HTTPInternalServerError(
        title="Database error.", description="The database refused the request; see the logs."
    )


def _unexpected_error(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any):
    if isinstance(error, falcon.HTTPError):
        raise error
    logger.exception("unexpected error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(
        title="Internal error.", description="An unexpected error occurred; see the logs."
    )


def _database_check() -> None:
    database.execute_sql("SELECT 1")


def build_app(
    settings: Settings | None = None,
    *,
    readiness: dict[str, Check] | None = None,
    collectors: list[Any] | None = None,
    gate: ConsistencyGate | None = None,
) -> falcon.App:
    """The API. ``readiness`` maps part names to checks that raise when the part is down."""
    settings = settings or Settings()
    middleware: list[Any] = [
        _RequestContext(),
        _DatabaseConnection(),
        _Hardening(api_token=settings.api_token, max_body_bytes=settings.max_body_bytes),
    ]
    app = falcon.App(middleware=middleware)
    # Falcon's default JSON handler builds a json.JSONEncoder per response
    # (json.dumps with ensure_ascii=False); this one is built once and writes
    # the same bytes.
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=_JSON_ENCODER.encode
    )
    app.set_error_serializer(_json_error)
    gate = gate or ConsistencyGate(listener="products_view", timeout=settings.consistency_timeout)
    app.add_route("/warehouse/products", ProductsResource(gate))
    app.add_route("/warehouse/products/{sku}", ProductResource(gate))
    app.add_route("/warehouse/products/{sku}/increase_quantity", IncreaseQuantityResource())
    app.add_route("/warehouse/products/{sku}/ship_quantity", ShipQuantityResource())
    app.add_route("/livez", _Liveness())
    app.add_route("/readyz", _Readiness(readiness or {"database": _database_check}))
    app.add_route("/metrics", _Metrics_Resource(collectors or []))
    app.add_route("/openapi.json", _OpenApi())
    # Falcon tries handlers most specific first: domain and database errors
    # map to 4xx/503; anything else is a 500 with a JSON body and a log line.
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(WarehouseError, _warehouse_error)
    # InterfaceError ("connection already closed") is not a DatabaseError.
    app.add_error_handler(peewee.DatabaseError, _database_error)
    app.add_error_handler(peewee.InterfaceError, _database_error)
    app.add_error_handler(InvalidConsistencyTokenError, _invalid_token)
    return app


def app_for(runtime: Runtime) -> falcon.App:
    """The API over ``runtime``, with readiness and metrics of its database and broker."""
    from .messaging import dead_letters, outbox
    from .messaging.broker import ping, queue_depths
    from .messaging.metrics import StateCollector

    settings = runtime.settings
    checks: dict[str, Check] = {"database": _database_check}
    queues = {spec.name: settings.queue_name(spec.name) for spec in runtime.routing.listeners}
    broker_parameters = getattr(runtime.broker, "parameters", None)

    def depths() -> dict[str, int]:
        if runtime.in_process:
            stub = runtime.broker
            return {
                name: stub.queues[queue].qsize()
                for name, queue in queues.items()
                if queue in stub.queues
            }
        return queue_depths(broker_parameters, queues)

    if not runtime.in_process:
        checks["broker"] = lambda: ping(broker_parameters)

    def database_state(read: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with database.connection_context():
                return read()

        return run

    collector = StateCollector(
        outbox_status=database_state(outbox.status),
        dead_letters=database_state(dead_letters.counts),
        queue_depths=depths,
    )
    gate = ConsistencyGate(
        listener=runtime.view_listener or "products_view",
        timeout=settings.consistency_timeout,
        database_url=settings.database_url,
        channel=settings.applied_channel,
    )
    return build_app(settings, readiness=checks, collectors=[collector], gate=gate)


def create_app(settings: Settings | None = None) -> falcon.App:
    """Bootstrap from the environment (BROKER_URL required) and build the API."""
    logs.configure()
    runtime = bootstrap(settings or Settings.from_env())
    logger.info("API ready on database %s", type(runtime.database).__name__)
    app = app_for(runtime)
    # As in worker.py: what lives as long as the process is kept out of the
    # collector's full collections, a pause of ~20 ms for every thread.
    gc.freeze()
    return app
