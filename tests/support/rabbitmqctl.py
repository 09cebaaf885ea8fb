"""The broker's own view of its bindings and queues, from ``rabbitmqctl`` (the
tests run as a user that may call it): the truth the service's record of
what it declared is checked against. AMQP cannot list bindings."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from .waiting import eventually


def _rows(*args: str) -> list[list[str]]:
    completed = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return [line.split("\t") for line in completed.stdout.splitlines() if line.strip()]


def bindings(exchange: str) -> dict[str, set[str]]:
    """{queue: binding keys} of every queue bound to ``exchange``."""
    found: dict[str, set[str]] = {}
    for source, destination, key in _rows(
        "list_bindings", "-q", "source_name", "destination_name", "routing_key"
    ):
        if source == exchange:
            found.setdefault(destination, set()).add(key)
    return found


def queues(prefix: str) -> dict[str, tuple[int, int]]:
    """{queue: (messages, consumers)} of the queues whose name starts with ``prefix``."""
    return {
        name: (int(messages), int(consumers))
        for name, messages, consumers in _rows("list_queues", "-q", "name", "messages", "consumers")
        if name.startswith(prefix)
    }


@contextmanager
def refusing_publishes(queue: str) -> Iterator[None]:
    """While inside, ``queue`` refuses every message published to it (a policy
    of length 0 that rejects publishes, applied before this returns); on exit
    it accepts them again. The queue itself stays: deleting it would drop a
    message RabbitMQ had routed to it and not yet refused, and confirm it."""
    name = f"refuse-{queue}"
    definition = '{"max-length": 0, "overflow": "reject-publish"}'
    pattern = f"^{re.escape(queue)}$"
    _rows("set_policy", "--apply-to", "queues", "--priority", "999", name, pattern, definition)
    try:
        eventually(lambda: _policy_is(queue, name), timeout=30)
        yield
    finally:
        _rows("clear_policy", name)
        eventually(lambda: _policy_is(queue, ""), timeout=30)


def _policy_is(queue: str, policy: str) -> None:
    applied = {name: applied for name, applied in _rows("list_queues", "-q", "name", "policy")}
    assert applied.get(queue) == policy, (queue, applied.get(queue))
