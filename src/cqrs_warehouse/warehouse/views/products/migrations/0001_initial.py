"""The products view's quantity per SKU."""

from peewee import BigIntegerField, CharField, Model


def up(migrator, db):
    class ProductView(Model):
        sku = CharField(max_length=64, primary_key=True)
        quantity = BigIntegerField()

        class Meta:
            database = db
            table_name = "products_view_products"

    db.create_tables([ProductView])


def down(migrator, db):
    db.execute_sql("DROP TABLE products_view_products")
