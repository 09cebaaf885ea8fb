"""The core's own resources: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import falcon
import prometheus_client
from prometheus_client import CollectorRegistry

from ..settings import redact_url

logger = logging.getLogger(__name__)

Check = Callable[[], None]


class Liveness:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "alive"}


class Readiness:
    """200 when every check passes; a check raises when its part is down.

    The answer names the failing parts with a fixed text, never the error's
    (it would show hosts and users); the error goes to the log, redacted.
    """

    def __init__(self, checks: dict[str, Check]) -> None:
        self.checks = checks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        failing = []
        for name, check in sorted(self.checks.items()):
            try:
                check()
            except Exception as error:
                logger.warning("not ready: the %s check failed: %s", name, redact_url(repr(error)))
                failing.append(name)
        if failing:
            raise falcon.HTTPServiceUnavailable(
                title=f"Not ready: {', '.join(failing)}.",
                description=" ".join(f"The {name} did not answer." for name in failing),
                retry_after=1,
            )
        resp.media = {"status": "ready", "checks": sorted(self.checks)}


class Metrics:
    """Every process's counts (Prometheus's multiprocess mode, when its folder is
    set) or this process's registries, then the gauges read at scrape time."""

    def __init__(self, registries: list[CollectorRegistry], collectors: list[Any]) -> None:
        self.registries = registries
        self.collectors = collectors

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)
            output = prometheus_client.generate_latest(combined)
        else:
            output = b"".join(prometheus_client.generate_latest(r) for r in self.registries)
        extra = CollectorRegistry()
        for collector in self.collectors:
            extra.register(collector)
        output += prometheus_client.generate_latest(extra)
        resp.content_type = prometheus_client.CONTENT_TYPE_LATEST
        resp.data = output


class OpenApi:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
