"""listeners.yaml: load it, validate it, and match AMQP topic patterns.

Used by the runtime (listener actors, bindings), by the in-process transport
(to route without RabbitMQ) and by the listener engine (to skip a message
its bindings no longer match). The file is the only place where routing is
configured.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import RoutingConfigError
from .handler import FunctionHandler, Handler

_LISTENER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_EXCHANGE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_HANDLER_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_LITERAL_WORD = re.compile(r"^[^*#.]+$")


# --- topic patterns ---------------------------------------------------------


def validate_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is an AMQP topic binding key.

    Words are separated by dots; a word is ``*``, ``#`` or a literal that
    holds neither. Empty words (``a..b``, a leading or trailing dot) are
    refused: no routing key of ours has one, so such a binding is a typo.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a binding must be a non-empty string")
    for word in pattern.split("."):
        if word in ("*", "#"):
            continue
        if not word:
            raise ValueError(f"binding {pattern!r} has an empty word")
        if not _LITERAL_WORD.fullmatch(word):
            raise ValueError(
                f"binding {pattern!r}: '*' and '#' must stand alone as a word, not in {word!r}"
            )


@lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic semantics: ``*`` is exactly one word, ``#`` zero or more."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # Iterative, with one backtracking point per '#', like glob matching.
    p = w = 0
    star_p, star_w = -1, 0
    while w < len(words):
        if p < len(pattern) and pattern[p] == "#":
            star_p, star_w = p, w
            p += 1
        elif p < len(pattern) and (
            pattern[p] == words[w] or (pattern[p] == "*" and words[w] != "")
        ):
            p += 1
            w += 1
        elif star_p >= 0:
            star_w += 1
            p, w = star_p + 1, star_w
        else:
            return False
    while p < len(pattern) and pattern[p] == "#":
        p += 1
    return p == len(pattern)


# --- listeners.yaml ---------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How a listener's failing message is retried before it is dead-lettered."""

    max_attempts: int = 5
    min_delay: float = 1.0
    max_delay: float = 30.0


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    handler_path: str
    handler: Handler = field(compare=False, repr=False)
    bindings: tuple[str, ...]
    retry: RetryPolicy = RetryPolicy()
    #: Empties the listener's own tables, for ``cqrs-warehouse rebuild``: the
    #: entry's ``reset``, else the handler's own.
    reset: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    @property
    def reads(self) -> Mapping[str, int]:
        """The version the handler reads, per message type it declared."""
        return self.handler.reads

    @property
    def actor_name(self) -> str:
        return actor_name(self.name)

    def accepts(self, routing_key: str) -> bool:
        return _accepts(self.bindings, routing_key)

    def matching_binding(self, routing_key: str) -> str | None:
        return next((b for b in self.bindings if topic_matches(b, routing_key)), None)


def actor_name(listener: str) -> str:
    """The Dramatiq actor of a listener."""
    return f"listener.{listener}"


@lru_cache(maxsize=4096)
def _accepts(bindings: tuple[str, ...], routing_key: str) -> bool:
    # Asked for every message and each of its predecessors' keys, of which
    # there are few kinds: remembered rather than matched again.
    return any(topic_matches(binding, routing_key) for binding in bindings)


@dataclass(frozen=True)
class Exchange:
    name: str
    type: str = "topic"


@dataclass(frozen=True)
class RoutingConfig:
    source: str
    exchange: Exchange
    listeners: tuple[ListenerSpec, ...]

    def listeners_for(self, routing_key: str) -> list[ListenerSpec]:
        return [spec for spec in self.listeners if spec.accepts(routing_key)]

    def listener(self, name: str) -> ListenerSpec:
        for spec in self.listeners:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def listeners_of(self, handler_class: type) -> list[ListenerSpec]:
        """The listeners whose handler is a ``handler_class``."""
        return [spec for spec in self.listeners if isinstance(spec.handler, handler_class)]


#: Builds a listener's Handler from what its entry's ``handler`` path names.
HandlerFactory = Callable[[Any], Handler]


def default_handler(named: Any) -> Handler:
    """A Handler class built with no argument; a function wrapped."""
    if isinstance(named, type) and issubclass(named, Handler):
        return named()
    return FunctionHandler(named)


def load_routing(path: Path | str, build: HandlerFactory = default_handler) -> RoutingConfig:
    """Read and validate listeners.yaml; import every handler it names and
    ``build`` it (the runtime gives handlers their slice's services)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RoutingConfigError(f"{path}: cannot read the file: {error.strerror}") from error
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RoutingConfigError(f"{path}: not valid YAML: {error}") from error
    return parse_routing(document, source=str(path), build=build)


def parse_routing(
    document: Any, *, source: str, build: HandlerFactory = default_handler
) -> RoutingConfig:
    def fail(where: str, problem: str) -> RoutingConfigError:
        return RoutingConfigError(f"{source}: {where}: {problem}")

    if not isinstance(document, Mapping):
        raise fail("top level", "must be a mapping with the keys 'exchange' and 'listeners'")
    _check_keys(
        document, required={"exchange", "listeners"}, optional=set(), where="top level", fail=fail
    )

    exchange_doc = document["exchange"]
    if not isinstance(exchange_doc, Mapping):
        raise fail("exchange", "must be a mapping with 'name' and 'type'")
    _check_keys(exchange_doc, required={"name"}, optional={"type"}, where="exchange", fail=fail)
    name = exchange_doc["name"]
    if not isinstance(name, str) or not _EXCHANGE_NAME.fullmatch(name):
        raise fail("exchange.name", f"{name!r} is not a valid exchange name")
    exchange_type = exchange_doc.get("type", "topic")
    if exchange_type != "topic":
        raise fail("exchange.type", f"only 'topic' is supported, not {exchange_type!r}")

    listeners_doc = document["listeners"]
    if not isinstance(listeners_doc, list):
        raise fail("listeners", "must be a list of listener entries")
    listeners: list[ListenerSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(listeners_doc):
        spec = _parse_listener(entry, index, fail, build)
        if spec.name in seen:
            raise fail(f"listeners[{index}] ({spec.name})", "duplicate listener name")
        seen.add(spec.name)
        listeners.append(spec)
    return RoutingConfig(source=source, exchange=Exchange(name=name), listeners=tuple(listeners))


def _parse_listener(
    entry: Any, index: int, fail: Callable[[str, str], Exception], build: HandlerFactory
) -> ListenerSpec:
    where = f"listeners[{index}]"
    if not isinstance(entry, Mapping):
        raise fail(where, "must be a mapping with 'name', 'handler' and 'bindings'")
    if isinstance(entry.get("name"), str):
        where = f"{where} ({entry['name']})"
    _check_keys(
        entry,
        required={"name", "handler", "bindings"},
        optional={"retry", "reset"},
        where=where,
        fail=fail,
    )

    name = entry["name"]
    if not isinstance(name, str) or not _LISTENER_NAME.fullmatch(name):
        raise fail(
            where, f"name {name!r} must be letters, digits and '_', not starting with a digit"
        )

    bindings = entry["bindings"]
    if not isinstance(bindings, list) or not bindings:
        raise fail(where, "bindings must be a non-empty list of topic patterns")
    for binding in bindings:
        try:
            validate_pattern(binding)
        except ValueError as error:
            raise fail(where, f"invalid binding: {error}") from None

    handler_path = entry["handler"]
    try:
        handler = build(_import_handler(handler_path, where, fail))
    except RoutingConfigError:
        raise
    except Exception as error:
        raise fail(where, f"handler {handler_path!r} cannot be built: {error!r}") from error
    retry = _parse_retry(entry.get("retry"), where, fail)
    reset = handler.reset if handler.resettable else None
    if "reset" in entry:
        reset = _import_handler(entry["reset"], f"{where} reset", fail)
    return ListenerSpec(
        name=name,
        handler_path=handler_path,
        handler=handler,
        bindings=tuple(bindings),
        retry=retry,
        reset=reset,
    )


def _import_handler(path: Any, where: str, fail: Callable[[str, str], Exception]) -> Callable:
    if not isinstance(path, str) or not _HANDLER_PATH.fullmatch(path):
        raise fail(where, f"handler {path!r} must have the form 'module.path:callable'")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise fail(where, f"handler {path!r} cannot be imported: {error!r}") from error
    handler = getattr(module, attribute, None)
    if handler is None:
        raise fail(where, f"handler {path!r}: module {module_name!r} has no {attribute!r}")
    if not callable(handler):
        raise fail(where, f"handler {path!r} is not callable")
    return handler


def _parse_retry(doc: Any, where: str, fail: Callable[[str, str], Exception]) -> RetryPolicy:
    if doc is None:
        return RetryPolicy()
    where = f"{where} retry"
    if not isinstance(doc, Mapping):
        raise fail(where, "must be a mapping of max_attempts, min_delay and max_delay")
    _check_keys(
        doc,
        required=set(),
        optional={"max_attempts", "min_delay", "max_delay"},
        where=where,
        fail=fail,
    )
    default = RetryPolicy()
    attempts = doc.get("max_attempts", default.max_attempts)
    min_delay = doc.get("min_delay", default.min_delay)
    max_delay = doc.get("max_delay", default.max_delay)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise fail(where, f"max_attempts must be an integer from 1 to 100, not {attempts!r}")
    for key, value in (("min_delay", min_delay), ("max_delay", max_delay)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 86400:
            raise fail(where, f"{key} must be a number of seconds from 0 to 86400, not {value!r}")
    if min_delay > max_delay:
        raise fail(where, f"min_delay ({min_delay}) is greater than max_delay ({max_delay})")
    return RetryPolicy(
        max_attempts=attempts, min_delay=float(min_delay), max_delay=float(max_delay)
    )


def _check_keys(
    doc: Mapping,
    *,
    required: set[str],
    optional: set[str],
    where: str,
    fail: Callable[[str, str], Exception],
) -> None:
    unknown = sorted(str(k) for k in doc if k not in required | optional)
    if unknown:
        raise fail(where, f"unknown keys {unknown}")
    missing = sorted(required - set(doc))
    if missing:
        raise fail(where, f"missing keys {missing}")
