"""Log lines written by a thread of their own, many per write. Used by ``worker_setup``.

A worker process logs a line per message published and per message applied;
written one by one, each line is a system call that hands the GIL over
(docs/decisions/0009-background-log-writer.md).

``BackgroundWriter`` takes a handler's place: the line is formatted in the
thread that logs (so the context fields and filters see that thread), queued
in memory, and a writer thread writes everything queued so far in one go.
The standard library's QueueHandler/QueueListener moves the writing off the
logging thread but still writes one record at a time, which is what costs.

The price: a line is written up to FLUSH_INTERVAL after it was logged, and a
process killed with SIGKILL loses the lines of that last instant; at exit
and on ``flush`` everything is written. If the writer falls far behind,
logging threads write themselves.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import IO, Any

from dramatiq.middleware import Middleware

#: Lines queued beyond which a logging thread writes them itself (back pressure).
MAX_PENDING = 20_000
#: Seconds between the writer's rounds: the longest a line waits to be written.
#: (It is not woken per line: waking a thread costs the logging thread more
#: than the line itself; docs/decisions/0009-background-log-writer.md.)
FLUSH_INTERVAL = 0.02


class BackgroundWriter(logging.Handler):
    def __init__(self, target: logging.StreamHandler[IO[str]]) -> None:
        super().__init__(target.level)
        self.stream = target.stream
        self.terminator = target.terminator
        self.setFormatter(target.formatter)
        for log_filter in target.filters:
            self.addFilter(log_filter)
        self._pending: deque[str] = deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time, lines in order
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        if self._closed or len(self._pending) > MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write every queued line now."""
        with self._write_lock:
            lines = []
            while self._pending:
                lines.append(self._pending.popleft())
            if lines:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except Exception:
                    # The stream is gone (the parent process exited): nothing
                    # left to write to. The standard handlers report this on
                    # stderr, which is that same stream.
                    pass

    def close(self) -> None:
        self._closed = True
        self.flush()
        self._wake.set()
        super().close()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL)  # (set only by close)
            self.flush()


def write_in_background(logger: logging.Logger | None = None) -> None:
    """Replace ``logger``'s (default: the root's) stream handlers by background writers."""
    logger = logger or logging.getLogger()
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            logger.removeHandler(handler)
            logger.addHandler(BackgroundWriter(handler))


class FlushLogsAtShutdown(Middleware):
    """Writes what is queued once the worker has stopped: Dramatiq then closes
    the pipe the lines go through, before the interpreter's exit would."""

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        for handler in logging.getLogger().handlers:
            handler.flush()
