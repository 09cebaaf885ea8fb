from cqrs_warehouse.messaging.testing import pending_messages
from cqrs_warehouse.warehouse.commands import increase_product_quantity


def test_increase_leaves_one_increased_message_in_the_outbox(db, sku):
    increase_product_quantity(sku, 50)
    [message] = pending_messages()
    assert message.type == "Warehouse.Events.ProductQuantityIncreased"
    assert message.payload == {"sku": sku, "quantity": 50}
