"""The event archive: every message, as written, for rebuilding listeners."""

import datetime

from peewee import (
    BigAutoField,
    BigIntegerField,
    BlobField,
    CharField,
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

    class ArchivedMessage(Model):
        id = BigAutoField()
        message_id = CharField(max_length=36, unique=True)
        type = CharField(max_length=255)
        schema_version = IntegerField()
        payload = BlobField()
        stream = CharField(max_length=255, null=True)
        position = BigIntegerField(null=True)
        predecessors = TextField(null=True)
        correlation_id = CharField(max_length=64, null=True)
        archived_at = DateTimeField(default=datetime.datetime.utcnow, index=True)

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_archive"

    db.create_tables([ArchivedMessage])


def down(migrator, db):
    prefix = '"messaging".' if isinstance(db, PostgresqlDatabase) else ""
    db.execute_sql(f"DROP TABLE {prefix}messaging_archive")
