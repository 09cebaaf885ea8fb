"""The products view's quantity per SKU."""

from peewee import BigIntegerField, CharField, Model, PostgresqlDatabase


def up(migrator, db):
    slice_schema = "products_view" if isinstance(db, PostgresqlDatabase) else None
    if slice_schema:
        db.execute_sql('CREATE SCHEMA IF NOT EXISTS "products_view"')

    class ProductView(Model):
        sku = CharField(max_length=64, primary_key=True)
        quantity = BigIntegerField()

        class Meta:
            database = db
            schema = slice_schema
            table_name = "products_view_products"

    db.create_tables([ProductView])


def down(migrator, db):
    prefix = '"products_view".' if isinstance(db, PostgresqlDatabase) else ""
    db.execute_sql(f"DROP TABLE {prefix}products_view_products")
