"""Idempotent command POSTs: the ``Idempotency-Key`` header (an IETF HTTP API draft).

A POST that carries the header runs in a transaction this middleware opens
(``Outbox.transaction()``; the command's own nests in it as a savepoint). The
key is claimed first and the answer stored last in that transaction, so the
key commits if and only if the command's effect does. A retry of the same
request (method, path and canonical JSON body) gets the stored answer with
``Idempotent-Replayed: true``; another request under the same key is a 422.
On PostgreSQL a concurrent claim of the same key waits for the first one's
transaction (bounded: then a 409); on SQLite writers take turns anyway.
Answers below 500 are stored; a 5xx rolls everything back. Expired keys are
taken over by a new claim, and each claim deletes a few expired rows.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from typing import Any, cast

import falcon
import peewee

from ..messaging.errors import ConflictError
from ..messaging.outbox import Outbox
from ..messaging.storage import Statement
from ..messaging.storage.models import IdempotencyKey, utcnow
from .openapi import IDEMPOTENCY_KEY_PATTERN

_WSGI_HEADER = "HTTP_IDEMPOTENCY_KEY"
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
#: How long a claim waits for a transaction holding the same key (PostgreSQL's
#: lock_timeout); a command's transaction lasts milliseconds.
CLAIM_WAIT = "5s"
#: Expired rows each claim deletes: more than one per claim keeps the table bounded.
CLEANUP_BATCH = 10

_T0 = datetime.datetime(2000, 1, 1)

# Take the key: a new row, or one that expired; no row when it is live (on
# PostgreSQL, once the transaction that holds it has ended).
_CLAIM = Statement(
    lambda key, request, expires_at, now: (
        IdempotencyKey.insert(key=key, request=request, expires_at=expires_at)
        .on_conflict(
            conflict_target=[IdempotencyKey.key],
            update={
                IdempotencyKey.request: peewee.EXCLUDED.request,
                IdempotencyKey.expires_at: peewee.EXCLUDED.expires_at,
                IdempotencyKey.status: None,
                IdempotencyKey.body: None,
                IdempotencyKey.consistency_token: None,
            },
            where=(IdempotencyKey.expires_at <= now),
        )
        .returning(IdempotencyKey.key)
    ),
    "\x01key",
    "\x01request",
    _T0 + datetime.timedelta(days=1),
    _T0,
)
_ANSWER = Statement(
    lambda status, body, token, key: IdempotencyKey.update(
        status=status, body=body, consistency_token=token
    ).where(IdempotencyKey.key == key),
    1_000_003,
    "\x01body",
    "\x01token",
    "\x01key",
)


def _delete_expired(now: datetime.datetime) -> peewee.Query:
    expired = (
        IdempotencyKey.select(IdempotencyKey.key)
        .where(IdempotencyKey.expires_at <= now)
        .order_by(IdempotencyKey.expires_at)
        .limit(CLEANUP_BATCH)
    )
    if getattr(IdempotencyKey._meta.database, "for_update", False):
        expired = expired.for_update(skip_locked=True)  # concurrent claims skip each other's
        # key = ANY(ARRAY(...)): one primary-key lookup per key whatever the
        # statistics say; IN (...) may scan the table (docs/decisions/0022).
        keys = peewee.fn.ARRAY(expired)
        return IdempotencyKey.delete().where(IdempotencyKey.key == peewee.fn.ANY(keys))
    return IdempotencyKey.delete().where(IdempotencyKey.key.in_(expired))


_DELETE_EXPIRED = Statement(_delete_expired, _T0)


def parse_key(raw: str) -> str:
    """The key a header value names (the document's IDEMPOTENCY_KEY_PATTERN):
    1 to 255 visible ASCII characters, or the draft's sf-string of them
    without escapes (``"abc"`` means ``abc``). Else a 400."""
    value = raw.strip(" \t")
    if not _KEY.fullmatch(value):
        raise falcon.HTTPBadRequest(
            title="Invalid Idempotency-Key.",
            description="Idempotency-Key must be 1 to 255 visible ASCII characters, "
            'or such characters (no \\ or ") in double quotes.',
        )
    return value[1:-1] if value.startswith('"') else value


def fingerprint(req: falcon.Request) -> str:
    """SHA-256 of the method, the path and the body as canonical JSON (sorted
    keys, no spaces): a retry that formats its JSON otherwise is the same request."""
    body = json.dumps(req.get_media(), sort_keys=True, separators=(",", ":"))
    text = f"{req.method} {req.path}\n{body}"
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


class _Undone(Exception):
    """Rolls the request's transaction back (its answer was a 5xx)."""


class Idempotency:
    """Falcon middleware; costs one header lookup on a POST without the header."""

    def __init__(self, outbox: Outbox, ttl: float) -> None:
        self.outbox = outbox
        self.ttl = datetime.timedelta(seconds=ttl)

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict
    ) -> None:
        raw = req.env.get(_WSGI_HEADER)  # (a quarter of get_header's cost: the hot path)
        if raw is None or req.method != "POST":
            return
        key = parse_key(raw)
        request = fingerprint(req)
        now = utcnow()
        database = IdempotencyKey._meta.database
        transaction = self.outbox.transaction()
        transaction.__enter__()
        try:
            if database.has_schemas:  # PostgreSQL: bound the wait for a key held
                database.defer(f"SET LOCAL lock_timeout = '{CLAIM_WAIT}'")
            claimed = _CLAIM.rows(key, request, now + self.ttl, now)
            if claimed:
                _DELETE_EXPIRED.run(now, defer=True)
                req.context.idempotency = (transaction, key)
                return
            stored = IdempotencyKey.get(IdempotencyKey.key == key)
        except ConflictError as error:
            transaction.__exit__(type(error), error, error.__traceback__)
            raise falcon.HTTPConflict(
                title="Request in progress.",
                description=f"A request with Idempotency-Key {key!r} is still in progress.",
                headers={"Retry-After": "1"},
            ) from error
        except BaseException as error:
            transaction.__exit__(type(error), error, error.__traceback__)
            raise
        transaction.__exit__(None, None, None)
        if stored.request != request:
            raise falcon.HTTPUnprocessableEntity(
                title="Idempotency-Key reused.",
                description=(
                    f"Idempotency-Key {key!r} was used for another request (method, path "
                    "or body); use a new key for a new request."
                ),
            )
        resp.status = cast(int, stored.status)  # set in the transaction that committed it
        resp.content_type = falcon.MEDIA_JSON
        resp.data = None if stored.body is None else stored.body.encode()
        if stored.consistency_token is not None:
            resp.set_header("X-Consistency-Token", stored.consistency_token)
        resp.set_header("Idempotent-Replayed", "true")
        resp.complete = True

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        held = req.context.get("idempotency")
        if held is None:
            return
        transaction, key = held
        del req.context.idempotency
        status = resp.status_code
        if status >= 500:  # nothing commits; a retry runs again
            transaction.__exit__(_Undone, _Undone(), None)
            return
        body = resp.render_body()  # falcon's JSON, UTF-8
        try:
            _ANSWER.run(
                status,
                None if body is None else body.decode(),
                resp.get_header("X-Consistency-Token"),
                key,
                defer=True,
            )
        except BaseException as error:
            transaction.__exit__(type(error), error, error.__traceback__)
            raise
        try:
            transaction.__exit__(None, None, None)
        except Exception:
            resp.delete_header("X-Consistency-Token")  # of a write that may not stand
            raise
