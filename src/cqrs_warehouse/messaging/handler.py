"""What a listener's handler is to the listener engine. Slices subclass ``Handler``.

listeners.yaml names a handler by ``module.path:callable``: either a plain
function ``handler(message)`` (wrapped in ``FunctionHandler``), or a
``Handler`` subclass, which the runtime builds with its slice's services
(``HandlerClass(services)``; with no argument outside any slice).

The engine calls ``apply`` for one message and ``apply_batch`` for the
messages of a batch that are due, in one transaction; both must have the
same effect, which must be undone with that transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from .context import of_message
from .message import READS_ATTRIBUTE, Message


class Handler:
    #: The version each message type is read in; a message written with another
    #: version is resolved into it first. Types not named come as written.
    reads: ClassVar[Mapping[str, int]] = {}
    #: Whether everything it does is undone with its transaction (it leaves
    #: anything else, a log line, a call out, to ``Outbox.after_commit``). The
    #: engine may then apply a message before it knows the message is next
    #: (``apply_ahead``, docs/decisions/0003-claiming-ahead.md).
    rollback_safe: ClassVar[bool] = False
    #: Whether readers wait on what it applied (read-your-writes): the
    #: engine then announces each position it applies.
    read_your_writes: ClassVar[bool] = False

    def apply(self, message: Message) -> None:
        raise NotImplementedError

    def apply_batch(self, messages: Sequence[Message]) -> None:
        """The messages that are due in a batch, in the order ``apply`` would
        have had them (each stream's by position): override it to write them
        with one statement per table. Each carries its ``correlation_id``:
        wrap what is done for one message in ``context.of_message(message)``."""
        for message in messages:
            with of_message(message):
                self.apply(message)

    def apply_ahead(self, message: Message) -> None:
        """``apply``, run before the message is known to be next in its stream
        (only if ``rollback_safe``): if it is not, the transaction is undone
        and ``apply`` is called instead. A handler may bet on the common case
        here, with a statement that refuses the transaction where the bet is
        lost (``Statement.run(..., must_exceed=...)``)."""
        self.apply(message)

    def reset(self) -> None:
        """Empty the handler's own tables, for ``cqrs-warehouse rebuild``. A
        handler that does not override it cannot be rebuilt."""
        raise NotImplementedError

    @property
    def resettable(self) -> bool:
        return type(self).reset is not Handler.reset

    @property
    def name(self) -> str:
        return f"{type(self).__module__}:{type(self).__qualname__}"


class FunctionHandler(Handler):
    """A plain function ``handler(message)`` as a Handler; ``@reads`` declares what it reads."""

    def __init__(self, function: Callable[[Message], Any]) -> None:
        self.function = function
        self.reads = dict(getattr(function, READS_ATTRIBUTE, {}))  # type: ignore[misc]

    def apply(self, message: Message) -> None:
        self.function(message)

    @property
    def name(self) -> str:
        return f"{self.function.__module__}:{self.function.__qualname__}"
