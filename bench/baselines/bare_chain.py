"""The bare latency chain: the hops of a command's way to its listeners, and nothing else.

The floor the service's latency is compared with, measured on the same
machine in the same run, with the same libraries and the same load:

1. the bare Falcon app (``bare_falcon``, same gunicorn settings) inserts a
   row and commits; a trigger NOTIFYs ``bench_bare_chain`` with the SKU;
2. the relay (``python -m bench.baselines.bare_chain relay``), LISTENing on
   its own psycopg2 connection, publishes the SKU as a persistent message to
   a fanout exchange over pika, in confirm mode (it waits for the confirm,
   as the drain does before it commits);
3. RabbitMQ routes it to one durable queue per listener (classic queues of
   version 2, as the service declares);
4. the listeners (``python -m bench.baselines.bare_chain listeners N``), one
   thread and one pika connection per queue, each do one PostgreSQL
   upsert+commit per message and ack it.

Step 4's upsert advances the listener's count for the SKU in
``bench_bare_applied``, whose trigger NOTIFYs the latency scenario's watcher
as the service's stream positions do (``scenarios/latency.py``). No outbox
row, no Avro, no stream order, no Dramatiq, no logging: what is left is the
stack's own hops, each done once.
"""

from __future__ import annotations

import os
import select
import sys
import threading

import pika
import psycopg2

NOTIFY_CHANNEL = "bench_bare_chain"

#: DDL run by the suite in the chain's database (after bench_bare_commands
#: exists); ``{applied_channel}`` is the latency watcher's channel.
TABLES = """
CREATE TABLE bench_bare_applied (
  listener TEXT NOT NULL, sku TEXT NOT NULL, position INTEGER NOT NULL,
  PRIMARY KEY (listener, sku));
CREATE FUNCTION bench_bare_command_notify() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('{notify_channel}', NEW.sku);
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_bare_command AFTER INSERT ON bench_bare_commands
  FOR EACH ROW EXECUTE FUNCTION bench_bare_command_notify();
CREATE FUNCTION bench_bare_applied_notify() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('{applied_channel}', NEW.listener || ' ' || NEW.sku || ' ' || NEW.position);
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_bare_applied AFTER INSERT OR UPDATE ON bench_bare_applied
  FOR EACH ROW EXECUTE FUNCTION bench_bare_applied_notify();
"""

UPSERT = (
    "INSERT INTO bench_bare_applied (listener, sku, position) VALUES (%s, %s, 1) "
    "ON CONFLICT (listener, sku) DO UPDATE SET position = bench_bare_applied.position + 1"
)


def exchange_name(prefix: str) -> str:
    return f"{prefix}bare_chain"


def listener_names(count: int) -> list[str]:
    return [f"bare{index}" for index in range(1, count + 1)]


def declare(broker_url: str, prefix: str, listeners: int) -> list[str]:
    """The exchange and one bound queue per listener; returns the queue names."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        exchange = exchange_name(prefix)
        channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
        queues = []
        for name in listener_names(listeners):
            queue = f"{prefix}{name}"
            # Declared as the service's are: no x-queue-version (see messaging/rabbitmq/broker.py).
            channel.queue_declare(queue, durable=True)
            channel.queue_bind(queue, exchange)
            queues.append(queue)
        return queues
    finally:
        connection.close()


def relay(database_url: str, broker_url: str, prefix: str) -> None:
    """NOTIFY in, one confirmed persistent publish out, until killed."""
    listen = psycopg2.connect(database_url)
    listen.autocommit = True
    with listen.cursor() as cursor:
        cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.confirm_delivery()
    exchange = exchange_name(prefix)
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    print("relay ready", flush=True)
    while True:
        ready, _, _ = select.select([listen], [], [], 1.0)
        if not ready:
            connection.process_data_events(time_limit=0)  # heartbeats
            continue
        listen.poll()
        while listen.notifies:
            sku = listen.notifies.pop(0).payload
            channel.basic_publish(exchange, "", sku.encode(), persistent)


def listeners(database_url: str, broker_url: str, prefix: str, count: int) -> None:
    """One consuming thread per listener queue, until killed."""
    threads = [
        threading.Thread(
            target=_listen, args=(database_url, broker_url, f"{prefix}{name}", name), daemon=True
        )
        for name in listener_names(count)
    ]
    for thread in threads:
        thread.start()
    print("listeners ready", flush=True)
    for thread in threads:
        thread.join()


def _listen(database_url: str, broker_url: str, queue: str, name: str) -> None:
    database = psycopg2.connect(database_url)
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=16)
    for method, _, body in channel.consume(queue):
        with database.cursor() as cursor:
            cursor.execute(UPSERT, (name, body.decode()))
        database.commit()
        channel.basic_ack(method.delivery_tag)


def main() -> None:
    database_url, broker_url = os.environ["DATABASE_URL"], os.environ["BROKER_URL"]
    prefix = os.environ["QUEUE_PREFIX"]
    role = sys.argv[1]
    if role == "relay":
        relay(database_url, broker_url, prefix)
    elif role == "listeners":
        listeners(database_url, broker_url, prefix, int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown role {role!r}: relay or listeners")


if __name__ == "__main__":
    main()
