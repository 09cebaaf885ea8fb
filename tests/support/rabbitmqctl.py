"""The broker's own view of its bindings and queues, from ``rabbitmqctl`` (the
tests run as a user that may call it): the truth the service's record of
what it declared is checked against. AMQP cannot list bindings."""

from __future__ import annotations

import subprocess


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
