"""The outbox and the record of which messages each listener applied."""

import datetime

from peewee import (
    BigAutoField,
    BigIntegerField,
    BlobField,
    CharField,
    CompositeKey,
    DateTimeField,
    IntegerField,
    Model,
    PostgresqlDatabase,
)


def up(migrator, db):
    slice_schema = "messaging" if isinstance(db, PostgresqlDatabase) else None
    if slice_schema:
        db.execute_sql('CREATE SCHEMA IF NOT EXISTS "messaging"')

    class OutboxRecord(Model):
        id = BigAutoField()
        message_id = CharField(max_length=36, unique=True)
        type = CharField(max_length=255)
        schema_version = IntegerField()
        payload = BlobField()
        stream = CharField(max_length=255, null=True)
        position = BigIntegerField(null=True)
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_outbox"

    class ProcessedMessage(Model):
        listener = CharField(max_length=100)
        message_id = CharField(max_length=36)

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_processed_messages"
            primary_key = CompositeKey("listener", "message_id")

    db.create_tables([OutboxRecord, ProcessedMessage])


def down(migrator, db):
    prefix = '"messaging".' if isinstance(db, PostgresqlDatabase) else ""
    db.execute_sql(f"DROP TABLE {prefix}messaging_processed_messages")
    db.execute_sql(f"DROP TABLE {prefix}messaging_outbox")
