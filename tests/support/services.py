"""The PostgreSQL and RabbitMQ that tests and benchmarks use, on 127.0.0.1.

TEST_POSTGRES_URL names a PostgreSQL database from which databases of their
own are created and dropped (default postgresql://postgres@127.0.0.1:5432/postgres);
TEST_BROKER_URL names RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/).
Every name made here is unique (``unique_name``), so runs on one machine do
not collide.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator

import pika
import pika.exceptions
import psycopg2
import psycopg2.extensions

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


class ServiceMissing(Exception):
    """PostgreSQL or RabbitMQ does not answer (tests fail on it, never skip)."""


def unique_name(prefix: str) -> str:
    """A name no other test or run on this machine uses (databases, queue prefixes, SKUs)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Postgres:
    """Creates uniquely named databases and drops them afterwards."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def url(self, database: str) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))

    def connect(self, database: str | None = None) -> psycopg2.extensions.connection:
        """An autocommit connection to ``database`` (default: the admin one)."""
        try:
            connection = psycopg2.connect(self.url(database) if database else self.admin_url)
        except psycopg2.OperationalError as error:
            raise ServiceMissing(f"PostgreSQL is required at {self.admin_url}: {error}") from error
        connection.autocommit = True
        return connection

    def create(
        self, name: str | None = None, *, template: str | None = None, strategy: str | None = None
    ) -> str:
        """Create a database (``name``, else a unique one; a copy of ``template`` if
        given; ``strategy`` FILE_COPY copies a large one faster than WAL_LOG, the
        default, at the cost of a checkpoint); returns its URL."""
        name = name or unique_name("cw_test")
        statement = f'CREATE DATABASE "{name}"'
        if template:
            statement += f' TEMPLATE "{template}"'  # a file-level copy: fast
        if strategy:
            statement += f" STRATEGY {strategy}"
        with self._admin() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(statement)
        self.created.append(name)
        return self.url(name)

    def drop(self, name: str) -> None:
        with self._admin() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            self.drop(name)

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg2.extensions.cursor]:
        # PostgreSQL is shared, and the fault suite restarts it: wait for it
        # to come back rather than leave databases behind.
        deadline = time.monotonic() + 90
        while True:
            try:
                connection = self.connect()
                break
            except ServiceMissing:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)  # polling interval, bounded by the deadline above
        try:
            with connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()


def broker_parameters(url: str) -> list[pika.URLParameters]:
    """pika's parameters of a BROKER_URL: one URL, or a cluster's separated by ';'."""
    return [pika.URLParameters(part) for part in url.split(";")]


def connect(url: str = BROKER_URL) -> pika.BlockingConnection:
    """A connection to the first node of ``url`` that accepts one."""
    return pika.BlockingConnection(broker_parameters(url))


def require_rabbitmq(url: str = BROKER_URL) -> None:
    try:
        connection = connect(url)
    except pika.exceptions.AMQPError as error:
        raise ServiceMissing(f"RabbitMQ is required at {url}: {error!r}") from error
    connection.close()


def broker_names(prefix: str, listeners: Iterable[str]) -> list[str]:
    """Every queue an installation with ``prefix`` declares for these listeners
    and the drain (with Dramatiq's delay and dead-letter queues)."""
    names = []
    for name in [*listeners, "outbox_drain"]:
        queue = f"{prefix}{name}"
        names += [queue, f"{queue}.DQ", f"{queue}.XQ"]
    return names


def delete_from_broker(
    queues: Iterable[str], exchanges: Iterable[str] = (), url: str = BROKER_URL
) -> None:
    """Delete ``queues`` and ``exchanges`` (those that do not exist are skipped)."""
    connection = connect(url)
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                channel.queue_delete(queue=queue)
            except pika.exceptions.ChannelClosed:
                channel = connection.channel()
        for exchange in exchanges:
            try:
                channel.exchange_delete(exchange=exchange)
            except pika.exceptions.ChannelClosed:
                channel = connection.channel()
    finally:
        connection.close()


def queue_depth(queue: str, url: str = BROKER_URL) -> int:
    """Messages ready in ``queue`` (0 if it does not exist)."""
    connection = connect(url)
    try:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
    finally:
        connection.close()
