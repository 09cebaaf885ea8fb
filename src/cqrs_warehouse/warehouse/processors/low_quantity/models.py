"""The notifier's own quantity per SKU. Used only by warehouse.processors.low_quantity."""

import peewee

from cqrs_warehouse.messaging import Model


class NotifierProduct(Model):
    sku = peewee.CharField(max_length=64, primary_key=True)
    quantity = peewee.BigIntegerField()

    class Meta:
        table_name = "low_quantity_notifier_products"
