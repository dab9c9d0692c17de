//! The one error type of the library, with stable machine-readable codes.
//!
//! Every fallible call returns [`Error`]. Match on the variant in Rust, or use [`Error::code`] for a
//! stable string (`"SHARD_NOT_FOUND"`, ...) to put in logs and HTTP responses; codes never change
//! meaning once published. Messages say what went wrong and what to do about it.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The largest integer magnitude that survives a trip through D1 (JavaScript `Number`) exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Everything that can go wrong in collegedb.
///
/// The enum is `#[non_exhaustive]`: new failure kinds may be added in minor releases, so keep a
/// wildcard arm, or match on [`Error::code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A shard name that the configuration does not contain.
    #[error("shard `{shard}` is not configured; known shards: {known}")]
    ShardNotFound {
        /// The name that was asked for.
        shard: String,
        /// The configured shard names, comma-separated.
        known: String,
    },

    /// A shard key whose canonical bytes exceed [`crate::MAX_KEY_BYTES`].
    #[error(
        "shard key is {len} bytes; keys are limited to {max} bytes (the Cloudflare KV key limit): use a shorter identifier or a hash of it"
    )]
    KeyTooLarge {
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A shard key that can never identify a row (for example the empty string).
    #[error("invalid shard key: {reason}")]
    KeyInvalid {
        /// Why the key was refused.
        reason: &'static str,
    },

    /// A value of a `#[sharded(unique)]` column that cannot be kept in the directory (too long,
    /// or empty).
    #[error("invalid value for the unique column `{table}.{column}`: {reason}")]
    UniqueValueInvalid {
        /// The model's table.
        table: String,
        /// The unique column.
        column: String,
        /// Why, and what to do.
        reason: String,
    },

    /// An integer D1 cannot carry exactly (beyond ±(2^53 - 1)), or one that does not fit the
    /// Rust type it is read into.
    #[error(
        "integer {value} is out of range: {reason}; store it as TEXT (a String field) if you need all 64 bits"
    )]
    IntegerOutOfRange {
        /// The offending value, as text (it may not fit an `i64`).
        value: String,
        /// Which limit it broke.
        reason: &'static str,
    },

    /// A value that cannot be stored without changing it (NaN, which SQLite and D1 store as NULL).
    #[error("value cannot be stored unchanged: {reason}")]
    ValueUnsupported {
        /// Why the value was refused.
        reason: &'static str,
    },

    /// A value, or a row, larger than D1 stores: [`crate::MAX_VALUE_BYTES`] per TEXT or BLOB
    /// value and per row.
    #[error(
        "{what} of {len} bytes is larger than D1 stores ({max} bytes): keep large objects in R2 and store their key"
    )]
    ValueTooLarge {
        /// What was too large: `a TEXT value`, `a BLOB value`, `a row`.
        what: &'static str,
        /// Its size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// An SQL statement longer than D1 accepts ([`crate::MAX_STATEMENT_BYTES`]).
    #[error(
        "statement of {len} bytes is longer than D1 accepts ({max} bytes): bind values as parameters instead of writing them into the SQL, or split the statement"
    )]
    StatementTooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A statement with more bound parameters than D1 accepts.
    #[error(
        "statement binds {count} parameters; D1 accepts at most {max} per statement: split the statement or use the chunking `insert_many`"
    )]
    TooManyParameters {
        /// Parameters the statement tried to bind.
        count: usize,
        /// The limit ([`crate::MAX_BOUND_PARAMETERS`]).
        max: usize,
    },

    /// A typed query that cannot be run as built (a pattern longer than SQLite accepts, a
    /// list that cannot be bound, a value D1 cannot carry). The message says what to change.
    #[error("invalid query: {reason}")]
    QueryInvalid {
        /// What is wrong and what to do instead.
        reason: String,
    },

    /// The database refused or failed a statement.
    #[error("query failed on shard `{shard}`: {message}")]
    QueryFailed {
        /// The shard the statement ran on.
        shard: String,
        /// The database's own message.
        message: String,
    },

    /// The shard stayed locked by another writer for longer than the busy timeout (embedded).
    /// Nothing was written; retry later.
    #[error("shard `{shard}` is busy: {message}; nothing was written, retry later")]
    Busy {
        /// The shard (or `_directory`) that was busy.
        shard: String,
        /// The database's own message.
        message: String,
    },

    /// The shard's database failed for a reason that passes (D1: the connection was lost, the
    /// database was reset or overloaded). A read can be retried as it is; a write may or may not
    /// have been applied, so retry writes that are idempotent (`upsert`,
    /// `insert_many_idempotent`) or check first.
    #[error("shard `{shard}` is temporarily unavailable: {message}; a write may or may not have been applied")]
    Unavailable {
        /// The shard.
        shard: String,
        /// The database's own message.
        message: String,
    },

    /// An insert of a key that already exists.
    #[error("a row with this key already exists in `{table}` on shard `{shard}`; use `update` or `upsert`")]
    DuplicateKey {
        /// The model's table.
        table: String,
        /// Where the existing row lives.
        shard: String,
    },

    /// A write would give a `#[sharded(unique)]` column a value another row of the table already
    /// has, on any shard (see [`crate::unique`]). Nothing of the write remains.
    #[error("another `{table}` row already has this `{column}`: `{column}` is unique across every shard; update that row instead, or choose another value")]
    DuplicateValue {
        /// The model's table.
        table: String,
        /// The unique column.
        column: String,
    },

    /// A statement added to a [`Batch`](crate::batch::Batch) whose row routes apart from the
    /// batch's key, so it may live on another shard. Nothing was sent.
    #[error("a batch runs on one shard: {statement} routes apart from the batch's {anchor}; write it outside the batch, or keep both rows under one key")]
    CrossShard {
        /// The batch's model and key.
        anchor: String,
        /// The refused statement's model and key.
        statement: String,
    },

    /// The same key appears twice among the rows of one `insert_many` call. Nothing was written.
    #[error(
        "rows {first} and {second} of the batch for `{table}` have the same key; nothing was written: remove one and retry"
    )]
    DuplicateInBatch {
        /// The model's table.
        table: String,
        /// The index of the key's first row in the input.
        first: usize,
        /// The index of the repeated row.
        second: usize,
    },

    /// One row of a many-row call was refused before anything was written; `source` says why
    /// and [`Error::code`] is the code of `source`.
    #[error("row {index} of the batch: {source}; nothing was written")]
    BatchRow {
        /// The row's index in the input.
        index: usize,
        /// Why the row was refused.
        source: Box<Error>,
    },

    /// A many-row write failed after some of its rows were committed (on shards written before
    /// the failure, or all of them when the failure came after the rows, as a unique lookup's
    /// confirm). Retrying the same call cannot succeed (those rows exist now): finish it with
    /// `insert_many_idempotent`.
    #[error(
        "{written} rows were committed before this failure: {source}; finish the import with `insert_many_idempotent`"
    )]
    PartiallyWritten {
        /// Rows committed before the failure.
        written: usize,
        /// The failure.
        source: Box<Error>,
    },

    /// A bulk write by filter while a growth operation moves rows (see [`crate::growth`]): it
    /// could change a row's copy and miss the row. Retry when the operation has finished.
    #[error(
        "a bulk write by filter waits while a growth operation runs ({operation}): retry when it has finished (`status`), or write by key"
    )]
    GrowthInProgress {
        /// The operation in progress.
        operation: String,
    },

    /// A migration failed on a shard (see [`crate::migrate`]). Every shard is at a whole
    /// version: `at` says which.
    #[error(
        "migration {version} (`{name}`) failed on shard `{shard}`: {source}; shards now: {at}; fix the cause and run the migrations again"
    )]
    MigrationFailed {
        /// The shard that refused it.
        shard: String,
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: String,
        /// Where every shard stands, as `s0 at 2, s1 at 1`.
        at: String,
        /// The shard's error.
        source: Box<Error>,
    },

    /// The key's slot is being switched to another shard by a move, and the switch did not
    /// finish within the router's wait (10 s): the move was stopped mid-switch. Retry after
    /// resuming it (`collegedb resume`, or [`CollegeDb::resume_growth`](crate::CollegeDb::resume_growth)).
    #[error("slot {slot} is being moved between shards and its switch-over has not finished; resume the move, then retry")]
    SlotMoving {
        /// The slot, or `-1` for the directory-placed keys of a shard being drained.
        slot: i64,
    },

    /// An update of a key that has no row.
    #[error("no row with this key in `{table}`; use `insert` or `upsert` to create it")]
    RowNotFound {
        /// The model's table.
        table: String,
    },

    /// The configuration cannot be used.
    #[error("invalid configuration: {0}")]
    ConfigInvalid(String),

    /// A shard's storage is at its size limit (a Durable Object shard holds at most 10 GB):
    /// statements that could grow it are refused; deletes still run.
    #[error("shard `{shard}` is full: {message}")]
    ShardFull {
        /// The shard.
        shard: String,
        /// The size and the limit, and what to do.
        message: String,
    },

    /// A D1 session bookmark a client sent back (the `x-collegedb-bookmarks` header) is
    /// malformed: it is not `SHARD=bookmark` pairs, or holds characters no bookmark has.
    #[error("invalid session bookmark: {0}; send back the header value the last response carried, or none")]
    BookmarkInvalid(String),

    /// A value read from a shard does not have the shape the Rust type expects.
    #[error("cannot decode column `{column}`: {message}")]
    Decode {
        /// The column, or its position.
        column: String,
        /// What was expected and what was found.
        message: String,
    },

    /// The key-to-shard directory failed.
    #[error("directory error: {0}")]
    Directory(String),

    /// The directory names a shard that the configuration does not contain. Retrying cannot
    /// help: restore the shard to the configuration.
    #[error("directory is inconsistent with the configuration: {0}")]
    DirectoryInconsistent(String),

    /// The round-robin coordinator failed and the configuration allows no fallback.
    #[error("coordinator unavailable: {0}")]
    CoordinatorUnavailable(String),

    /// `flush` was called without being enabled for development.
    #[error(
        "flush deletes every row on every shard and is disabled; enable it with `Config::allow_flush(true)` in development only"
    )]
    FlushDisabled,

    /// A file-system or connection failure of the embedded backend.
    #[error("I/O error: {0}")]
    Io(String),
}

impl Error {
    /// The stable, machine-readable code of this error.
    ///
    /// ```
    /// let err = collegedb::Error::FlushDisabled;
    /// assert_eq!(err.code(), "FLUSH_DISABLED");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Error::ShardNotFound { .. } => "SHARD_NOT_FOUND",
            Error::KeyTooLarge { .. } => "KEY_TOO_LARGE",
            Error::KeyInvalid { .. } | Error::UniqueValueInvalid { .. } => "KEY_INVALID",
            Error::IntegerOutOfRange { .. } => "INTEGER_OUT_OF_RANGE",
            Error::ValueUnsupported { .. } => "VALUE_UNSUPPORTED",
            Error::ValueTooLarge { .. } => "VALUE_TOO_LARGE",
            Error::StatementTooLarge { .. } => "STATEMENT_TOO_LARGE",
            Error::TooManyParameters { .. } => "TOO_MANY_PARAMETERS",
            Error::QueryInvalid { .. } => "QUERY_INVALID",
            Error::CrossShard { .. } => "CROSS_SHARD",
            Error::QueryFailed { .. } => "QUERY_FAILED",
            Error::Busy { .. } => "SHARD_BUSY",
            Error::Unavailable { .. } => "SHARD_UNAVAILABLE",
            Error::DuplicateKey { .. }
            | Error::DuplicateValue { .. }
            | Error::DuplicateInBatch { .. } => "DUPLICATE_KEY",
            Error::BatchRow { source, .. } => source.code(),
            Error::PartiallyWritten { .. } => "PARTIALLY_WRITTEN",
            Error::MigrationFailed { .. } => "MIGRATION_FAILED",
            Error::GrowthInProgress { .. } => "GROWTH_IN_PROGRESS",
            Error::SlotMoving { .. } => "SLOT_MOVING",
            Error::RowNotFound { .. } => "ROW_NOT_FOUND",
            Error::ConfigInvalid(_) => "CONFIG_INVALID",
            Error::BookmarkInvalid(_) => "BOOKMARK_INVALID",
            Error::ShardFull { .. } => "SHARD_FULL",
            Error::Decode { .. } => "DECODE_FAILED",
            Error::Directory(_) => "DIRECTORY_FAILED",
            Error::DirectoryInconsistent(_) => "DIRECTORY_INCONSISTENT",
            Error::CoordinatorUnavailable(_) => "COORDINATOR_UNAVAILABLE",
            Error::FlushDisabled => "FLUSH_DISABLED",
            Error::Io(_) => "IO_ERROR",
        }
    }

    /// The HTTP status that fits this error when a service answers with it: 4xx for what the
    /// caller can fix, 5xx for what the service must.
    ///
    /// ```
    /// assert_eq!(collegedb::Error::FlushDisabled.http_status(), 403);
    /// ```
    pub fn http_status(&self) -> u16 {
        match self {
            Error::KeyTooLarge { .. }
            | Error::KeyInvalid { .. }
            | Error::UniqueValueInvalid { .. }
            | Error::IntegerOutOfRange { .. }
            | Error::ValueUnsupported { .. }
            | Error::TooManyParameters { .. }
            | Error::StatementTooLarge { .. }
            | Error::QueryInvalid { .. }
            | Error::CrossShard { .. }
            | Error::BookmarkInvalid(_)
            | Error::Decode { .. } => 400,
            Error::FlushDisabled => 403,
            Error::ValueTooLarge { .. } => 413,
            Error::ShardFull { .. } => 507,
            Error::ShardNotFound { .. } | Error::RowNotFound { .. } => 404,
            Error::DuplicateKey { .. }
            | Error::DuplicateValue { .. }
            | Error::DuplicateInBatch { .. } => 409,
            Error::BatchRow { source, .. }
            | Error::PartiallyWritten { source, .. }
            | Error::MigrationFailed { source, .. } => source.http_status(),
            Error::Directory(_)
            | Error::CoordinatorUnavailable(_)
            | Error::Busy { .. }
            | Error::SlotMoving { .. }
            | Error::GrowthInProgress { .. }
            | Error::Unavailable { .. } => 503,
            Error::QueryFailed { .. }
            | Error::ConfigInvalid(_)
            | Error::DirectoryInconsistent(_)
            | Error::Io(_) => 500,
        }
    }

    /// Whether the caller may succeed by retrying the same call unchanged: `true` only for
    /// transient conditions (a busy shard, an unreachable directory or coordinator). Errors that
    /// need a change first (bad input, configuration, a missing shard) answer `false`.
    ///
    /// ```
    /// use collegedb::Error;
    /// let busy = Error::Busy { shard: "a".into(), message: "database is locked".into() };
    /// assert!(busy.is_retryable());
    /// assert!(!Error::DirectoryInconsistent("shard `z` is gone".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Directory(_)
            | Error::CoordinatorUnavailable(_)
            | Error::Busy { .. }
            | Error::SlotMoving { .. }
            | Error::GrowthInProgress { .. }
            | Error::Unavailable { .. } => true,
            Error::BatchRow { source, .. } | Error::MigrationFailed { source, .. } => {
                source.is_retryable()
            }
            _ => false,
        }
    }

    /// A database failure on `shard`: [`Error::Unavailable`] for the transient failures D1
    /// reports (the messages Cloudflare's own retry guidance lists), else [`Error::QueryFailed`].
    #[cfg_attr(not(feature = "cloudflare"), allow(dead_code))]
    pub(crate) fn from_database(shard: &str, message: String) -> Self {
        const TRANSIENT: [&str; 6] = [
            "Network connection lost",
            "storage caused object to be reset",
            "reset because its code was updated",
            "D1 DB is overloaded",
            "transient issue",
            "Too many requests queued",
        ];
        if TRANSIENT.iter().any(|t| message.contains(t)) {
            Error::Unavailable {
                shard: shard.to_owned(),
                message,
            }
        } else {
            Error::QueryFailed {
                shard: shard.to_owned(),
                message,
            }
        }
    }

    pub(crate) fn config(message: impl fmt::Display) -> Self {
        Error::ConfigInvalid(message.to_string())
    }

    pub(crate) fn decode(column: impl fmt::Display, message: impl fmt::Display) -> Self {
        Error::Decode {
            column: column.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn integer_out_of_range(value: impl fmt::Display, reason: &'static str) -> Self {
        Error::IntegerOutOfRange {
            value: value.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn transient_d1_failures_are_retryable_and_the_rest_are_not() {
        let lost = Error::from_database("a", "D1_ERROR: Network connection lost.".into());
        assert_eq!(lost.code(), "SHARD_UNAVAILABLE");
        assert!(lost.is_retryable());
        let reset = Error::from_database(
            "a",
            "D1_ERROR: Internal error while starting up D1 DB storage caused object to be reset."
                .into(),
        );
        assert!(reset.is_retryable());
        let syntax = Error::from_database("a", "D1_ERROR: near \"SELEC\": syntax error".into());
        assert_eq!(syntax.code(), "QUERY_FAILED");
        assert!(!syntax.is_retryable());
    }
}
