"""The API's middleware: a request's context, logging and metrics; hardening; its connection."""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..messaging import context
from .openapi import REQUEST_ID_PATTERN

logger = logging.getLogger("cqrs_warehouse.web")

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
# A write method and its responder's name.
_WRITE_METHODS = {method: f"on_{method.lower()}" for method in ("POST", "PUT", "PATCH", "DELETE")}
# The metrics' method label: one of these or "other" (a method as sent would make new series).
_METHOD_LABELS = {
    method: method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class HttpMetrics:
    """HTTP and command metrics of this app, in a registry of its own (in
    Prometheus's multiprocess mode every process's add up whatever the registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cqrs_http_requests_total",
            "HTTP requests.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "cqrs_http_request_duration_seconds",
            "HTTP request durations.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.commands = Counter(
            "cqrs_commands_total",
            "Commands by outcome.",
            ["command", "outcome"],
            registry=self.registry,
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


class RequestContext:
    """Correlation id in (X-Request-ID, or a new one) and out; one log line and
    the metrics per request. A resource that runs a command names it in
    ``req.context.command``, which counts it by outcome."""

    def __init__(self, metrics: HttpMetrics) -> None:
        self.metrics = metrics

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
        metrics = self.metrics
        method = _METHOD_LABELS.get(req.method, "other")
        metrics.labels(metrics.requests, route, method, str(status)).inc()
        metrics.labels(metrics.durations, route, method).observe(elapsed)
        command = getattr(req.context, "command", None)
        if command is not None:
            outcome = "accepted" if status < 300 else "refused" if status < 500 else "failed"
            metrics.labels(metrics.commands, command, outcome).inc()
        logger.info("%s %s %d %.1fms", req.method, req.path, status, elapsed * 1000)
        token = getattr(req.context, "correlation_token", None)
        if token is not None:
            context.correlation_id.reset(token)


class Hardening:
    """On writes a resource serves: the bearer token (when API_TOKEN is set), the
    body's size and media type. (A method the
    resource does not serve goes on to Falcon's 405.)"""

    def __init__(self, *, api_token: str | None, max_body_bytes: int) -> None:
        self.api_token = api_token.encode() if api_token else None
        self.max_body_bytes = max_body_bytes

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict
    ) -> None:
        responder = _WRITE_METHODS.get(req.method)
        if responder is None or not hasattr(resource, responder):
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


class DatabaseConnection:
    """Each request thread keeps its connection (peewee connects on first use,
    so /livez needs no database); one the server closed is dropped first."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.database.discard_dead_connection()
