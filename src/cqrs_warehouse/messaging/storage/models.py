"""The messaging core's tables, and the base of every slice's models.

Models name no database: the runtime binds each slice's models to the one it
opened, in the slice's PostgreSQL schema (``slices.Store``). Only the
messaging core reads or writes these tables.
"""

from __future__ import annotations

import datetime
import json

import peewee

from ..message import Message
from ..schemas import SchemaRegistry


def utcnow() -> datetime.datetime:
    """Now, in UTC, as the naive timestamp the tables hold."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def qualified_name(model: type[peewee.Model]) -> str:
    """The model's table as SQL: "schema"."table" or "table"."""
    schema = model._meta.schema
    table = f'"{model._meta.table_name}"'
    return f'"{schema}".{table}' if schema else table


class Model(peewee.Model):
    """Base of every slice's models: table names as written, bound by the runtime."""

    class Meta:
        legacy_table_names = False


class OutboxRecord(Model):
    """A message waiting to be published."""

    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=36, unique=True)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()
    payload = peewee.BlobField()
    stream = peewee.CharField(max_length=255, null=True)
    position = peewee.BigIntegerField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    correlation_id = peewee.CharField(max_length=64, null=True)
    predecessors = peewee.TextField(null=True)
    traceparent = peewee.CharField(max_length=64, null=True)  # the W3C trace context (tracing.py)
    tracestate = peewee.CharField(max_length=512, null=True)

    class Meta:
        table_name = "messaging_outbox"


class StreamHead(Model):
    """The last position of each routing key in each stream (the write side's)."""

    stream = peewee.CharField(max_length=255)
    routing_key = peewee.CharField(max_length=255)
    position = peewee.BigIntegerField()

    class Meta:
        table_name = "messaging_stream_heads"
        primary_key = peewee.CompositeKey("stream", "routing_key")


class ProcessedMessage(Model):
    """Ids of messages without a stream position that each listener applied."""

    listener = peewee.CharField(max_length=100)
    message_id = peewee.CharField(max_length=36)
    applied_at = peewee.DateTimeField(default=utcnow, index=True)  # pruned after a retention

    class Meta:
        table_name = "messaging_processed_messages"
        primary_key = peewee.CompositeKey("listener", "message_id")


class StreamPosition(Model):
    """The position of the last message of each stream a listener applied."""

    listener = peewee.CharField(max_length=100)
    stream = peewee.CharField(max_length=255)
    position = peewee.BigIntegerField()
    held_count = peewee.IntegerField(default=0, column_name="held")  # a hint, see positions.py

    class Meta:
        table_name = "messaging_stream_positions"
        primary_key = peewee.CompositeKey("listener", "stream")


class HeldMessage(Model):
    """A message that arrived before its predecessor in its stream."""

    listener = peewee.CharField(max_length=100)
    stream = peewee.CharField(max_length=255)
    position = peewee.BigIntegerField()
    message_id = peewee.CharField(max_length=36)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()  # the version the listener reads
    written_version = peewee.IntegerField(null=True)  # when it was written with another
    payload = peewee.BlobField()
    predecessors = peewee.TextField(null=True)
    required = peewee.BigIntegerField()  # the position that must be applied first
    held_at = peewee.DateTimeField(default=utcnow)
    correlation_id = peewee.CharField(max_length=64, null=True)
    traceparent = peewee.CharField(max_length=64, null=True)
    tracestate = peewee.CharField(max_length=512, null=True)

    class Meta:
        table_name = "messaging_held_messages"
        primary_key = peewee.CompositeKey("listener", "stream", "position")

    def to_message(self, registry: SchemaRegistry) -> Message:
        """The held message, as it was handed to the listener that held it."""
        return Message(
            id=self.message_id,
            type=self.type,
            schema_version=self.schema_version,
            payload=registry.decode(self.type, self.schema_version, bytes(self.payload)),
            stream=self.stream,
            position=self.position,
            predecessors=json.loads(self.predecessors) if self.predecessors else None,
            written_version=self.written_version,
            correlation_id=self.correlation_id,
            traceparent=self.traceparent,
            tracestate=self.tracestate,
        )


class IdempotencyKey(Model):
    """A command's Idempotency-Key and its first answer, committed with the command's effect."""

    key = peewee.CharField(max_length=255, primary_key=True)
    request = peewee.CharField(max_length=64)  # SHA-256 of the method, path and canonical body
    status = peewee.IntegerField(null=True)  # the answer, stored before the commit
    body = peewee.TextField(null=True)  # JSON
    consistency_token = peewee.TextField(null=True)
    expires_at = peewee.DateTimeField(index=True)

    class Meta:
        table_name = "messaging_idempotency_keys"
