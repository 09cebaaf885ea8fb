"""The Falcon app: routes, and the one place where errors become HTTP.

``create_app()`` is what gunicorn loads (see gunicorn.conf.py); it
bootstraps from the environment and refuses to run without BROKER_URL.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
import peewee

from .bootstrap import Runtime, bootstrap
from .messaging.database import database
from .messaging.middleware import drop_broken_connection
from .settings import Settings
from .warehouse.commands import IncreaseQuantityResource, ShipQuantityResource
from .warehouse.errors import WarehouseError
from .warehouse.views.products import ProductsResource

logger = logging.getLogger(__name__)


class _DatabaseConnection:
    """Each request thread keeps its connection; one broken by an error is dropped."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        database.connect(reuse_if_open=True)


def _warehouse_error(
    req: falcon.Request, resp: falcon.Response, error: WarehouseError, params: Any
) -> None:
    raise falcon.HTTPBadRequest(title=error.title, description=str(error))


def _database_error(
    req: falcon.Request, resp: falcon.Response, error: peewee.DatabaseError, params: Any
) -> None:
    logger.error("database error on %s %s: %r", req.method, req.path, error)
    drop_broken_connection(error)
    if isinstance(error, peewee.OperationalError | peewee.InterfaceError):
        raise falcon.HTTPServiceUnavailable(
            title="Database unavailable.",
            description="The database could not be reached; nothing was changed. Try again.",
            retry_after=1,
        )
    raise falcon.HTTPInternalServerError(title="Database error.", description=str(error))


def build_app() -> falcon.App:
    """The API over an already bootstrapped runtime."""
    app = falcon.App(middleware=[_DatabaseConnection()])
    app.add_route("/warehouse/products", ProductsResource())
    app.add_route("/warehouse/products/{sku}/increase_quantity", IncreaseQuantityResource())
    app.add_route("/warehouse/products/{sku}/ship_quantity", ShipQuantityResource())
    app.add_error_handler(WarehouseError, _warehouse_error)
    app.add_error_handler(peewee.DatabaseError, _database_error)
    return app


def create_app(settings: Settings | None = None) -> falcon.App:
    """Bootstrap from the environment (BROKER_URL required) and build the API."""
    runtime: Runtime = bootstrap(settings or Settings.from_env())
    logger.info("API ready on database %s", type(runtime.database).__name__)
    return build_app()
