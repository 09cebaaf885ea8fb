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
    TextField,
)


def up(migrator, db):
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
            table_name = "messaging_archive"

    db.create_tables([ArchivedMessage])


def down(migrator, db):
    db.execute_sql("DROP TABLE messaging_archive")
