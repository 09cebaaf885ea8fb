"""The Falcon app: the core's middleware and resources, and every slice's routes and errors.

``create_app(runtime)`` builds the API over a runtime (falcon's app-factory
style: handed its dependencies). ``app_from_environment()`` is what
gunicorn loads (gunicorn.conf.py): it builds the runtime from the
environment and refuses to run without BROKER_URL.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from typing import Any

import falcon

from .. import logs
from ..messaging.metrics import StateCollector
from ..messaging.tracing import Tracing
from ..runtime import Runtime, build
from . import openapi
from .errors import add_error_handlers
from .idempotency import Idempotency
from .middleware import DatabaseConnection, Hardening, HttpMetrics, RequestContext
from .resources import Check, Liveness, Metrics, OpenApi, Readiness

logger = logging.getLogger(__name__)

_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)


def create_app(runtime: Runtime) -> falcon.App:
    settings, database = runtime.settings, runtime.database
    metrics = HttpMetrics()
    app = _app(
        runtime.tracing,
        middleware=[
            RequestContext(metrics),
            DatabaseConnection(database),
            Hardening(api_token=settings.api_token, max_body_bytes=settings.max_body_bytes),
            Idempotency(runtime.outbox, settings.idempotency_key_ttl),  # after the checks
        ],
    )
    # Falcon's default JSON handler builds a json.JSONEncoder per response;
    # this one is built once and writes the same bytes (docs/decisions/0015).
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=_JSON_ENCODER.encode
    )
    errors: dict[type[Exception], int] = {}
    for slice_ in runtime.slices:
        for template, resource in slice_.routes(runtime.services[slice_.name], runtime):
            app.add_route(template, resource)
        errors.update(slice_.errors)
    if runtime.outbox.wake_drain is not None:
        runtime.actors  # noqa: B018 (commits wake the drain actor: declare it now)
    checks: dict[str, Check] = {"database": lambda: database.execute_sql("SELECT 1")}
    if settings.broker_url is not None:
        checks["broker"] = runtime.transport.check
    state = StateCollector(
        outbox_status=_in_connection(database, runtime.outbox.status),
        dead_letters=_in_connection(database, runtime.dead_letters.counts),
        queue_depths=lambda: runtime.transport.queue_depths(runtime.listener_queues()),
    )
    document = openapi.document(
        ((s.name, s.openapi) for s in runtime.slices), secured=bool(settings.api_token)
    )
    app.add_route("/livez", Liveness())
    app.add_route("/readyz", Readiness(checks))
    app.add_route("/metrics", Metrics([metrics.registry, runtime.metrics.registry], [state]))
    app.add_route("/openapi.json", OpenApi(document))
    add_error_handlers(app, database, errors)
    return app


def app_from_environment() -> falcon.App:
    """Build the runtime from the environment (BROKER_URL required) and the API over it."""
    logs.configure()
    runtime = build()
    logger.info("API ready on database %s", type(runtime.database).__name__)
    app = create_app(runtime)
    # What lives as long as the process is kept out of the collector's full
    # collections (docs/decisions/0008-gc-freeze.md).
    gc.freeze()
    return app


def _app(tracing: Tracing, **options: Any) -> falcon.App:
    """A falcon.App, with OpenTelemetry's Falcon instrumentation when traces are
    on: its HTTP span honours a client's ``traceparent`` and names the route.
    (Its app class taken directly, so that each app gets its runtime's tracer
    provider; ``FalconInstrumentor`` patches ``falcon.App`` once per process.)"""
    if tracing.provider is None:
        return falcon.App(**options)
    from opentelemetry.instrumentation.falcon import _InstrumentedFalconAPI

    app: falcon.App = _InstrumentedFalconAPI(
        **options, _otel_opts={"tracer_provider": tracing.provider}
    )
    return app


def _in_connection(database: Any, read: Callable[[], Any]) -> Callable[[], Any]:
    """``read``, on a connection opened for it (a scrape runs in any thread)."""

    def run() -> Any:
        with database.connection_context():
            return read()

    return run
