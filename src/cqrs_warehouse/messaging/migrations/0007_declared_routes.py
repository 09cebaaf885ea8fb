"""What the service declared on RabbitMQ for each installation (QUEUE_PREFIX):
the listener queues and their bindings, so that a later start can remove
what listeners.yaml no longer says (``rabbitmq/routes.py``)."""

import datetime

from peewee import CharField, CompositeKey, DateTimeField, Model, PostgresqlDatabase


def up(migrator, db):
    schema = "messaging" if isinstance(db, PostgresqlDatabase) else None
    if schema:
        db.execute_sql('CREATE SCHEMA IF NOT EXISTS "messaging"')

    class DeclaredQueue(Model):
        queue = CharField(max_length=255, primary_key=True)
        listener = CharField(max_length=100)
        declared_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "messaging_declared_queues"

    class DeclaredBinding(Model):
        queue = CharField(max_length=255)
        exchange = CharField(max_length=255)
        binding = CharField(max_length=255)

        class Meta:
            database = db
            table_name = "messaging_declared_bindings"
            primary_key = CompositeKey("queue", "exchange", "binding")

    models = [DeclaredQueue, DeclaredBinding]
    for model in models:
        model._meta.schema = schema
    db.create_tables(models)


def down(migrator, db):
    prefix = '"messaging".' if isinstance(db, PostgresqlDatabase) else ""
    for table in ("messaging_declared_bindings", "messaging_declared_queues"):
        db.execute_sql(f"DROP TABLE {prefix}{table}")
