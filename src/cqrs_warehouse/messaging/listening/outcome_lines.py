"""A listener's log lines about what it applied: one line per batch at INFO
(its outcomes counted), one per delivery at DEBUG (``LOG_LEVEL=DEBUG``), the
line that follows one message (docs/decisions/0022-tables-at-scale.md).
Written under the engine's logger, called by the engine only."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..message import Message
from .ordering import Outcome


def log_one(logger: logging.Logger, listener: str, outcome: Outcome, attempt: int) -> None:
    """A batch of one delivery (its fields are the bound context's)."""
    logger.debug("listener %s: %s (attempt %d)", listener, outcome, attempt)
    logger.info("listener %s: 1 delivered: 1 %s (attempt %d)", listener, outcome, attempt)


def log_batch(
    logger: logging.Logger,
    listener: str,
    messages: Sequence[Message],
    outcomes: Sequence[Outcome],
    attempt: int,
) -> None:
    """A batch applied together: ``outcomes[i]`` is that of ``messages[i]``."""
    if logger.isEnabledFor(logging.DEBUG):
        for message, outcome in zip(messages, outcomes, strict=True):
            fields = _fields(listener, message)
            logger.debug("listener %s: %s (attempt %d)", listener, outcome, attempt, extra=fields)
    if logger.isEnabledFor(logging.INFO):
        counts = Counter(str(outcome) for outcome in outcomes)
        logger.info(
            "listener %s: %d delivered: %s (attempt %d)",
            listener,
            len(outcomes),
            ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items())),
            attempt,
        )


def _fields(listener: str, message: Message) -> dict[str, Any]:
    """The context fields of a line about ``message``, as ``context.bound`` would set them."""
    return {
        "correlation_id": message.correlation_id,
        "message_id": message.id,
        "message_type": message.type,
        "listener": listener,
    }
