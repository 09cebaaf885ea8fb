"""The one place where errors become HTTP answers (always JSON)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import falcon

from ..messaging.errors import (
    CommitOutcomeUnknownError,
    DatabaseUnavailableError,
    InvalidConsistencyTokenError,
    StorageError,
    TransientStorageError,
)

logger = logging.getLogger("cqrs_warehouse.web")


def add_error_handlers(
    app: falcon.App, database: Any, slice_errors: Mapping[type[Exception], int]
) -> None:
    """Falcon tries the most specific handler first: slices' errors map to the
    status they declare, storage errors to 503 or 500; anything else is a 500
    with a JSON body and a log line."""
    app.set_error_serializer(_json_error)
    # Falcon answers 400 to a body its JSON handler cannot parse (a ValueError:
    # bad JSON, bad UTF-8); a body nested past the parser's depth is one too.
    app.req_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(loads=_loads)
    app.add_error_handler(Exception, _unexpected_error)
    for error_class, status in slice_errors.items():
        app.add_error_handler(error_class, _domain_error(status))
    app.add_error_handler(InvalidConsistencyTokenError, _invalid_token)

    def storage_error(
        req: falcon.Request, resp: falcon.Response, error: StorageError, params: Any
    ) -> None:
        logger.error("database error on %s %s: %r", req.method, req.path, error)
        if isinstance(error, DatabaseUnavailableError) and not database.in_transaction():
            # (Inside the Idempotency middleware's transaction, its rollback fails
            # on the broken connection and brings the error here again.)
            database.discard_broken_connection()
        if isinstance(error, CommitOutcomeUnknownError):
            raise falcon.HTTPServiceUnavailable(
                title="Outcome unknown.",
                description=(
                    "The connection to the database broke while committing: the request may "
                    "or may not have been applied. Retry it with the same Idempotency-Key, "
                    "which applies it exactly once."
                ),
                retry_after=1,
            )
        if isinstance(error, TransientStorageError):
            raise falcon.HTTPServiceUnavailable(
                title="Database unavailable.",
                description="The database could not be reached; nothing was changed. Try again.",
                retry_after=1,
            )
        raise falcon.HTTPInternalServerError(
            title="Database error.", description="The database refused the request; see the logs."
        )

    app.add_error_handler(StorageError, storage_error)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def _json_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    # Errors are JSON whatever the client accepts (Falcon would send XML to a
    # browser, and nothing to a client that accepts only HTML).
    resp.data = error.to_json()
    resp.content_type = falcon.MEDIA_JSON


def _domain_error(status: int) -> Any:
    def handle(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
        raise falcon.HTTPError(
            falcon.code_to_http_status(status),
            title=getattr(error, "title", "Invalid request."),
            description=str(error),
        )

    return handle


def _invalid_token(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: Any
) -> None:
    raise falcon.HTTPBadRequest(title="Invalid consistency token.", description=str(error))


def _unexpected_error(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: Any
) -> None:
    if isinstance(error, falcon.HTTPError):
        raise error
    logger.exception("unexpected error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(
        title="Internal error.", description="An unexpected error occurred; see the logs."
    )
