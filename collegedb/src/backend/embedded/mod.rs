//! The native embedded backend: one SQLite file per shard, and the directory and round-robin
//! counters in one more SQLite file, all in one folder.
//!
//! ```text
//! <folder>/<shard>.sqlite    one per configured shard (D1's SQL dialect: it is SQLite)
//! <folder>/_directory.db     key-to-shard entries and round-robin counters
//! ```
//!
//! Every file runs in WAL mode. Each file keeps a small pool of connections, each with its own
//! prepared-statement cache, so shards (and readers of one shard) work in parallel across
//! threads. Quick statements run inline on the caller's thread; anything that would wait (for a
//! lock, for a connection) or run long goes to a blocking thread pool, so async runtimes keep
//! their threads: [`EmbeddedOptions`] and the README's "Performance" section give the exact rule.

mod directory;
mod pool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use directory::{LocalCoordinator, SqliteDirectory};
pub use pool::EmbeddedOptions;

use super::{Backend, Row, ShardConn, Statement};
use crate::error::{Error, Result};
use crate::value::Value;
use pool::Pool;

/// The embedded backend bundle. Open a database with
/// [`CollegeDb::open_embedded`](crate::CollegeDb::open_embedded).
#[derive(Debug)]
pub enum Embedded {}

impl Backend for Embedded {
    type Shard = SqliteShard;
    type Directory = SqliteDirectory;
    type Coordinator = LocalCoordinator;
}

/// One shard: a SQLite file.
#[derive(Debug)]
pub struct SqliteShard {
    pool: Arc<Pool>,
    path: PathBuf,
}

impl SqliteShard {
    /// Opens (creating if needed) the shard file at `path`; `name` labels errors.
    pub fn open(path: impl Into<PathBuf>, name: &str, options: &EmbeddedOptions) -> Result<Self> {
        let path = path.into();
        Ok(SqliteShard {
            pool: Pool::open(&path, name.to_owned(), options)?,
            path,
        })
    }

    /// The shard's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ShardConn for SqliteShard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.pool.execute(sql, params).await
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.pool.query(sql, params).await
    }

    async fn execute_raw(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.pool.execute_offloaded(sql, params).await
    }

    async fn query_raw(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.pool.query_offloaded(sql, params).await
    }

    fn computes_slots(&self) -> bool {
        true
    }

    fn max_parameters(&self) -> usize {
        // SQLite's own limit is 32,766; statements of a few thousand keep their text small.
        3_000
    }

    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        self.pool.batch(statements).await
    }

    async fn size_bytes(&self) -> Result<u64> {
        let size = |conn: &rusqlite::Connection| {
            conn.query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |row| row.get::<_, i64>(0),
            )
        };
        self.pool.run(true, size, || size).await.map(|n| n as u64)
    }
}

/// The shard map stored in an embedded database's folder (see [`crate::slots`]), without creating
/// anything; `None` when the folder holds no database yet.
pub fn stored_map(folder: &Path) -> Result<Option<crate::slots::ShardMap>> {
    let path = folder.join("_directory.db");
    if !path.exists() {
        return Ok(None);
    }
    let io = |e: rusqlite::Error| Error::Io(format!("cannot read {}: {e}", path.display()));
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(io)?;
    let json: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
        "SELECT map FROM slot_map WHERE id = 1",
        [],
        |r| r.get(0),
    ))
    .map_err(io)?;
    json.map(|json| crate::slots::ShardMap::from_json(&json))
        .transpose()
}

/// Opens the directory and coordinator file of an embedded database in `folder` (creating it if
/// missing), for assembling a handle from wrapped parts with [`CollegeDb::from_parts`]: fault
/// injection or instrumentation around the real stores. Shards open with [`SqliteShard::open`]
/// as `<folder>/<name>.sqlite`.
///
/// [`CollegeDb::from_parts`]: crate::CollegeDb::from_parts
pub fn open_directory(
    folder: &Path,
    options: &EmbeddedOptions,
) -> Result<(SqliteDirectory, LocalCoordinator)> {
    std::fs::create_dir_all(folder)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", folder.display())))?;
    directory::open(&folder.join("_directory.db"), options)
}

/// Opens every file of an embedded database in `folder`, creating what is missing.
pub(crate) fn open(
    folder: &Path,
    shard_names: &[String],
    options: &EmbeddedOptions,
) -> Result<(
    Vec<SqliteShard>,
    SqliteDirectory,
    LocalCoordinator,
    crate::slots::ShardMap,
)> {
    std::fs::create_dir_all(folder)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", folder.display())))?;
    let (directory, coordinator) = directory::open(&folder.join("_directory.db"), options)?;
    // Before any shard file is created: a refused list leaves the folder as it was.
    let map = directory::check_map(&directory, &coordinator, folder, shard_names)?;
    let shards = shard_names
        .iter()
        .map(|name| SqliteShard::open(folder.join(format!("{name}.sqlite")), name, options))
        .collect::<Result<Vec<_>>>()?;
    Ok((shards, directory, coordinator, map))
}
