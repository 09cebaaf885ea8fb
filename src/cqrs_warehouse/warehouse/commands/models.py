"""The command side's own state (the aggregate). Used only by warehouse.commands."""

import peewee

from cqrs_warehouse.messaging import Model


class ProductStock(Model):
    """Quantity on hand per SKU; ``version`` counts the SKU's events, in commit order."""

    sku = peewee.CharField(max_length=64, primary_key=True)
    quantity = peewee.BigIntegerField(constraints=[peewee.Check("quantity >= 0")])
    version = peewee.BigIntegerField()

    class Meta:
        table_name = "warehouse_product_stock"
