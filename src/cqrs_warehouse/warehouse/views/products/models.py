"""The products view's own table. Used only by warehouse.views.products."""

import peewee

from cqrs_warehouse.messaging import Model


class ProductView(Model):
    # Code-point order (COLLATE "C" on PostgreSQL, migration 0002), as SQLite's.
    sku = peewee.CharField(max_length=64, primary_key=True)
    quantity = peewee.BigIntegerField()

    class Meta:
        table_name = "products_view_products"
