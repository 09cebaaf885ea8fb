"""The products view: quantity per SKU, kept from Increased and Shipped events.

``ProductsView`` is its handler (named in listeners.yaml); the resources
serve it over REST. Only this package touches its table.
"""

from .handler import ProductsView, list_products, quantity_of
from .models import ProductView
from .resources import ProductResource, ProductsResource

__all__ = [
    "ProductResource",
    "ProductView",
    "ProductsResource",
    "ProductsView",
    "list_products",
    "quantity_of",
]
