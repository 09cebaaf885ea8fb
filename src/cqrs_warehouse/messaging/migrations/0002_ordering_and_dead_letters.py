"""Per-stream positions and held messages (ordering), each stream's last
position per routing key, dead letters, and the embedded broker's durable
deliveries."""

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
    TextField,
)


def up(migrator, db):
    slice_schema = "messaging" if isinstance(db, PostgresqlDatabase) else None
    if slice_schema:
        db.execute_sql('CREATE SCHEMA IF NOT EXISTS "messaging"')

    class StreamHead(Model):
        stream = CharField(max_length=255)
        routing_key = CharField(max_length=255)
        position = BigIntegerField()

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_stream_heads"
            primary_key = CompositeKey("stream", "routing_key")

    class StreamPosition(Model):
        listener = CharField(max_length=100)
        stream = CharField(max_length=255)
        position = BigIntegerField()
        held = IntegerField(default=0)

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_stream_positions"
            primary_key = CompositeKey("listener", "stream")

    class HeldMessage(Model):
        listener = CharField(max_length=100)
        stream = CharField(max_length=255)
        position = BigIntegerField()
        message_id = CharField(max_length=36)
        type = CharField(max_length=255)
        schema_version = IntegerField()
        written_version = IntegerField(null=True)
        payload = BlobField()
        predecessors = TextField(null=True)
        required = BigIntegerField()
        held_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_held_messages"
            primary_key = CompositeKey("listener", "stream", "position")

    class DeadLetter(Model):
        id = BigAutoField()
        listener = CharField(max_length=100, index=True)
        message_id = CharField(max_length=36, null=True)
        type = CharField(max_length=255, null=True)
        schema_version = IntegerField(null=True)
        stream = CharField(max_length=255, null=True)
        position = BigIntegerField(null=True)
        envelope = TextField()
        error = TextField()
        attempts = IntegerField()
        poison = IntegerField()
        created_at = DateTimeField(default=datetime.datetime.utcnow)

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_dead_letters"

    class Delivery(Model):
        id = BigAutoField()
        listener = CharField(max_length=100)
        envelope = TextField()

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_deliveries"

    migrator.migrate(migrator.add_column("messaging_outbox", "predecessors", TextField(null=True)))
    db.create_tables([StreamHead, StreamPosition, HeldMessage, DeadLetter, Delivery])


def down(migrator, db):
    prefix = '"messaging".' if isinstance(db, PostgresqlDatabase) else ""
    for table in (
        "messaging_deliveries",
        "messaging_dead_letters",
        "messaging_held_messages",
        "messaging_stream_positions",
        "messaging_stream_heads",
    ):
        db.execute_sql(f"DROP TABLE {prefix}{table}")
    migrator.migrate(migrator.drop_column("messaging_outbox", "predecessors"))
