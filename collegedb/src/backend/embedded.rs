//! The native embedded backend: one SQLite file per shard, and the directory and round-robin
//! counters in one more SQLite file, all in one folder.
//!
//! ```text
//! <folder>/<shard>.sqlite    one per configured shard (D1's SQL dialect: it is SQLite)
//! <folder>/_directory.db     key-to-shard entries and round-robin counters
//! ```
//!
//! Every file runs in WAL mode with a busy timeout. Each shard keeps a small pool of connections,
//! each with its own prepared-statement cache, so shards (and readers of one shard) work in
//! parallel across threads. Calls run synchronously inside the returned futures: a point query
//! takes microseconds, less than a hand-off to a blocking thread pool would cost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, OptionalExtension, ToSql};

use super::{Backend, Coordinator, Row, ShardConn, Statement};
use crate::directory::{Directory, DirectoryPage};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::value::Value;

/// Connections per file. Readers in WAL mode run in parallel; writers queue on SQLite's lock.
const POOL_SIZE: usize = 4;
/// Prepared statements cached per connection.
const STATEMENT_CACHE: usize = 64;
/// How long a connection waits for another writer before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Round-robin tickets reserved from the counter table at a time.
const TICKET_BLOCK: u64 = 64;

/// The embedded backend bundle. Open a database with
/// [`CollegeDb::open_embedded`](crate::CollegeDb::open_embedded).
#[derive(Debug)]
pub enum Embedded {}

impl Backend for Embedded {
    type Shard = SqliteShard;
    type Directory = SqliteDirectory;
    type Coordinator = LocalCoordinator;
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn read_value(value: ValueRef<'_>, column: usize) -> Result<Value> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(bytes) => Value::Text(
            String::from_utf8(bytes.to_vec())
                .map_err(|_| Error::decode(column, "TEXT is not valid UTF-8"))?,
        ),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
    })
}

/// A fixed pool of connections to one SQLite file.
#[derive(Debug)]
struct Pool {
    label: String,
    connections: Vec<Mutex<Connection>>,
    /// Which connection to wait for when all are busy, rotated so waiters spread out.
    next_wait: AtomicUsize,
}

impl Pool {
    fn open(path: &Path, label: String) -> Result<Self> {
        let connections = (0..POOL_SIZE)
            .map(|_| {
                let conn = Connection::open(path)
                    .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
                conn.busy_timeout(BUSY_TIMEOUT)
                    .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
                    .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
                    .map_err(|e| Error::Io(format!("cannot configure {}: {e}", path.display())))?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                Ok(Mutex::new(conn))
            })
            .collect::<Result<_>>()?;
        Ok(Pool {
            label,
            connections,
            next_wait: AtomicUsize::new(0),
        })
    }

    /// A free connection, or, when all are busy, the next one in rotation.
    fn get(&self) -> MutexGuard<'_, Connection> {
        for conn in &self.connections {
            if let Ok(guard) = conn.try_lock() {
                return guard;
            }
        }
        let index = self.next_wait.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed(&self, error: rusqlite::Error) -> Error {
        Error::QueryFailed {
            shard: self.label.clone(),
            message: error.to_string(),
        }
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let conn = self.get();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.failed(e))?;
        stmt.execute(params_from_iter(params))
            .map(|n| n as u64)
            .map_err(|e| self.failed(e))
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let conn = self.get();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.failed(e))?;
        let columns: Arc<[String]> = stmt.column_names().map(str::to_owned).collect();
        let width = columns.len();
        let mut rows = stmt
            .query(params_from_iter(params))
            .map_err(|e| self.failed(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.failed(e))? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(read_value(row.get_ref(i).map_err(|e| self.failed(e))?, i)?);
            }
            out.push(Row::new(columns.clone(), values));
        }
        Ok(out)
    }

    fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        let mut conn = self.get();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.failed(e))?;
        let mut changed = Vec::with_capacity(statements.len());
        for statement in statements {
            let mut stmt = tx
                .prepare_cached(&statement.sql)
                .map_err(|e| self.failed(e))?;
            changed.push(
                stmt.execute(params_from_iter(&statement.params))
                    .map_err(|e| self.failed(e))? as u64,
            );
        }
        tx.commit().map_err(|e| self.failed(e))?;
        Ok(changed)
    }
}

/// One shard: a SQLite file.
#[derive(Debug)]
pub struct SqliteShard {
    pool: Pool,
    path: PathBuf,
}

impl SqliteShard {
    /// Opens (creating if needed) the shard file at `path`; `name` labels errors.
    pub fn open(path: impl Into<PathBuf>, name: &str) -> Result<Self> {
        let path = path.into();
        Ok(SqliteShard {
            pool: Pool::open(&path, name.to_owned())?,
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
        self.pool.execute(sql, params)
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.pool.query(sql, params)
    }

    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        self.pool.batch(statements)
    }

    async fn size_bytes(&self) -> Result<u64> {
        let conn = self.pool.get();
        conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(|e| self.pool.failed(e))
    }
}

/// The directory file shared by [`SqliteDirectory`] and [`LocalCoordinator`].
#[derive(Debug)]
struct DirectoryFile {
    pool: Pool,
}

impl DirectoryFile {
    fn open(path: &Path) -> Result<Arc<Self>> {
        let pool = Pool::open(path, "_directory".into())?;
        pool.get()
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS directory (
                     scope TEXT NOT NULL,
                     key   BLOB NOT NULL,
                     shard TEXT NOT NULL,
                     PRIMARY KEY (scope, key)
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS counters (
                     name  TEXT PRIMARY KEY NOT NULL,
                     value INTEGER NOT NULL
                 ) WITHOUT ROWID;",
            )
            .map_err(|e| Error::Io(format!("cannot create directory tables: {e}")))?;
        Ok(Arc::new(DirectoryFile { pool }))
    }

    fn failed(error: rusqlite::Error) -> Error {
        Error::Directory(error.to_string())
    }
}

/// The embedded directory: a `WITHOUT ROWID` table keyed by `(table, key)`. Claims are a single
/// `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, atomic under SQLite's write lock.
#[derive(Debug)]
pub struct SqliteDirectory {
    file: Arc<DirectoryFile>,
}

impl Directory for SqliteDirectory {
    async fn lookup(&self, table: &str, key: &Key) -> Result<Option<String>> {
        let conn = self.file.pool.get();
        let mut stmt = conn
            .prepare_cached("SELECT shard FROM directory WHERE scope = ?1 AND key = ?2")
            .map_err(DirectoryFile::failed)?;
        stmt.query_row((table, key.directory_bytes()), |row| row.get(0))
            .optional()
            .map_err(DirectoryFile::failed)
    }

    async fn claim(&self, table: &str, key: &Key, shard: &str) -> Result<String> {
        let conn = self.file.pool.get();
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO directory (scope, key, shard) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, key) DO UPDATE SET shard = directory.shard
                 RETURNING shard",
            )
            .map_err(DirectoryFile::failed)?;
        stmt.query_row((table, key.directory_bytes(), shard), |row| row.get(0))
            .map_err(DirectoryFile::failed)
    }

    async fn assign(&self, table: &str, key: &Key, shard: &str) -> Result<()> {
        let conn = self.file.pool.get();
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO directory (scope, key, shard) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, key) DO UPDATE SET shard = excluded.shard",
            )
            .map_err(DirectoryFile::failed)?;
        stmt.execute((table, key.directory_bytes(), shard))
            .map(drop)
            .map_err(DirectoryFile::failed)
    }

    async fn remove(&self, table: &str, key: &Key) -> Result<()> {
        let conn = self.file.pool.get();
        let mut stmt = conn
            .prepare_cached("DELETE FROM directory WHERE scope = ?1 AND key = ?2")
            .map_err(DirectoryFile::failed)?;
        stmt.execute((table, key.directory_bytes()))
            .map(drop)
            .map_err(DirectoryFile::failed)
    }

    async fn list(&self, table: &str, cursor: Option<&str>, limit: usize) -> Result<DirectoryPage> {
        let conn = self.file.pool.get();
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, shard FROM directory WHERE scope = ?1 AND key > ?2
                 ORDER BY key LIMIT ?3",
            )
            .map_err(DirectoryFile::failed)?;
        let after = match cursor {
            Some(cursor) => hex::decode(cursor)
                .map_err(|_| Error::Directory(format!("malformed cursor {cursor:?}")))?,
            None => Vec::new(),
        };
        let rows = stmt
            .query_map((table, after, limit as i64 + 1), |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(DirectoryFile::failed)?;
        let mut entries = Vec::new();
        for row in rows {
            let (key, shard) = row.map_err(DirectoryFile::failed)?;
            entries.push((Key::from_directory_bytes(&key)?, shard));
        }
        let cursor = if entries.len() > limit {
            entries.truncate(limit);
            entries
                .last()
                .map(|(key, _)| hex::encode(key.directory_bytes()))
        } else {
            None
        };
        Ok(DirectoryPage { entries, cursor })
    }

    async fn count(&self) -> Result<u64> {
        let conn = self.file.pool.get();
        conn.query_row("SELECT COUNT(*) FROM directory", [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(DirectoryFile::failed)
    }

    async fn clear(&self) -> Result<()> {
        let conn = self.file.pool.get();
        conn.execute_batch("DELETE FROM directory; DELETE FROM counters;")
            .map_err(DirectoryFile::failed)
    }
}

/// The in-process round-robin coordinator. Counters persist in the directory file; each process
/// reserves tickets in blocks of 64, so concurrent processes interleave whole blocks and placement
/// stays even (within one block per process) without a write per insert.
#[derive(Debug)]
pub struct LocalCoordinator {
    file: Arc<DirectoryFile>,
    /// Per table: the next ticket to hand out and the end of the reserved block.
    blocks: Mutex<HashMap<String, (u64, u64)>>,
}

impl Coordinator for LocalCoordinator {
    async fn next_ticket(&self, table: &str) -> Result<u64> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((next, end)) = blocks.get_mut(table) {
            if *next < *end {
                *next += 1;
                return Ok(*next - 1);
            }
        }
        let conn = self.file.pool.get();
        let end: i64 = conn
            .prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
                 RETURNING value",
            )
            .and_then(|mut stmt| stmt.query_row((table, TICKET_BLOCK as i64), |row| row.get(0)))
            .map_err(|e| Error::CoordinatorUnavailable(e.to_string()))?;
        let end = end as u64;
        let start = end - TICKET_BLOCK;
        blocks.insert(table.to_owned(), (start + 1, end));
        Ok(start)
    }
}

/// Opens every file of an embedded database in `folder`, creating what is missing.
pub(crate) fn open(
    folder: &Path,
    shard_names: &[String],
) -> Result<(Vec<SqliteShard>, SqliteDirectory, LocalCoordinator)> {
    std::fs::create_dir_all(folder)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", folder.display())))?;
    let shards = shard_names
        .iter()
        .map(|name| SqliteShard::open(folder.join(format!("{name}.sqlite")), name))
        .collect::<Result<Vec<_>>>()?;
    let file = DirectoryFile::open(&folder.join("_directory.db"))?;
    let directory = SqliteDirectory { file: file.clone() };
    let coordinator = LocalCoordinator {
        file,
        blocks: Mutex::new(HashMap::new()),
    };
    Ok((shards, directory, coordinator))
}
