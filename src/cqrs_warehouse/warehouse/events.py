"""The warehouse's event types. Commands emit them; listeners read them."""

PRODUCT_QUANTITY_INCREASED = "Warehouse.Events.ProductQuantityIncreased"
PRODUCT_QUANTITY_SHIPPED = "Warehouse.Events.ProductQuantityShipped"
NOTIFIED_LOW_PRODUCT_QUANTITY = "Warehouse.Events.NotifiedLowProductQuantity"
