"""REST resource of the products view. Routed by web.create_app."""

import falcon

from .handler import list_products


class ProductsResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = list_products()
