"""Read-your-writes for a resource: answer once a listener applied the caller's token.

A request may carry a consistency token from a command's response
(``?after=TOKEN`` or the ``X-Consistency-Token`` header); the resource then
answers once the listener it reads from has applied that command's event,
or 503 after CONSISTENCY_TIMEOUT seconds; at once when CONSISTENCY_MAX_WAITING
reads of this process wait already. A token of another shape than the
document's (CONSISTENCY_TOKEN_PATTERN) is a 400 before any decoding or query;
one the commands never issued is a 400 too.
"""

from __future__ import annotations

import re

import falcon

from cqrs_warehouse.messaging.consistency import Consistency
from cqrs_warehouse.messaging.errors import ConsistencyBusyError
from cqrs_warehouse.messaging.metrics import Metrics

from .openapi import CONSISTENCY_TOKEN_PATTERN

_TOKEN = re.compile(CONSISTENCY_TOKEN_PATTERN)


class ReadYourWrites:
    def __init__(
        self,
        consistency: Consistency,
        *,
        listener: str,
        timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.consistency = consistency
        self.metrics = metrics or Metrics()  # counts the outcomes (cqrs_consistent_reads_total)
        self.listener = listener
        self.timeout = timeout

    def wait(self, req: falcon.Request) -> None:
        """Return once the request's token (if any) is applied; raise 503 after the timeout."""
        after, header = req.get_param("after"), req.get_header("X-Consistency-Token")
        for name, given in (("after", after), ("X-Consistency-Token", header)):
            if given is not None and not _TOKEN.fullmatch(given):
                raise falcon.HTTPBadRequest(
                    title="Invalid consistency token.",
                    description=f"{name} must be 1 to 256 characters of A-Z, a-z, 0-9, '-' "
                    "and '_': a consistency_token from a command's answer.",
                )
        token = after or header
        if token is None:
            return
        try:
            applied = self.consistency.wait_for(self.listener, token, self.timeout)
        except ConsistencyBusyError as error:
            self.metrics.count_consistent_read("busy")
            raise falcon.HTTPServiceUnavailable(
                title="Too many waiting reads.",
                description=f"{error}; retry, or read without the token.",
                retry_after=1,
            ) from None
        self.metrics.count_consistent_read("applied" if applied else "timed_out")
        if not applied:
            raise falcon.HTTPServiceUnavailable(
                title="Not consistent yet.",
                description=(
                    f"{self.listener} has not applied the write of that token within "
                    f"{self.timeout:g} s; retry."
                ),
                retry_after=1,
            )
