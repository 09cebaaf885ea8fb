"""What the source relies on in its libraries where they offer no documented
API for it: each test pins one such behaviour, so that an upgrade that changes
it fails here rather than in production. (The pins that need a server are in
tests/broker and tests/db: pika's frames, dramatiq's consumer and queue
declaration, peewee's per-thread connection state.)"""

from __future__ import annotations

import multiprocessing

import dramatiq
import peewee
from dramatiq.brokers.stub import StubBroker

from cqrs_warehouse.messaging.rabbitmq.consumer import worker_process_index


def test_a_dramatiq_worker_keeps_the_queues_it_was_started_with_in_consumer_whitelist():
    """messaging/waking.py reads it to tell whether its process consumes the drain's queue."""
    broker = StubBroker()
    worker = dramatiq.Worker(broker, queues={"a", "b"})
    assert worker.consumer_whitelist == {"a", "b"}
    assert dramatiq.Worker(broker).consumer_whitelist is None


def test_unnamed_child_processes_are_numbered_in_the_order_they_start():
    """How consumer.worker_process_index tells which of dramatiq's worker
    processes it is in (dramatiq's CLI starts them unnamed, first)."""
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    children = [context.Process(target=_report_index, args=(results,)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
    found = sorted(results.get() for _ in children)
    numbers = sorted(int(child.name.rsplit("-", 1)[1]) for child in children)
    assert found == [number - 1 for number in numbers]


def _report_index(results: multiprocessing.SimpleQueue) -> None:
    results.put(worker_process_index())


def test_setting_a_models_schema_after_it_is_defined_changes_the_sql_it_makes():
    """The runtime puts each slice's models in their store's schema (Runtime.bind_models)."""

    class Row(peewee.Model):
        key = peewee.CharField(primary_key=True)

    Row.bind(peewee.PostgresqlDatabase(None))
    sql, _ = Row.select().sql()
    Row._meta.schema = "elsewhere"
    moved, _ = Row.select().sql()
    assert '"elsewhere"' not in sql
    assert 'FROM "elsewhere"."row"' in moved
