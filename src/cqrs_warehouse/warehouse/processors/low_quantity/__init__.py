"""The low product quantity notifier. ``LowQuantityNotifier`` is its handler
(named in listeners.yaml). Only this package touches its table."""

from .handler import LowQuantityNotifier, quantity_of
from .models import NotifierProduct

__all__ = ["LowQuantityNotifier", "NotifierProduct", "quantity_of"]
