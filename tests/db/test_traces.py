"""Traces on SQLite and PostgreSQL, with the SDK's in-memory exporter: one command
through the API (Falcon's test client), the drain and the listeners on the
in-process transport, as one trace; batches, replays and rebuilds linked to
the original trace; and tracing off changes nothing."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import dramatiq
import falcon.testing
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.envelope import envelope_from_record
from cqrs_warehouse.messaging.inprocess import Delivery
from cqrs_warehouse.messaging.listening.rebuild import rebuild
from cqrs_warehouse.messaging.tracing import Tracing
from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.web import create_app
from tests.db.listening import event, listener
from tests.support.installation import WATCHER, project_listeners, write_listeners_config

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
LISTENERS = [*project_listeners(), WATCHER]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(runtime: Runtime, exporter: InMemorySpanExporter, tmp_path) -> Iterator[Runtime]:
    """A runtime on the test's database, with the project's listeners and the
    tests' watcher (a user's own listener), tracing to ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = write_listeners_config(tmp_path / "listeners.yaml", LISTENERS)
    settings = dataclasses.replace(runtime.settings, listeners_config=str(config))
    other = build(settings, embedded=True, tracing=Tracing(provider))
    yield other
    other.actors.broker.flush_all()
    other.actors.broker.close()
    other.database.close()
    runtime.bind_models()


def deliver(runtime: Runtime) -> None:
    """Drain the outbox and run every listener until their queues are empty."""
    actors = runtime.actors
    actors.broker.emit_after("process_boot")
    with runtime.database.connection_context():
        runtime.actors.drain.run()
    worker = dramatiq.Worker(actors.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        for actor in actors.listeners.values():
            actors.broker.join(actor.queue_name)
        worker.join()
    finally:
        worker.stop()


def test_one_command_is_one_trace_from_the_http_span_to_every_listener(traced, exporter, sku):
    client = falcon.testing.TestClient(create_app(traced))
    answer = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity",
        json={"quantity": 7},
        headers={"traceparent": CLIENT_PARENT},
    )
    assert answer.status_code == 200, answer.text
    deliver(traced)
    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {CLIENT_TRACE}
    by_id = {s.context.span_id: s for s in spans}
    (http,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert http.name == "POST /warehouse/products/{sku}/increase_quantity"
    assert format(http.parent.span_id, "016x") == "00f067aa0ba902b7"  # the client's
    key = "Warehouse.Events.ProductQuantityIncreased.v1"
    (write,) = [s for s in spans if s.name == f"outbox append {key}"]
    assert write.parent.span_id == http.context.span_id
    (publish,) = [s for s in spans if s.name == f"publish {key}"]
    assert publish.kind == SpanKind.PRODUCER and publish.parent.span_id == write.context.span_id
    applies = {s.name: s for s in spans if s.kind == SpanKind.CONSUMER}
    assert sorted(applies) == sorted(e["name"] for e in LISTENERS)
    for span in applies.values():
        assert by_id[span.parent.span_id] is publish


def test_a_command_without_traceparent_starts_a_trace_and_its_row_keeps_it(traced, exporter, sku):
    client = falcon.testing.TestClient(create_app(traced))
    client.simulate_post(f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 2})
    (http,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert http.parent is None
    with traced.database.connection_context():
        (row,) = traced.outbox.store.pending()
    trace_id = format(http.context.trace_id, "032x")
    assert row.traceparent.startswith(f"00-{trace_id}-")


def test_a_batch_is_one_span_linked_to_each_message_trace(traced, exporter, sku):
    client = falcon.testing.TestClient(create_app(traced))
    for quantity in (1, 2, 3):
        client.simulate_post(
            f"/warehouse/products/{sku}/increase_quantity", json={"quantity": quantity}
        )
    with traced.database.connection_context():
        traced.actors.drain.run()
    traces = {
        s.context.trace_id for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER
    }
    assert len(traces) == 3
    # What a listener's consumer gathers: the deliveries, as one batch.
    with traced.database.connection_context():
        envelopes = [
            json.loads(d.envelope)
            for d in Delivery.select().where(Delivery.listener == "products_view")
        ]
    spec = traced.routing.listener("products_view")
    exporter.clear()
    traced.engine.apply(spec, [traced.message_keys.signed(e) for e in envelopes], final=True)
    (batch,) = [s for s in exporter.get_finished_spans() if s.name == "products_view"]
    assert batch.parent is None
    assert {link.context.trace_id for link in batch.links} == traces
    assert batch.attributes["messaging.batch.message_count"] == 3


def test_a_dead_letter_replay_and_a_rebuild_link_to_the_original_trace(traced, exporter, sku):
    client = falcon.testing.TestClient(create_app(traced))
    client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity",
        json={"quantity": 5},
        headers={"traceparent": CLIENT_PARENT},
    )
    deliver(traced)
    with traced.database.connection_context():
        archived = ArchivedMessage.get(ArchivedMessage.stream == sku)
    assert archived.traceparent.startswith(f"00-{CLIENT_TRACE}-")
    envelope = envelope_from_record(archived)
    failing = listener("fails_once", _fail, attempts=1)
    exporter.clear()
    with traced.database.connection_context():
        traced.engine.apply(failing, [traced.message_keys.signed(envelope)], final=True)
        (letter,) = DeadLetter.select().where(DeadLetter.listener == "fails_once")
    assert letter.envelope_dict["traceparent"] == archived.traceparent
    exporter.clear()
    with traced.database.connection_context():
        traced.engine.replay(failing, letter)
    (replayed,) = [s for s in exporter.get_finished_spans() if s.name == "fails_once"]
    assert format(replayed.context.trace_id, "032x") != CLIENT_TRACE
    assert [format(link.context.trace_id, "032x") for link in replayed.links] == [CLIENT_TRACE]
    archive = traced.routing.listener("archive")
    exporter.clear()
    with traced.database.connection_context():
        rebuild(traced.engine, traced.routing.listener("products_view"), archive)
    rebuilt = [s for s in exporter.get_finished_spans() if s.name == "products_view"]
    assert rebuilt and all(s.parent is None for s in rebuilt)
    linked = {format(link.context.trace_id, "032x") for s in rebuilt for link in s.links}
    assert CLIENT_TRACE in linked


def _fail(message) -> None:
    raise RuntimeError("fails on purpose")


def test_tracing_off_keeps_no_context_and_makes_no_span(runtime, commands, sku):
    assert not runtime.tracing.enabled  # no OTEL_TRACES_EXPORTER in this tier
    commands.increase_product_quantity(sku, 1)
    (row,) = runtime.outbox.store.pending()
    assert row.traceparent is None and row.tracestate is None
    message = event("Warehouse.Events.ProductQuantityIncreased", sku, 1, 1)
    assert message.traceparent is None
