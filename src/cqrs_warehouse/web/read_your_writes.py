"""Read-your-writes for a resource: answer once a listener applied the caller's token.

A request may carry a consistency token from a command's response
(``?after=TOKEN`` or the ``X-Consistency-Token`` header); the resource then
answers once the listener it reads from has applied that command's event,
or 503 after CONSISTENCY_TIMEOUT seconds; at once when CONSISTENCY_MAX_WAITING
reads of this process wait already. A token the commands never issued is a 400.
"""

from __future__ import annotations

import falcon

from cqrs_warehouse.messaging.consistency import Consistency
from cqrs_warehouse.messaging.errors import ConsistencyBusyError


class ReadYourWrites:
    def __init__(self, consistency: Consistency, *, listener: str, timeout: float) -> None:
        self.consistency = consistency
        self.listener = listener
        self.timeout = timeout

    def wait(self, req: falcon.Request) -> None:
        """Return once the request's token (if any) is applied; raise 503 after the timeout."""
        token = req.get_param("after") or req.get_header("X-Consistency-Token")
        if not token:
            return
        try:
            applied = self.consistency.wait_for(self.listener, token, self.timeout)
        except ConsistencyBusyError as error:
            raise falcon.HTTPServiceUnavailable(
                title="Too many waiting reads.",
                description=f"{error}; retry, or read without the token.",
                retry_after=1,
            ) from None
        if not applied:
            raise falcon.HTTPServiceUnavailable(
                title="Not consistent yet.",
                description=(
                    f"{self.listener} has not applied the write of that token within "
                    f"{self.timeout:g} s; retry."
                ),
                retry_after=1,
            )
