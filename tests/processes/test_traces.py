"""Traces on the real stack: gunicorn and dramatiq with OTEL_TRACES_EXPORTER=console,otlp.

A command sent with a ``traceparent`` yields, in that trace, the HTTP span
and the outbox write from the API process and, from the worker process, the
publish and one span per listener of the YAML (the tests' watcher and
shipment recorder, a user's own, included): printed on the processes'
stdout (one JSON object per line) and received by an OTLP/HTTP endpoint
served by this test. Log lines carry the trace and span ids.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.processes.conftest import logs_on_failure
from tests.processes.state import wait
from tests.support.installation import SHIPMENT_RECORDER, WATCHER, Installation, project_listeners

pytestmark = pytest.mark.processes

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"
LISTENERS = [*project_listeners(), WATCHER, SHIPMENT_RECORDER]
SHIPPED = "Warehouse.Events.ProductQuantityShipped.v1"


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP endpoint: keeps the spans of every POST /v1/traces (protobuf)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class _Receive(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        if self.path == "/v1/traces":
            spans = [
                {"trace_id": span.trace_id.hex(), "name": span.name, "kind": span.kind}
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]
            with self.server.lock:
                self.server.spans += spans
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced(request, postgres, tmp_path_factory, rabbitmq, collector) -> Iterator[Installation]:
    installation = Installation.create(
        postgres,
        tmp_path_factory.mktemp("traced"),
        name="traced",
        listeners=LISTENERS,
        settings={
            "OTEL_TRACES_EXPORTER": "console,otlp",
            "OTEL_SERVICE_NAME": "cqrs-warehouse-tests",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "LOG_FORMAT": "json",
        },
    )
    with logs_on_failure(request, installation):
        installation.start_workers(processes=1, threads=2)
        installation.start_api(workers=1)
        yield installation


def printed_spans(output: str) -> list[dict[str, Any]]:
    """The spans a process printed (the console exporter's lines)."""
    spans = []
    for line in output.splitlines():
        if line.startswith('{"name"'):
            span = json.loads(line)
            span["trace_id"] = span["context"]["trace_id"].removeprefix("0x")
            spans.append(span)
    return spans


def test_a_command_with_traceparent_is_one_trace_across_the_api_and_the_worker(
    traced: Installation, collector: Collector, sku: str
) -> None:
    assert traced.increase(sku, 10).status_code == 200
    answer = traced.ship(sku, 3, headers={"traceparent": TRACEPARENT})
    assert answer.status_code == 200, answer.text
    api, workers = traced.current("gunicorn"), traced.current("dramatiq")

    def exported() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from_api = [s for s in printed_spans(api.output()) if s["trace_id"] == TRACE]
        from_worker = [s for s in printed_spans(workers.output()) if s["trace_id"] == TRACE]
        names = {s["name"] for s in from_worker}
        assert {e["name"] for e in LISTENERS} <= names, names
        return from_api, from_worker

    from_api, from_worker = wait(exported)
    assert {s["name"]: s["kind"] for s in from_api} == {
        "POST /warehouse/products/{sku}/ship_quantity": "SpanKind.SERVER",
        f"outbox append {SHIPPED}": "SpanKind.INTERNAL",
    }
    (http_span,) = [s for s in from_api if s["kind"] == "SpanKind.SERVER"]
    assert http_span["parent_id"] == "0xb7ad6b7169203331"  # the client's span
    assert http_span["resource"]["attributes"]["service.name"] == "cqrs-warehouse-tests"
    (publish,) = [s for s in from_worker if s["name"] == f"publish {SHIPPED}"]
    listener_spans = [s for s in from_worker if s["kind"] == "SpanKind.CONSUMER"]
    assert sorted(s["name"] for s in listener_spans) == sorted(e["name"] for e in LISTENERS)
    assert {s["parent_id"] for s in listener_spans} == {publish["context"]["span_id"]}

    def received() -> None:
        with collector.lock:
            names = {s["name"] for s in collector.spans if s["trace_id"] == TRACE}
        expected = {s["name"] for s in from_api + from_worker}
        assert expected <= names, names

    wait(received)
    # The worker's log lines about the message carry its trace and span ids.
    lines = [json.loads(line) for line in workers.output().splitlines() if '"level"' in line]
    traced_lines = [line for line in lines if line.get("trace_id") == TRACE]
    assert {line["listener"] for line in traced_lines if line.get("listener")} >= {
        "products_view",
        "shipped_recorder",
    }
    assert all(line["span_id"] for line in traced_lines)
