"""The command side's stock per SKU."""

from peewee import BigIntegerField, CharField, Check, Model


def up(migrator, db):
    class ProductStock(Model):
        sku = CharField(max_length=64, primary_key=True)
        quantity = BigIntegerField(constraints=[Check("quantity >= 0")])
        version = BigIntegerField()

        class Meta:
            database = db
            table_name = "warehouse_product_stock"

    db.create_tables([ProductStock])


def down(migrator, db):
    db.execute_sql("DROP TABLE warehouse_product_stock")
