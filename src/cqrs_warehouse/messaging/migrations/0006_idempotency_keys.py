"""The API's idempotency keys, each with the first answer to its request."""

from peewee import (
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

    class IdempotencyKey(Model):
        key = CharField(max_length=255, primary_key=True)
        request = CharField(max_length=64)
        status = IntegerField(null=True)
        body = TextField(null=True)
        consistency_token = TextField(null=True)
        expires_at = DateTimeField(index=True)

        class Meta:
            database = db
            schema = slice_schema
            table_name = "messaging_idempotency_keys"

    db.create_tables([IdempotencyKey])


def down(migrator, db):
    prefix = '"messaging".' if isinstance(db, PostgresqlDatabase) else ""
    db.execute_sql(f"DROP TABLE {prefix}messaging_idempotency_keys")
