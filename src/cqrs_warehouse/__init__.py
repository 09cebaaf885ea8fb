"""cqrs-warehouse: event-driven CQRS with a transactional outbox.

Two slices live here: ``messaging`` (the domain-free core: messages, Avro
schemas, the outbox, the drain, YAML routing and listener actors) and
``warehouse`` (the domain). ``bootstrap`` wires them; nothing connects at
import time.
"""
