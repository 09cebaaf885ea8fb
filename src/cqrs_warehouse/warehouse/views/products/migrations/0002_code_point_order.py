"""SKUs in code-point order on PostgreSQL too (SQLite compares bytes already),
so that the view lists them in that order whatever the server's locale."""

from peewee import PostgresqlDatabase


def up(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql(
            'ALTER TABLE "products_view"."products_view_products" '
            'ALTER COLUMN sku TYPE varchar(64) COLLATE "C"'
        )


def down(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql(
            'ALTER TABLE "products_view"."products_view_products" '
            'ALTER COLUMN sku TYPE varchar(64) COLLATE "default"'
        )
