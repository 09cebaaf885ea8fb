"""The low-quantity notifier's own quantity per SKU."""

from peewee import BigIntegerField, CharField, Model, PostgresqlDatabase


def up(migrator, db):
    slice_schema = "low_quantity_notifier" if isinstance(db, PostgresqlDatabase) else None
    if slice_schema:
        db.execute_sql('CREATE SCHEMA IF NOT EXISTS "low_quantity_notifier"')

    class NotifierProduct(Model):
        sku = CharField(max_length=64, primary_key=True)
        quantity = BigIntegerField()

        class Meta:
            database = db
            schema = slice_schema
            table_name = "low_quantity_notifier_products"

    db.create_tables([NotifierProduct])


def down(migrator, db):
    prefix = '"low_quantity_notifier".' if isinstance(db, PostgresqlDatabase) else ""
    db.execute_sql(f"DROP TABLE {prefix}low_quantity_notifier_products")
