"""Waiting for asynchronous work: with a deadline, never a bare sleep.

``eventually`` (the messaging core's) retries an assertion until it passes;
what is here builds on it.
"""

from __future__ import annotations

from collections.abc import Iterable

import requests

from cqrs_warehouse.messaging.testing import eventually

from .processes import Service

__all__ = ["eventually", "wait_for_http"]


def wait_for_http(
    url: str, services: Iterable[Service] = (), *, timeout: float = 45, status: int = 200
) -> requests.Response:
    """Until ``url`` answers ``status``; at once if one of ``services`` exits meanwhile."""
    services = list(services)

    def answered() -> requests.Response:
        for service in services:
            if service.returncode() is not None:
                raise RuntimeError(
                    f"{service.name} exited with code {service.returncode()} before {url} "
                    f"answered; its output:\n{service.output()[-5000:]}"
                )
        try:
            response = requests.get(url, timeout=2)
        except requests.RequestException as error:
            raise AssertionError(f"{url}: {error!r}") from error
        assert response.status_code == status, f"{url}: {response.status_code} {response.text}"
        return response

    return eventually(answered, timeout=timeout, interval=0.1)
