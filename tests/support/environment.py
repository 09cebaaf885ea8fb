"""The environment a service process runs with."""

from __future__ import annotations

import os
from collections.abc import Mapping

from cqrs_warehouse.settings import DEFAULT_SLICES, environment_variables
from cqrs_warehouse.slices import load_slices

from .processes import BIN, ROOT

SCHEMAS = ROOT / "schemas"
#: The tests' own slices (tests/slices), which an installation may add.
TEST_SLICES = ("tests.slices.recorders", "tests.slices.returns")

#: The MESSAGE_KEY of every service process of the tests (and of the
#: messages they publish by hand): one installation's processes must share it.
TEST_MESSAGE_KEY = "tests-only-message-key-0123456789abcdef"

#: Every variable the service and its slices read; none may leak in from the
#: runner's environment.
SERVICE_VARIABLES = environment_variables(
    s.settings for s in load_slices([*DEFAULT_SLICES, *TEST_SLICES]) if s.settings is not None
)


def service_env(settings: Mapping[str, str | None] = {}, **more: str | None) -> dict[str, str]:
    """The runner's environment without any service variable, plus the tests'
    MESSAGE_KEY and ``settings`` (one given as None stays unset). PYTHONPATH
    holds the repository root, so that the tests' own slices import in the
    service's processes."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PATH"] = os.pathsep.join((str(BIN), os.environ.get("PATH", "")))
    env["PYTHONUNBUFFERED"] = "1"
    env["SCHEMAS_DIR"] = str(SCHEMAS)
    env["MESSAGE_KEY"] = TEST_MESSAGE_KEY
    for key, value in {**settings, **more}.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
