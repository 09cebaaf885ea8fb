"""The low product quantity notifier. ``handle_message`` is its listener (named
in listeners.yaml). Only this package touches its table."""

from .handler import DEFAULT_THRESHOLD, configure, handle_message, quantity_of
from .models import NotifierProduct

MODELS = [NotifierProduct]

__all__ = [
    "DEFAULT_THRESHOLD",
    "MODELS",
    "NotifierProduct",
    "configure",
    "handle_message",
    "quantity_of",
]
