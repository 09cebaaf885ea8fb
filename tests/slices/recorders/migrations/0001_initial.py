"""The recorders' tables."""

import datetime

from peewee import (
    BigAutoField,
    BigIntegerField,
    CharField,
    CompositeKey,
    DateTimeField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    TextField,
)


def up(migrator, db):
    schema = "recorders" if isinstance(db, PostgresqlDatabase) else None

    class WatchedMessage(Model):
        id = BigAutoField()
        message_id = CharField(max_length=36)
        type = CharField(max_length=255)
        schema_version = IntegerField()
        payload = TextField()
        stream = CharField(max_length=255, null=True)
        position = BigIntegerField(null=True)
        predecessors = TextField(null=True)
        received_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            table_name = "recorders_watched_messages"

    class ReceivedShipment(Model):
        message_id = CharField(max_length=36, primary_key=True)
        type = CharField(max_length=255)
        sku = CharField(max_length=64)
        quantity = BigIntegerField(null=True)

        class Meta:
            database = db
            table_name = "recorders_received_shipments"

    class RefusedSku(Model):
        listener = CharField(max_length=100)
        sku = CharField(max_length=64)

        class Meta:
            database = db
            table_name = "recorders_refused_skus"
            primary_key = CompositeKey("listener", "sku")

    class PickyApplied(Model):
        id = BigAutoField()
        listener = CharField(max_length=100)
        message_id = CharField(max_length=36)
        sku = CharField(max_length=64)
        quantity = BigIntegerField()

        class Meta:
            database = db
            table_name = "recorders_picky_applied"

    models = [WatchedMessage, ReceivedShipment, RefusedSku, PickyApplied]
    for model in models:
        model._meta.schema = schema
    db.create_tables(models)


def down(migrator, db):
    prefix = '"recorders".' if isinstance(db, PostgresqlDatabase) else ""
    for table in (
        "recorders_picky_applied",
        "recorders_refused_skus",
        "recorders_received_shipments",
        "recorders_watched_messages",
    ):
        db.execute_sql(f"DROP TABLE {prefix}{table}")
