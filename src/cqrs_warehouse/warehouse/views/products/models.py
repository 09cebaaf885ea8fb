"""The products view's own table. Used only by warehouse.views.products."""

import peewee

from cqrs_warehouse.messaging.database import BaseModel


class ProductView(BaseModel):
    sku = peewee.CharField(max_length=64, primary_key=True)
    quantity = peewee.BigIntegerField()

    class Meta:
        table_name = "products_view_products"
        slice_schema = "products_view"
