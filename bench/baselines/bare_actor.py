"""The bare Dramatiq baseline: one actor, one PostgreSQL update+commit per message.

``dramatiq bench.baselines.bare_actor -p N -t T`` with the same N and T as
the service's workers. RabbitMQ broker with Dramatiq's default middleware,
peewee over psycopg2 with a connection per worker thread kept between
messages. No routing, no Avro, no per-listener bookkeeping, no logging per
message. The figure is the ceiling the service's deliveries/s is compared
with.

The suite creates the counters and enqueues the messages (``python -m
bench.baselines.bare_actor COUNT``) before the workers start, then counts
the applied ones as the sum of ``n`` over the counters table.
"""

from __future__ import annotations

import os
import sys

import dramatiq
import peewee
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from playhouse.db_url import connect

QUEUE = os.environ.get("QUEUE_PREFIX", "bench_") + "bare_actor"
SLOTS = 1000  # rows the updates spread over, like the service's SKUs

database = connect(os.environ["DATABASE_URL"])
broker = RabbitmqBroker(url=os.environ["BROKER_URL"])
dramatiq.set_broker(broker)


class Counter(peewee.Model):
    slot = peewee.IntegerField(primary_key=True)
    n = peewee.BigIntegerField(default=0)

    class Meta:
        database = database
        table_name = "bench_bare_counters"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def bump(slot: int) -> None:
    database.connect(reuse_if_open=True)
    with database.atomic():
        Counter.update(n=Counter.n + 1).where(Counter.slot == slot).execute()


def prepare() -> None:
    """Create the counters (in the suite's process, before the workers start)."""
    with database.connection_context():
        database.create_tables([Counter])
        Counter.insert_many([{"slot": slot, "n": 0} for slot in range(SLOTS)]).execute()


def enqueue(count: int) -> None:
    for index in range(count):
        bump.send(index % SLOTS)
    broker.close()


if __name__ == "__main__":
    # `python -m bench.baselines.bare_actor COUNT`: the suite's set-up step.
    prepare()
    enqueue(int(sys.argv[1]))
