"""cqrs-warehouse: event-driven CQRS with a transactional outbox.

``messaging`` is the domain-free core; ``warehouse`` is a slice built on it.
``runtime.build`` wires them for every process kind; nothing connects at
import time. ARCHITECTURE.md at the repository's root is the map.
"""
