"""The integration tests' shared fixtures: ``installations`` (see test_rabbitmq_drain)
and ``queue``."""

from collections.abc import Iterator

import pika
import pytest
from dramatiq.common import dq_name, xq_name

from tests.conftest import BROKER_URL, unique_name
from tests.integration.test_rabbitmq_drain import installations  # noqa: F401


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue name of this test's own; the queue and Dramatiq's delay queues
    for it are deleted afterwards."""
    name = unique_name("queue")
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        for declared in (name, dq_name(name), xq_name(name)):
            connection.channel().queue_delete(declared)
    finally:
        connection.close()
