"""The products view: quantity per SKU, kept from Increased and Shipped events.

``handle_message`` is its listener (named in listeners.yaml); ``ProductsResource``
serves it over REST. Only this package touches its table.
"""

from .handler import handle_message, list_products, quantity_of
from .models import ProductView
from .resources import ProductResource, ProductsResource

MODELS = [ProductView]

__all__ = [
    "MODELS",
    "ProductResource",
    "ProductView",
    "ProductsResource",
    "handle_message",
    "list_products",
    "quantity_of",
]
