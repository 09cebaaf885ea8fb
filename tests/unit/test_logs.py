"""``logs.RedactCredentials``: the password of any URL in a log line (message,
arguments, traceback) is masked. No I/O. (What the running services log: the
processes tier.)"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

import pytest

from cqrs_warehouse.logs import RedactCredentials, service_level
from cqrs_warehouse.messaging.errors import ConfigurationError
from tests.support.services import unique_name


def formatted(message: str, *args: Any, exc_info: Any = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(unique_name("redact"))
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error(message, *args, exc_info=exc_info)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql://postgres:s3cret@127.0.0.1:5432/db",
            "postgresql://postgres:***@127.0.0.1:5432/db",
        ),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("postgresql+pool://u:p%40ss@db/x", "postgresql+pool://u:***@db/x"),
        ("amqps://:token@broker/vhost", "amqps://:***@broker/vhost"),
        ("postgresql://postgres@127.0.0.1/db", "postgresql://postgres@127.0.0.1/db"),
        ("sqlite:///var/lib/cw.db", "sqlite:///var/lib/cw.db"),
    ],
)
def test_redact_credentials_masks_the_password_of_a_url_in_the_message(url, masked):
    assert formatted(f"connecting to {url} now") == f"connecting to {masked} now\n"


def test_redact_credentials_masks_urls_in_the_arguments_and_several_per_line():
    line = formatted(
        "database %s, broker %s",
        "postgresql://postgres:one@h/db",
        "amqp://guest:two@h:5672/",
    )
    assert line == "database postgresql://postgres:***@h/db, broker amqp://guest:***@h:5672/\n"


def test_redact_credentials_leaves_other_lines_and_their_arguments_alone():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d rows in %s", (3, "x"), None)
    assert RedactCredentials().filter(record) is True
    assert (record.msg, record.args) == ("%d rows in %s", (3, "x"))


def test_redact_credentials_masks_a_password_in_a_logged_exception():
    try:
        raise RuntimeError("cannot reach postgresql://postgres:hunter2@db:5432/x")
    except RuntimeError:
        line = formatted("lost the connection", exc_info=sys.exc_info())
    assert "lost the connection" in line
    assert "hunter2" not in line, line


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", logging.INFO), ("debug", logging.DEBUG), (" WARNING ", logging.WARNING)],
)
def test_log_level_sets_the_level_of_the_services_own_lines(monkeypatch, raw, expected):
    monkeypatch.setenv("LOG_LEVEL", raw)
    assert service_level() == expected


def test_a_log_level_that_is_no_level_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    with pytest.raises(ConfigurationError, match="LOG_LEVEL='CHATTY' must be one of DEBUG"):
        service_level()
