"""The bare Falcon baseline: the service's routes, one PostgreSQL insert+commit per POST.

gunicorn loads ``bench.baselines.bare_falcon:app`` with the service's own
gunicorn.conf.py (same worker class, processes, threads, keep-alive). It
uses the same stack as the service (Falcon, peewee over psycopg2, a
connection per thread kept between requests) and nothing of the service:
no validation beyond the body's type, no logging, no metrics, no outbox.
The figure is the ceiling the service's commands/s is compared with.

The suite creates the table (``bench_bare_commands``) in DATABASE_URL.
"""

from __future__ import annotations

import os

import falcon
import peewee
from playhouse.db_url import connect

database = connect(os.environ["DATABASE_URL"])


class BareCommand(peewee.Model):
    sku = peewee.CharField(max_length=64)
    action = peewee.CharField(max_length=32)
    quantity = peewee.IntegerField()

    class Meta:
        database = database
        table_name = "bench_bare_commands"


class Command:
    def on_post(self, req: falcon.Request, resp: falcon.Response, sku: str, action: str) -> None:
        body = req.get_media()
        quantity = body.get("quantity") if isinstance(body, dict) else None
        if not isinstance(quantity, int):
            raise falcon.HTTPBadRequest(title="quantity must be an integer")
        database.connect(reuse_if_open=True)
        with database.atomic():
            BareCommand.insert(sku=sku, action=action, quantity=quantity).execute()
        resp.media = {"sku": sku, "quantity": quantity}


class Alive:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "alive"}


app = falcon.App()
app.add_route("/warehouse/products/{sku}/{action}", Command())
app.add_route("/livez", Alive())
