"""AMQP topic semantics of listener bindings: ``topic_matches`` and ``validate_pattern``."""

import pytest

from cqrs_warehouse.messaging.routing import topic_matches, validate_pattern

SHIPPED_V1 = "Warehouse.Events.ProductQuantityShipped.v1"


@pytest.mark.parametrize(
    ("pattern", "routing_key"),
    [
        # literals
        ("a", "a"),
        ("a.b.c", "a.b.c"),
        # '#' matches zero or more words
        ("#", "a"),
        ("#", "a.b.c"),
        ("#", SHIPPED_V1),
        ("a.#", "a"),
        ("a.#", "a.b"),
        ("a.#", "a.b.c"),
        ("#.b", "b"),
        ("#.b", "a.b"),
        ("#.b", "a.x.y.b"),
        ("a.#.b", "a.b"),
        ("a.#.b", "a.x.b"),
        ("a.#.b", "a.x.y.b"),
        ("a.#.b", "a.b.b"),
        # several '#'
        ("#.#", "a"),
        ("#.#", "a.b.c"),
        ("#.a.#", "a"),
        ("#.a.#", "x.a.y"),
        ("#.a.#", "x.y.a"),
        ("a.#.b.#.c", "a.b.c"),
        ("a.#.b.#.c", "a.x.b.y.c"),
        ("a.#.b.#.c", "a.b.b.c"),
        ("#.a.b", "a.a.b"),
        # '*' matches exactly one word
        ("*", "a"),
        ("a.*", "a.b"),
        ("*.b", "a.b"),
        ("a.*.b", "a.x.b"),
        ("*.*", "a.b"),
        # '*' and '#' mixed
        ("a.*.#", "a.x"),
        ("a.*.#", "a.x.y"),
        ("a.*.#", "a.x.y.z"),
        ("#.*", "a"),
        ("*.#.*", "a.b"),
        ("*.#.*", "a.b.c.d"),
        # the service's own routing keys
        ("Warehouse.Events.#", SHIPPED_V1),
        ("Warehouse.*.*.v1", SHIPPED_V1),
        ("Warehouse.Events.*.v1", SHIPPED_V1),
        ("Warehouse.Events.ProductQuantityShipped.*", SHIPPED_V1),
        ("*.Events.ProductQuantityShipped.v1", SHIPPED_V1),
        ("#.v1", SHIPPED_V1),
        ("#.ProductQuantityShipped.#", SHIPPED_V1),
        (SHIPPED_V1, SHIPPED_V1),
    ],
)
def test_pattern_matches_routing_key(pattern, routing_key):
    assert topic_matches(pattern, routing_key) is True


@pytest.mark.parametrize(
    ("pattern", "routing_key"),
    [
        # literal mismatch
        ("a", "b"),
        ("a.b", "a.c"),
        ("a.b", "a"),
        ("a", "a.b"),
        ("a.b.c", "a.b"),
        # '#' needs its literal neighbours
        ("a.#", "b"),
        ("a.#", "b.a"),
        ("#.b", "b.a"),
        ("a.#.b", "a.x.c"),
        ("a.#.b", "b"),
        ("a.#.b", "a"),
        ("a.#.b", "x.a.b"),
        ("#.a.#", "x.y"),
        ("a.#.b.#.c", "a.c.b"),
        # '*' is exactly one word: never zero, never two
        ("*", "a.b"),
        ("a.*", "a"),
        ("a.*", "a.b.c"),
        ("*.b", "b"),
        ("a.*.b", "a.b"),
        ("a.*.b", "a.x.y.b"),
        # '*' never matches an empty word
        ("a.*.b", "a..b"),
        ("a.*", "a."),
        ("*.a", ".a"),
        # '*' and '#' mixed: a.*.# needs at least one word after a
        ("a.*.#", "a"),
        ("*.#.*", "a"),
        ("*.*", "a"),
        # the service's own routing keys
        ("#.v2", SHIPPED_V1),
        ("Warehouse.*", SHIPPED_V1),
        ("Warehouse.Events.*", SHIPPED_V1),
        ("Warehouse.*.v1", SHIPPED_V1),
        ("Warehouse.Events.ProductQuantityIncreased.*", SHIPPED_V1),
        ("warehouse.events.#", SHIPPED_V1),
        ("Other.#", SHIPPED_V1),
        ("Warehouse.Events.ProductQuantity.v1", SHIPPED_V1),
    ],
)
def test_pattern_does_not_match_routing_key(pattern, routing_key):
    assert topic_matches(pattern, routing_key) is False


@pytest.mark.parametrize(
    "pattern",
    [
        "a",
        "*",
        "#",
        "a.b",
        "a.*.#",
        "#.#",
        "*.*",
        "Warehouse.Events.#",
        "Warehouse.*.*.v1",
        "#.v2",
        "with-dash_and_underscore.x",
    ],
)
def test_valid_pattern_is_accepted(pattern):
    validate_pattern(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ".",
        "a..b",
        ".a",
        "a.",
        "a*",
        "*a",
        "#a",
        "a#",
        "a.b#",
        "a.**",
        "a.##",
        "a.*#",
        None,
        5,
        ["a"],
    ],
)
def test_invalid_pattern_is_refused(pattern):
    with pytest.raises(ValueError):
        validate_pattern(pattern)


def test_refusal_of_an_invalid_pattern_quotes_the_pattern():
    with pytest.raises(ValueError, match=r"a\.b#"):
        validate_pattern("a.b#")
