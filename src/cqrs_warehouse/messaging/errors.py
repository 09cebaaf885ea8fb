"""The messaging error tree. Raised by the messaging core; anyone may catch it.

Driver errors (peewee's, psycopg2's, sqlite3's) are translated into the
``StorageError`` branch where the storage code calls the driver
(``storage.database``), so nothing else inspects a driver exception.

MessagingError
├── SchemaError                  a message does not fit its schema or the limits (never retried)
│   ├── UnknownSchemaError         no schemas/<type>_v<version>.avsc
│   ├── PayloadValidationError     a payload fails its schema (write or read)
│   └── PayloadDecodeError         bytes that are not the schema's Avro binary
├── UntrustedMessageError        a message without a valid signature (never applied nor retried)
├── OutboxError                  the outbox used in a way that could lose messages
│   └── NotInTransactionError      an append outside a transaction
├── StorageError                 the database refused a statement
│   ├── TransientStorageError      nobody's fault, it passes: retried, never dead-lettered
│   │   ├── DatabaseUnavailableError   no connection, or it broke
│   │   │   └── CommitOutcomeUnknownError  it broke during COMMIT: committed or not, unknown
│   │   ├── ConflictError              a deadlock, a serialization failure, a locked SQLite
│   │   └── MissingTableError          a table is missing: `cqrs-warehouse migrate` has not run
│   └── RefusedClaimError          a claim made ahead (or a bet) did not hold
├── RoutingConfigError           listeners.yaml is malformed
├── PublishError                 the broker did not confirm a publish
├── InvalidConsistencyTokenError a token this service did not issue
├── ConsistencyBusyError         too many reads wait for their tokens already
├── RebuildError                 a listener cannot be rebuilt now
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


class UntrustedMessageError(MessagingError):
    """A message that no key of MESSAGE_KEY signed: not from this service's drain.
    Dead-lettered on its first delivery; never applied, never retried."""


class OutboxError(MessagingError):
    """The outbox was used in a way that could lose or corrupt messages."""


class NotInTransactionError(OutboxError):
    """An append was attempted outside a database transaction."""


class StorageError(MessagingError):
    """The database refused a statement (a constraint, a bad statement...)."""


class TransientStorageError(StorageError):
    """A failure that is nobody's fault and passes: the same work succeeds later."""


class DatabaseUnavailableError(TransientStorageError):
    """The database could not be reached, or the connection broke."""


class CommitOutcomeUnknownError(DatabaseUnavailableError):
    """The connection broke while committing: the transaction may have committed
    or not. Only an idempotent retry (the API's Idempotency-Key) is safe."""


class ConflictError(TransientStorageError):
    """The transaction lost a deadlock or a serialization conflict."""


class MissingTableError(TransientStorageError):
    """A table, schema or function the service needs does not exist yet."""


class RefusedClaimError(StorageError):
    """PostgreSQL refused a claim sent ahead of a handler, or a handler's bet:
    the transaction is undone and the message is applied the usual way."""


class RoutingConfigError(MessagingError):
    """listeners.yaml is malformed; the message names the file and the entry."""


class PublishError(MessagingError):
    """The broker refused or did not confirm a publish."""


class InvalidConsistencyTokenError(MessagingError):
    """A consistency token that this service did not issue."""


class ConsistencyBusyError(MessagingError):
    """As many reads as allowed wait for their tokens in this process already."""


class RebuildError(MessagingError):
    """A listener cannot be rebuilt (no reset declared, no archive, the archive lags)."""


class ConfigurationError(MessagingError):
    """The environment asks for something that cannot run."""
