"""The worker processes' background log writer (cqrs_warehouse.background_logging)."""

from __future__ import annotations

import io
import logging
import threading

from cqrs_warehouse.background_logging import BackgroundWriter, write_in_background
from cqrs_warehouse.messaging import context
from cqrs_warehouse.messaging.context import ContextFilter
from cqrs_warehouse.messaging.testing import eventually


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def isolated_logger(name: str, stream: io.StringIO) -> logging.Logger:
    logger = logging.getLogger(f"tests.background.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(correlation_id)s %(message)s"))
    handler.addFilter(ContextFilter())
    logger.addHandler(handler)
    return logger


def test_lines_from_many_threads_are_all_written_in_each_threads_order_with_its_context():
    stream = CountingStream()
    logger = isolated_logger("threads", stream)
    write_in_background(logger)
    [writer] = logger.handlers
    assert isinstance(writer, BackgroundWriter)

    def log_lines(thread: int) -> None:
        with context.bound(correlation_id=f"c{thread}"):
            for index in range(500):
                logger.info("thread %d line %d", thread, index)

    threads = [threading.Thread(target=log_lines, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def all_written() -> list[str]:
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2000
        return lines

    lines = eventually(all_written, timeout=10)
    for thread in range(4):
        own = [line for line in lines if line.startswith(f"c{thread} ")]
        assert own == [f"c{thread} thread {thread} line {i}" for i in range(500)]
    assert stream.writes < 2000  # several lines per write
    writer.close()


def test_flush_writes_every_queued_line_at_once_and_close_keeps_later_lines():
    stream = CountingStream()
    logger = isolated_logger("flush", stream)
    write_in_background(logger)
    [writer] = logger.handlers
    for index in range(100):
        logger.info("line %d", index)

    writer.flush()
    assert stream.getvalue().splitlines() == [f"None line {i}" for i in range(100)]

    writer.close()
    logger.info("after close")  # written by the logging thread itself
    assert stream.getvalue().splitlines()[-1] == "None after close"
