"""Tables that stay bounded and plans that hold as they grow
(docs/decisions/0022-tables-at-scale.md): when each processed-message record
was written (pruned after PROCESSED_MESSAGES_RETENTION), an index for the
sweep's pruning, and on PostgreSQL each churning
table's autovacuum and analyze thresholds and the room its updates need."""

from peewee import PostgresqlDatabase

PREFIX = '"messaging".'

# Thresholds in rows, not in a fraction of the table: the default (20 % of
# the table) lets a table of a million rows gather 200,000 dead ones first.
STORAGE = {
    # Insert then delete, a few hundred live rows: vacuum after 1,000 dead.
    "messaging_outbox": "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000",
    # An update per delivery of a row per stream: room on each page for the
    # new version (a HOT update, no new index entry), vacuum at 2 % dead.
    "messaging_stream_positions": "fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, "
    "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02",
    "messaging_stream_heads": "fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, "
    "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02",
    # Inserted, later pruned in batches.
    "messaging_processed_messages": "autovacuum_vacuum_scale_factor = 0.02, "
    "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02",
    "messaging_idempotency_keys": "autovacuum_vacuum_scale_factor = 0.02, "
    "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02",
    "messaging_held_messages": "autovacuum_vacuum_scale_factor = 0, "
    "autovacuum_vacuum_threshold = 200, autovacuum_analyze_scale_factor = 0, "
    "autovacuum_analyze_threshold = 200",
    # Insert-only (until pruned): vacuumed for its visibility map every 5 %.
    "messaging_archive": "autovacuum_vacuum_insert_scale_factor = 0.05, "
    "autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02",
}


def up(migrator, db):
    postgres = isinstance(db, PostgresqlDatabase)
    table = f"{PREFIX if postgres else ''}messaging_processed_messages"
    # Rows written before this migration count as applied now (on PostgreSQL
    # a default evaluated once: the table is not rewritten).
    if postgres:
        db.execute_sql(
            f"ALTER TABLE {table} ADD COLUMN applied_at timestamp NOT NULL "
            "DEFAULT (now() AT TIME ZONE 'UTC')"
        )
    else:
        db.execute_sql(
            f"ALTER TABLE {table} ADD COLUMN applied_at DATETIME NOT NULL DEFAULT '2000-01-01'"
        )
        db.execute_sql(f"UPDATE {table} SET applied_at = datetime('now')")
    db.execute_sql(f"CREATE INDEX processedmessage_applied_at ON {table} (applied_at)")
    if postgres:
        for name, options in STORAGE.items():
            db.execute_sql(f"ALTER TABLE {PREFIX}{name} SET ({options})")


def down(migrator, db):
    postgres = isinstance(db, PostgresqlDatabase)
    prefix = '"messaging".' if postgres else ""
    if postgres:
        for table, options in STORAGE.items():
            names = ", ".join(option.split("=")[0].strip() for option in options.split(","))
            db.execute_sql(f"ALTER TABLE {prefix}{table} RESET ({names})")
    db.execute_sql(f"DROP INDEX {prefix}processedmessage_applied_at")
    migrator.migrate(migrator.drop_column("messaging_processed_messages", "applied_at"))
