"""The W3C trace context (messaging/tracing.py) kept with outbox, held and archived
messages (a dead letter keeps it in its envelope)."""

from peewee import CharField

_TABLES = ("messaging_outbox", "messaging_held_messages", "messaging_archive")


def up(migrator, db):
    migrator.migrate(
        *(
            operation
            for table in _TABLES
            for operation in (
                migrator.add_column(table, "traceparent", CharField(max_length=64, null=True)),
                migrator.add_column(table, "tracestate", CharField(max_length=512, null=True)),
            )
        )
    )


def down(migrator, db):
    migrator.migrate(
        *(
            migrator.drop_column(table, column)
            for table in reversed(_TABLES)
            for column in ("tracestate", "traceparent")
        )
    )
