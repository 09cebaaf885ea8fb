"""The patterns the OpenAPI document publishes and the middleware applies."""

from __future__ import annotations

import re

import pytest

from cqrs_warehouse.web import openapi


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("a", True),
        ("!" + "~" * 254, True),
        ('"abc-123"', True),
        ('"' + "k" * 255 + '"', True),
        ("", False),
        ("k" * 256, False),
        ("with space", False),
        ("café", False),
        ('"', False),
        ('""', False),
        ('"unterminated', False),
        ('"in"side"', False),
        ('"back\\slash"', False),
    ],
)
def test_the_idempotency_key_pattern(key, valid):
    assert bool(re.fullmatch(openapi.IDEMPOTENCY_KEY_PATTERN, key)) == valid


@pytest.mark.parametrize(
    ("token", "valid"),
    [("A", True), ("WyJhIiwxXQ", True), ("-_" * 128, True), ("", False), ("A" * 257, False)]
    + [(f"a{c}b", False) for c in "=+/ .\n"],
)
def test_the_consistency_token_pattern(token, valid):
    assert bool(re.fullmatch(openapi.CONSISTENCY_TOKEN_PATTERN, token)) == valid
