"""The correlation id that follows a request's messages to every listener."""

from peewee import CharField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column(
            "messaging_outbox", "correlation_id", CharField(max_length=64, null=True)
        ),
        migrator.add_column(
            "messaging_held_messages", "correlation_id", CharField(max_length=64, null=True)
        ),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_column("messaging_held_messages", "correlation_id"),
        migrator.drop_column("messaging_outbox", "correlation_id"),
    )
