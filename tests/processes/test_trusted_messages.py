"""Trusted messages on the real stack (dramatiq workers, PostgreSQL, RabbitMQ):
messages published by hand straight to the exchange, forged or over a limit,
end as dead letters on their first delivery and the SKU's next real event is
applied; a key is rotated with MESSAGE_KEY=new,old; the workers and `serve`
refuse to start on RabbitMQ without MESSAGE_KEY, the CLI does not need it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.message import routing_key_for
from cqrs_warehouse.messaging.rabbitmq.wire import properties_of
from cqrs_warehouse.messaging.signing import MessageKeys
from cqrs_warehouse.messaging.storage.outbox import OutboxRow
from tests.processes.conftest import logs_on_failure
from tests.processes.state import INCREASED, all_output, wait
from tests.support.environment import service_env
from tests.support.installation import EXCHANGE, WATCHER, Installation, project_listeners
from tests.support.processes import BIN, ROOT, free_port, run_to_exit
from tests.support.services import BROKER_URL, Postgres

pytestmark = pytest.mark.processes

NEW = "the-new-message-key-" + "n" * 20
OLD = "the-old-message-key-" + "o" * 20
FORGED = "a-key-nobody-in-the-service-has-" + "f" * 10
LISTENERS = [*project_listeners(), WATCHER]


def keys(raw: str) -> MessageKeys:
    return MessageKeys.parse("MESSAGE_KEY", raw)


@pytest.fixture(scope="module")
def trusting(
    request: pytest.FixtureRequest,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq: None,
) -> Iterator[Installation]:
    """An installation whose processes have MESSAGE_KEY=new,old: one worker process."""
    installation = Installation.create(
        postgres,
        tmp_path_factory.mktemp("trust"),
        name="trust",
        listeners=LISTENERS,
        settings={"MESSAGE_KEY": f"{NEW},{OLD}"},
    )
    with logs_on_failure(request, installation):
        installation.start_workers(processes=1, threads=2)
        yield installation


def increase_row(installation: Installation, sku: str, quantity: int, position: int, **more: Any):
    """An Increased event of ``sku`` as an outbox row (``more`` changes its fields)."""
    key = routing_key_for(INCREASED, 1)
    payload = installation.runtime.registry.encode(INCREASED, 1, {"sku": sku, "quantity": quantity})
    fields: dict[str, Any] = {
        "id": 0,
        "message_id": str(uuid.uuid4()),
        "type": INCREASED,
        "schema_version": 1,
        "payload": payload,
        "stream": sku,
        "position": position,
        "correlation_id": None,
        "predecessors": f'{{"{key}": {position - 1}}}' if position > 1 else "{}",
    }
    return OutboxRow(**{**fields, **more})


def publish(installation: Installation, row: OutboxRow, properties: pika.BasicProperties) -> None:
    """Publish straight to the installation's exchange, as anyone with access could."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=f"{installation.queue_prefix}{EXCHANGE}",
            routing_key=routing_key_for(row.type, row.schema_version),
            body=bytes(row.payload),
            properties=properties,
            mandatory=True,
        )
    finally:
        connection.close()


def increase(installation: Installation, sku: str, quantity: int) -> None:
    """A real command, in this process: the workers' drain publishes its event."""
    with installation.reading() as runtime:
        runtime.services["warehouse"].commands.increase_product_quantity(sku, quantity)


def view_of(installation: Installation, sku: str) -> int | None:
    with installation.reading():
        from cqrs_warehouse.warehouse.views.products import ProductView

        row = ProductView.get_or_none(ProductView.sku == sku)
        return None if row is None else int(row.quantity)


def letters_of(installation: Installation, message_id: str) -> list[tuple[str, int, int]]:
    """(listener, poison kind, attempts) of each dead letter of the message."""
    fitted = message_id if len(message_id) <= 36 else message_id[:27]
    with installation.reading():
        query = DeadLetter.select().where(DeadLetter.message_id.startswith(fitted))
        return sorted((x.listener, x.poison, x.attempts) for x in query)


def every_listener(kind: int) -> list[tuple[str, int, int]]:
    return sorted((listener["name"], kind, 1) for listener in LISTENERS)


def lines_about(installation: Installation, message_id: str, text: str) -> int:
    return sum(
        1
        for line in all_output(installation).splitlines()
        if message_id[:36] in line and text in line
    )


def test_a_forged_message_is_an_untrusted_dead_letter_at_once_and_the_skus_next_event_applies(
    trusting: Installation, sku: str
) -> None:
    increase(trusting, sku, 10)  # position 1
    wait(lambda: _equal(view_of(trusting, sku), 10))

    unsigned = increase_row(trusting, sku, 1000, 10**15)
    forged = increase_row(trusting, sku, 1000, 10**15)
    plain = properties_of(unsigned, keys(NEW))
    del plain.headers["signature"]
    publish(trusting, unsigned, plain)
    publish(trusting, forged, properties_of(forged, keys(FORGED)))

    for row in (unsigned, forged):
        wait(lambda row=row: _equal(letters_of(trusting, row.message_id), every_listener(2)))
    increase(trusting, sku, 5)  # position 2: not taken for a duplicate
    wait(lambda: _equal(view_of(trusting, sku), 15))

    for row in (unsigned, forged):  # one delivery each, never retried
        assert lines_about(trusting, row.message_id, "dead-lettered an untrusted message") == 4
        assert lines_about(trusting, row.message_id, "will retry") == 0


def test_a_message_over_a_limit_is_a_dead_letter_at_once_and_the_loop_goes_on(
    trusting: Installation, sku: str
) -> None:
    long_id = increase_row(trusting, f"{sku}-i", 1, 1, message_id="i" * 200)
    long_stream = increase_row(trusting, "s" * 300, 1, 1)
    for row in (long_id, long_stream):
        publish(trusting, row, properties_of(row, keys(NEW)))
    for row in (long_id, long_stream):
        wait(lambda row=row: _equal(letters_of(trusting, row.message_id), every_listener(1)))
    increase(trusting, sku, 3)
    wait(lambda: _equal(view_of(trusting, sku), 3))
    assert lines_about(trusting, "i" * 27, "will retry") == 0
    assert lines_about(trusting, long_stream.message_id, "will retry") == 0


def test_rotation_new_old_applies_both_and_new_alone_refuses_old(
    trusting: Installation, sku: str
) -> None:
    by_old = increase_row(trusting, sku, 1, 1)
    by_new = increase_row(trusting, sku, 2, 2)
    publish(trusting, by_old, properties_of(by_old, keys(OLD)))
    publish(trusting, by_new, properties_of(by_new, keys(NEW)))
    wait(lambda: _equal(view_of(trusting, sku), 3))

    assert trusting.stop_workers() == 0
    trusting.start_workers(processes=1, threads=2, env={"MESSAGE_KEY": NEW})  # old dropped
    late = increase_row(trusting, sku, 4, 3)
    publish(trusting, late, properties_of(late, keys(OLD)))
    wait(lambda: _equal(letters_of(trusting, late.message_id), every_listener(2)))
    assert view_of(trusting, sku) == 3


def _equal(actual: Any, expected: Any) -> None:
    assert actual == expected


STARTUP = {
    "dramatiq": lambda: [str(BIN / "dramatiq"), "cqrs_warehouse.worker", "-p", "1", "-t", "1"],
    "cqrs-warehouse serve": lambda: [
        str(BIN / "cqrs-warehouse"),
        "serve",
        "--bind",
        f"127.0.0.1:{free_port()}",
    ],
}


@pytest.mark.parametrize("command", STARTUP)
@pytest.mark.parametrize(
    ("key", "problem"),
    [(None, "MESSAGE_KEY is not set"), ("short", "MESSAGE_KEY: key 1 of 1 has 5 characters")],
    ids=["unset", "short"],
)
def test_on_rabbitmq_the_workers_and_serve_refuse_to_start_without_a_message_key(
    tmp_path: Path, command: str, key: str | None, problem: str
) -> None:
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}",
        BROKER_URL=BROKER_URL,
        LISTENERS_CONFIG=str(ROOT / "config" / "listeners.yaml"),
        MESSAGE_KEY=key,
    )
    finished = run_to_exit(STARTUP[command](), env=env, cwd=tmp_path, timeout=60)
    assert finished.returncode != 0, finished.output
    lines = [line for line in finished.output.splitlines() if problem in line]
    assert len(lines) == 1, finished.output
    assert "Traceback" not in finished.output


def test_cli_commands_that_neither_publish_nor_consume_need_no_message_key(tmp_path: Path) -> None:
    env = service_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}", BROKER_URL=BROKER_URL, MESSAGE_KEY=None
    )
    cli = str(BIN / "cqrs-warehouse")
    for args in (["migrate"], ["outbox", "status"], ["dead-letters", "list"]):
        finished = run_to_exit([cli, *args], env=env, cwd=tmp_path, timeout=60)
        assert finished.returncode == 0, finished.output
