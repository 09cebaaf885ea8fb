"""PostgreSQL databases and RabbitMQ queues the suite creates, and their removal.

Every name the suite creates starts with one tag per suite run
(``bench_<hex>``), so the final sweep removes exactly what this run made.
Only servers on 127.0.0.1 are accepted: the suite puts load on whatever it
is pointed at.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pika
import pika.exceptions
import psycopg2
import psycopg2.extensions

logger = logging.getLogger(__name__)

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def require_local(url: str) -> str:
    """``url`` itself, if it names a server on this machine; else stop."""
    host = urllib.parse.urlsplit(url).hostname
    if host not in _LOCAL_HOSTS:
        raise SystemExit(f"bench: refusing to load {host!r}; only 127.0.0.1 may be a target")
    return url


def new_tag() -> str:
    return f"bench_{uuid.uuid4().hex[:8]}"


class Postgres:
    """Creates and drops the suite's databases through an admin connection."""

    def __init__(self, admin_url: str = POSTGRES_URL) -> None:
        self.admin_url = require_local(admin_url)
        self.created: list[str] = []

    def url(self, database: str) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))

    def connect(self, database: str | None = None) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(self.url(database) if database else self.admin_url)
        connection.autocommit = True
        return connection

    def execute(self, database: str, statement: str) -> None:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def create(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` (a copy of ``template`` if given); returns its URL."""
        statement = f'CREATE DATABASE "{name}"'
        if template:
            # A file-level copy: far faster than writing a backlog again.
            statement += f' TEMPLATE "{template}"'
        with self._admin() as cursor:
            # One of this run's names, left by an attempt that failed half-way.
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(statement)
        self.created.append(name)
        return self.url(name)

    def drop(self, name: str) -> None:
        with self._admin() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self, tag: str) -> None:
        """Drop every database whose name starts with ``tag`` (those this suite run made,
        including any a crash left untracked)."""
        with self._admin() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (tag,))
            names = {row[0] for row in cursor.fetchall()}
        for name in sorted(names | set(self.created), reverse=True):
            try:
                self.drop(name)
            except psycopg2.Error as error:
                logger.warning("could not drop database %s: %s", name, error)

    def settings(self, names: tuple[str, ...]) -> dict[str, str]:
        with self._admin() as cursor:
            cursor.execute(
                "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name = ANY(%s)",
                (list(names),),
            )
            return dict(cursor.fetchall())

    def server_version(self) -> str:
        with self._admin() as cursor:
            cursor.execute("SHOW server_version")
            return str(cursor.fetchone()[0])

    @contextmanager
    def _admin(self) -> Iterator[psycopg2.extensions.cursor]:
        # PostgreSQL is shared: others may restart it. Wait for it to come back
        # rather than leave this run's databases behind.
        deadline = time.monotonic() + 90
        while True:
            try:
                connection = self.connect()
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        try:
            with connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()


def broker_parameters(url: str = BROKER_URL) -> pika.URLParameters:
    return pika.URLParameters(require_local(url))


def rabbitmq_version(url: str = BROKER_URL) -> str:
    connection = pika.BlockingConnection(broker_parameters(url))
    try:
        # pika keeps the server's properties from the handshake only here.
        properties = connection._impl.server_properties
        version = properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()


def wait_for_servers(url: str = BROKER_URL, timeout: float = 120) -> None:
    """Until PostgreSQL and RabbitMQ both accept connections again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            Postgres().connect().close()
            pika.BlockingConnection(broker_parameters(url)).close()
            return
        except (psycopg2.OperationalError, pika.exceptions.AMQPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def service_queue_names(prefix: str, listeners: Iterable[str]) -> list[str]:
    """The queues one installation of the service declares (and Dramatiq's delay/dead ones)."""
    names = [*listeners, "outbox_drain"]
    return [f"{prefix}{name}{suffix}" for name in names for suffix in ("", ".DQ", ".XQ")]


def delete_queues(queues: Iterable[str], exchanges: Iterable[str] = (), url: str = BROKER_URL):
    """Delete ``queues`` and ``exchanges`` (missing ones are fine)."""
    connection = pika.BlockingConnection(broker_parameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue=queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange=exchange)
    finally:
        connection.close()


def sweep_broker(tag: str, url: str = BROKER_URL) -> list[str]:
    """Delete every queue and exchange whose name starts with ``tag``; returns their names.

    Lists them with rabbitmqctl when it is installed (it sees queues that a
    crashed run declared under names we did not predict).
    """
    if shutil.which("rabbitmqctl") is None:
        return []
    found: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        listed: list[str] = []
        for attempt in range(1, 6):  # the shared broker may be restarting
            try:
                listed = subprocess.run(
                    ["rabbitmqctl", "-q", f"list_{kind}", "name"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                ).stdout.split()
                break
            except (OSError, subprocess.SubprocessError) as error:
                logger.warning("rabbitmqctl list_%s failed (%d of 5): %s", kind, attempt, error)
                time.sleep(3)
        found[kind] = [name for name in listed if name.startswith(tag)]
    if found["queues"] or found["exchanges"]:
        delete_queues(found["queues"], found["exchanges"], url)
    return found["queues"] + found["exchanges"]


def queue_depth(queue: str, url: str = BROKER_URL) -> int:
    connection = pika.BlockingConnection(broker_parameters(url))
    try:
        try:
            declared = connection.channel().queue_declare(queue=queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        return int(declared.method.message_count)
    finally:
        connection.close()
