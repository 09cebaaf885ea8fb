"""The low-quantity notifier's own quantity per SKU."""

from peewee import BigIntegerField, CharField, Model


def up(migrator, db):
    class NotifierProduct(Model):
        sku = CharField(max_length=64, primary_key=True)
        quantity = BigIntegerField()

        class Meta:
            database = db
            table_name = "low_quantity_notifier_products"

    db.create_tables([NotifierProduct])


def down(migrator, db):
    db.execute_sql("DROP TABLE low_quantity_notifier_products")
