"""Each listener queue prefers one worker process (RabbitMQ consumer
priorities): listener k's deliveries go to worker process k modulo the number
of processes while it keeps up, and to the others when it is gone. The
deliveries are checked against the real RabbitMQ."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace
from typing import Any

import dramatiq
import pika
import pytest

from cqrs_warehouse.messaging.rabbitmq.broker import ListenerRoutingBroker
from cqrs_warehouse.messaging.rabbitmq.consumer import consumer_priority, worker_process_index
from cqrs_warehouse.messaging.rabbitmq.wire import AVRO_CONTENT_TYPE
from tests.support.services import BROKER_URL

QUEUES = ["view", "notifier", "archive"]


def preferred_process(queue: str, processes: int) -> int:
    """The process whose consumer of ``queue`` ranks first among ``processes``."""
    ranks = {p: consumer_priority(QUEUES, queue, p) for p in range(processes)}
    return max(ranks, key=lambda p: ranks[p])  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("processes", [1, 2, 3, 4, 7])
def test_listener_k_prefers_process_k_modulo_the_number_of_processes(processes):
    for k, queue in enumerate(QUEUES):
        assert preferred_process(queue, processes) == k % processes
        ranks = [consumer_priority(QUEUES, queue, p) for p in range(processes)]
        assert len(set(ranks)) == processes  # a strict order: no ties


def test_other_queues_and_processes_of_unknown_index_get_no_priority():
    assert consumer_priority(QUEUES, "outbox_drain", 0) is None
    assert consumer_priority(QUEUES, "view", None) is None


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("Process-1", 0),
        ("Process-2", 1),
        ("ForkProcess-3", 2),
        ("MainProcess", None),
        ("Process-1:2", None),  # a child's child
        ("x", None),
    ],
)
def test_the_worker_process_index_is_read_from_the_process_name(monkeypatch, name, index):
    monkeypatch.setattr(multiprocessing, "current_process", lambda: SimpleNamespace(name=name))
    assert worker_process_index() == index


def test_a_child_process_started_unnamed_knows_its_rank():
    # What Dramatiq's CLI does with its worker processes; the index is the
    # rank among this (pytest) process's children.
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    child = context.Process(target=_report_index, args=(reports,))
    child.start()
    child.join(timeout=60)
    rank = int(child.name.rsplit("-", 1)[1])
    assert reports.get(timeout=10) == rank - 1


def _report_index(reports: Any) -> None:
    reports.put(worker_process_index())


def consumer_in_process(
    monkeypatch: pytest.MonkeyPatch, broker: ListenerRoutingBroker, queue: str, index: int
) -> Any:
    """The broker's consumer of ``queue`` as worker process ``index`` opens it."""
    process = SimpleNamespace(name=f"Process-{index + 1}")
    monkeypatch.setattr(multiprocessing, "current_process", lambda: process)
    return broker.consume(queue, prefetch=50, timeout=200)


def publish(queue: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        for number in range(count):
            channel.basic_publish(
                exchange="",
                routing_key=queue,
                body=b"",
                properties=pika.BasicProperties(
                    content_type=AVRO_CONTENT_TYPE, type="Test.Event", message_id=f"m{number}"
                ),
            )
    finally:
        connection.close()


def take(consumer: Any, count: int, rounds: int = 50) -> list[str]:
    """The ids of up to ``count`` deliveries the consumer gets (acked)."""
    ids: list[str] = []
    for _ in range(rounds):
        deliveries = next(consumer)
        if deliveries is None:
            if ids:
                break
            continue
        ids += [envelope["id"] for envelope in deliveries.args]
        consumer.ack(deliveries)
        if len(ids) >= count:
            break
    return ids


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_listener_queues_deliveries_go_to_its_preferred_process_and_to_the_others_without_it(
    monkeypatch, queue, queue_type
):
    # The queue is the second listener's: with two processes, process 1's.
    # (Consumer priorities are consumer arguments: quorum queues have them too.)
    broker = ListenerRoutingBroker(
        url=BROKER_URL,
        middleware=[],
        listener_queues=["first", queue, "third"],
        queue_type=queue_type,
    )
    dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"listener.{queue}")(print)
    try:
        elsewhere = consumer_in_process(monkeypatch, broker, queue, 0)
        preferred = consumer_in_process(monkeypatch, broker, queue, 1)

        publish(queue, 20)
        assert sorted(take(preferred, 20)) == sorted(f"m{n}" for n in range(20))
        assert take(elsewhere, 1, rounds=3) == []

        preferred.close()
        publish(queue, 5)
        assert sorted(take(elsewhere, 5)) == sorted(f"m{n}" for n in range(5))
        elsewhere.close()
    finally:
        broker.close()
