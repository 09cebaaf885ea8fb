"""The messaging error tree. Raised by the messaging core; anyone may catch it.

MessagingError
├── SchemaError                  a message does not fit the Avro schemas
│   ├── UnknownSchemaError         no schemas/<type>_v<version>.avsc
│   ├── PayloadValidationError     a payload fails its schema (write or read)
│   └── PayloadDecodeError         bytes that are not the schema's Avro binary
├── OutboxError
│   └── NotInTransactionError      outbox append outside a transaction
├── RoutingConfigError           listeners.yaml is malformed
├── PublishError                 the broker did not confirm a publish
└── ConfigurationError           the environment asks for something impossible
"""


class MessagingError(Exception):
    """Root of every error the messaging core raises."""


class SchemaError(MessagingError):
    """A message does not fit the Avro schemas; never retried."""


class UnknownSchemaError(SchemaError):
    """No schema file exists for the message's type and version."""


class PayloadValidationError(SchemaError):
    """A payload does not conform to its schema."""


class PayloadDecodeError(SchemaError):
    """Bytes that cannot be read as the schema's Avro binary."""


class OutboxError(MessagingError):
    """The outbox was used in a way that could lose or corrupt messages."""


class NotInTransactionError(OutboxError):
    """An append was attempted outside a database transaction."""


class RoutingConfigError(MessagingError):
    """listeners.yaml is malformed; the message names the file and the entry."""


class PublishError(MessagingError):
    """The broker refused or did not confirm a publish."""


class ConfigurationError(MessagingError):
    """The environment asks for something that cannot run."""
