"""The listener engine: applies messages to listeners, exactly once and in stream order.

- ``engine``: ``Engine.apply``, the one entry point, and its policy
  (decoding, retries, dead letters, metrics, logging context);
- ``ordering``: inside the listener's transaction, positions, holding and claiming;
- ``actors``: the Dramatiq actors that feed it;
- ``rebuild``: replaying the archive to a listener.
"""

from .engine import Engine
from .ordering import Outcome

__all__ = ["Engine", "Outcome"]
