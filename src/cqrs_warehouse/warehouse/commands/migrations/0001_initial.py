"""The command side's stock per SKU."""

from peewee import BigIntegerField, CharField, Check, Model, PostgresqlDatabase


def up(migrator, db):
    slice_schema = "warehouse" if isinstance(db, PostgresqlDatabase) else None
    if slice_schema:
        db.execute_sql('CREATE SCHEMA IF NOT EXISTS "warehouse"')

    class ProductStock(Model):
        sku = CharField(max_length=64, primary_key=True)
        quantity = BigIntegerField(constraints=[Check("quantity >= 0")])
        version = BigIntegerField()

        class Meta:
            database = db
            schema = slice_schema
            table_name = "warehouse_product_stock"

    db.create_tables([ProductStock])


def down(migrator, db):
    prefix = '"warehouse".' if isinstance(db, PostgresqlDatabase) else ""
    db.execute_sql(f"DROP TABLE {prefix}warehouse_product_stock")
