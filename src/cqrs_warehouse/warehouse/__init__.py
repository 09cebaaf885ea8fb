"""The warehouse slice: commands with their own state, the products view and
the low-quantity notifier. Depends on the messaging core, never the reverse.

It declares itself once, here; the runtime finds it through the SLICES setting.
"""

from pathlib import Path

from cqrs_warehouse.slices import Slice, Store

from . import services
from .commands import ProductStock
from .errors import WarehouseError
from .openapi import FRAGMENT
from .processors.low_quantity import NotifierProduct
from .routes import routes
from .settings import WarehouseSettings
from .views.products import ProductView

_HERE = Path(__file__).parent

SLICE = Slice(
    name="warehouse",
    stores=(
        Store(
            "warehouse_commands", "warehouse", _HERE / "commands" / "migrations", (ProductStock,)
        ),
        Store(
            "products_view",
            "products_view",
            _HERE / "views" / "products" / "migrations",
            (ProductView,),
        ),
        Store(
            "low_quantity_notifier",
            "low_quantity_notifier",
            _HERE / "processors" / "low_quantity" / "migrations",
            (NotifierProduct,),
        ),
    ),
    settings=WarehouseSettings,
    build=services.build,
    routes=routes,
    errors={WarehouseError: 400},
    openapi=FRAGMENT,
)
