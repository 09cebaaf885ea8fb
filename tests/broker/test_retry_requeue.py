"""A retry that RabbitMQ refuses to enqueue: Dramatiq's Retries middleware logs
the failure and acknowledges the delivery, which is then lost. The listeners'
consumer hands it back to RabbitMQ instead (``rabbitmq.broker.RequeueUnlessRetried``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.common import dq_name
from dramatiq.middleware import Middleware

from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.runtime import build
from cqrs_warehouse.settings import Settings
from tests.slices.recorders.listeners import RefusedSku
from tests.support.installation import Installation
from tests.support.rabbitmqctl import refusing_publishes
from tests.support.services import Postgres, unique_name
from tests.support.waiting import eventually

PICKY = {
    "name": "picky",
    "handler": "tests.slices.recorders.listeners:picky",
    "bindings": ["Warehouse.Events.#"],
    "retry": {"max_attempts": 2, "min_delay": 0.1, "max_delay": 0.2},
}


class Attempts(Middleware):
    """How many times the listener's actor ran."""

    def __init__(self) -> None:
        self.count = 0

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.actor_name == "listener.picky":
            self.count += 1


def test_a_retry_rabbitmq_refuses_to_enqueue_is_delivered_again_not_lost(
    tmp_path: Path, postgres: Postgres, rabbitmq: None
) -> None:
    installation = Installation.create(postgres, tmp_path, name="requeue", listeners=[PICKY])
    runtime = build(Settings.from_env(installation.env))
    delay_queue = dq_name(f"{installation.queue_prefix}picky")
    sku = unique_name("sku")
    attempts = Attempts()
    worker = None
    try:
        with runtime.database.connection_context():
            RefusedSku.create(listener="picky", sku=sku)
            sent = runtime.services["warehouse"].commands.increase_product_quantity(sku, 1)
            assert runtime.actors.drain.run() == 1  # declares the queues, the delay queue too

        runtime.broker.add_middleware(attempts)
        worker = dramatiq.Worker(runtime.broker, worker_threads=1)
        # The delay queue, where retries wait, refuses every message for a while.
        with refusing_publishes(delay_queue):
            worker.start()

            def delivered_again() -> None:  # each time its retry is refused
                assert attempts.count >= 3

            eventually(delivered_again, timeout=30)

        def dead_lettered() -> None:
            with runtime.database.connection_context():
                letter = DeadLetter.get_or_none(DeadLetter.message_id == sent.id)
                assert letter is not None and letter.attempts == 2

        eventually(dead_lettered, timeout=30)
    finally:
        if worker is not None:
            worker.stop(timeout=10_000)
        runtime.broker.close()
        runtime.database.close()
        installation.close()
