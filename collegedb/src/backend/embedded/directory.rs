//! The embedded directory and round-robin coordinator, sharing one SQLite file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};

use super::pool::{EmbeddedOptions, Pool};
use crate::backend::Coordinator;
use crate::directory::{Directory, DirectoryPage};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::slots::ShardMap;

/// Insert-if-absent, returning the entry that holds afterwards: atomic under SQLite's write lock.
const CLAIM: &str = "INSERT INTO directory (scope, key, shard) VALUES (?1, ?2, ?3)
     ON CONFLICT (scope, key) DO UPDATE SET shard = directory.shard
     RETURNING shard";

/// The entry of `(?1, ?2)`.
const LOOKUP: &str = "SELECT shard FROM directory WHERE scope = ?1 AND key = ?2";

/// Compare-and-set: `?4` where the entry of `(?1, ?2)` is `?3` now.
const REPLACE: &str =
    "UPDATE directory SET shard = ?4 WHERE scope = ?1 AND key = ?2 AND shard = ?3";

/// Round-robin tickets reserved from the counter table at a time.
const TICKET_BLOCK: u64 = 64;

/// Opens the directory file, creating its tables.
pub(super) fn open(
    path: &Path,
    options: &EmbeddedOptions,
) -> Result<(SqliteDirectory, LocalCoordinator)> {
    let pool = Pool::open(path, "_directory".into(), options)?;
    pool.run_blocking_sync(|conn| {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS directory (
                 scope TEXT NOT NULL,
                 key   BLOB NOT NULL,
                 shard TEXT NOT NULL,
                 PRIMARY KEY (scope, key)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS counters (
                 name  TEXT PRIMARY KEY NOT NULL,
                 value INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS slot_map (
                 id      INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL,
                 map     TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS jobs (
                 name  TEXT PRIMARY KEY NOT NULL,
                 state TEXT NOT NULL
             ) WITHOUT ROWID;",
        )
    })
    .map_err(|e| Error::Io(format!("cannot create directory tables: {e}")))?;
    let directory = SqliteDirectory { pool: pool.clone() };
    let coordinator = LocalCoordinator {
        pool,
        blocks: Mutex::new(HashMap::new()),
    };
    Ok((directory, coordinator))
}

/// Loads the stored shard map, seeding it from the configured names on first open, and checks
/// the configuration against it (see [`crate::shard_map`]). While the deployment holds no rows
/// and runs no operation, a different set of names simply replaces the seed.
pub(super) fn check_map(
    directory: &SqliteDirectory,
    coordinator: &LocalCoordinator,
    folder: &Path,
    configured: &[String],
) -> Result<ShardMap> {
    use crate::shard_map::{compare, refused, ListChange};
    let seed = ShardMap::seed(configured)?;
    let stored = match load_map_sync(&coordinator.pool)? {
        Some(map) => map,
        None => {
            store_map_sync(&coordinator.pool, &seed, true)?;
            load_map_sync(&coordinator.pool)?.expect("stored just now")
        }
    };
    let mut same_set: Vec<&String> = configured.iter().collect();
    same_set.sort();
    same_set.dedup();
    if same_set.iter().copied().eq(stored.shards().iter()) {
        return Ok(stored);
    }
    let change = compare(&stored, configured);
    let jobs: i64 = coordinator
        .pool
        .run_blocking_sync(|conn| conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)))
        .map_err(|e| Error::Io(format!("cannot read the journal: {e}")))?;
    if jobs > 0 || holds_rows(directory, folder, stored.shards().iter().chain(configured))? {
        return match change {
            // Extra configured shards wait, standby, for `add_shard`.
            ListChange::Covered => Ok(stored),
            ListChange::Missing(why) => Err(refused(&stored, &why)),
        };
    }
    // Nothing placed yet: the configured list becomes the map.
    let replaced = {
        let mut next = ShardMap::seed(configured)?;
        next.set_version(stored.version() + 1);
        next
    };
    store_map_sync(&coordinator.pool, &replaced, false)?;
    Ok(replaced)
}

fn map_io(e: rusqlite::Error) -> Error {
    Error::Io(format!("cannot read or write the stored shard map: {e}"))
}

fn load_map_sync(pool: &Arc<Pool>) -> Result<Option<ShardMap>> {
    let json: Option<String> = pool
        .run_blocking_sync(|conn| {
            conn.query_row("SELECT map FROM slot_map WHERE id = 1", [], |r| r.get(0))
                .optional()
        })
        .map_err(map_io)?;
    json.map(|json| ShardMap::from_json(&json)).transpose()
}

/// Stores `map` on an empty store (`first`), or over its predecessor version.
fn store_map_sync(pool: &Arc<Pool>, map: &ShardMap, first: bool) -> Result<bool> {
    let (version, json) = (map.version() as i64, map.to_json());
    pool.run_blocking_sync(|conn| {
        if first {
            conn.execute(
                "INSERT OR IGNORE INTO slot_map (id, version, map) VALUES (1, ?1, ?2)",
                (version, &json),
            )
        } else {
            conn.execute(
                "UPDATE slot_map SET version = ?1, map = ?2 WHERE id = 1 AND version = ?1 - 1",
                (version, &json),
            )
        }
    })
    .map(|changed| changed == 1)
    .map_err(map_io)
}

/// Whether the deployment holds any row: a directory entry, or a row in a table of any of the
/// named shard files that exist.
fn holds_rows<'a>(
    directory: &SqliteDirectory,
    folder: &Path,
    names: impl Iterator<Item = &'a String>,
) -> Result<bool> {
    let io = |e: rusqlite::Error| Error::Io(format!("cannot count rows: {e}"));
    let entries: i64 = directory
        .pool
        .run_blocking_sync(|conn| {
            conn.query_row("SELECT COUNT(*) FROM directory", [], |r| r.get(0))
        })
        .map_err(io)?;
    if entries > 0 {
        return Ok(true);
    }
    for name in names {
        let path = folder.join(format!("{name}.sqlite"));
        if !path.exists() {
            continue;
        }
        let conn = Connection::open(&path).map_err(io)?;
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                 AND name NOT LIKE '\\_collegedb\\_%' ESCAPE '\\'",
            )
            .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
            .map_err(io)?;
        for table in tables {
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM \"{}\")",
                table.replace('"', "\"\"")
            );
            let any: bool = conn.query_row(&sql, [], |r| r.get(0)).map_err(io)?;
            if any {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Directory failures keep their kind: a lock timeout is [`Error::Busy`], anything else is
/// [`Error::Directory`].
fn directory_error(error: Error) -> Error {
    match error {
        Error::QueryFailed { message, .. } => Error::Directory(message),
        other => other,
    }
}

/// The embedded directory: a `WITHOUT ROWID` table keyed by `(table, key)`. Claims are a single
/// `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, atomic under SQLite's write lock.
#[derive(Debug)]
pub struct SqliteDirectory {
    pool: Arc<Pool>,
}

impl SqliteDirectory {
    /// Runs one statement through the pool (inline when quick), owning its inputs only when it
    /// must hand off.
    async fn run<T, A>(
        &self,
        read_only: bool,
        args: A,
        work: fn(&Connection, &A) -> rusqlite::Result<T>,
    ) -> Result<T>
    where
        T: Send + 'static,
        A: Clone + Send + 'static,
    {
        self.pool
            .run(
                read_only,
                |conn| work(conn, &args),
                || {
                    let args = args.clone();
                    move |conn: &Connection| work(conn, &args)
                },
            )
            .await
            .map_err(directory_error)
    }

    /// Runs `work` in one IMMEDIATE transaction on the thread pool (a batch may take a while):
    /// all of it commits, or none.
    async fn in_transaction<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.pool
            .run_blocking(move |conn| {
                let tx = rusqlite::Transaction::new_unchecked(
                    conn,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                let out = work(&tx)?;
                tx.commit()?;
                Ok(out)
            })
            .await
            .map_err(directory_error)
    }
}

impl Directory for SqliteDirectory {
    async fn lookup(&self, table: &str, key: &Key) -> Result<Option<String>> {
        let args = (table.to_owned(), key.directory_bytes());
        self.run(true, args, |conn, (table, key)| {
            conn.prepare_cached(LOOKUP)?
                .query_row((table, key), |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn claim(&self, table: &str, key: &Key, shard: &str) -> Result<String> {
        let args = (table.to_owned(), key.directory_bytes(), shard.to_owned());
        self.run(false, args, |conn, (table, key, shard)| {
            conn.prepare_cached(CLAIM)?
                .query_row((table, key, shard), |row| row.get(0))
        })
        .await
    }

    async fn claim_many(&self, table: &str, claims: &[(Key, String)]) -> Result<Vec<String>> {
        let table = table.to_owned();
        let claims: Vec<(Vec<u8>, String)> = claims
            .iter()
            .map(|(key, shard)| (key.directory_bytes(), shard.clone()))
            .collect();
        self.in_transaction(move |tx| {
            let mut stmt = tx.prepare_cached(CLAIM)?;
            claims
                .iter()
                .map(|(key, shard)| stmt.query_row((&table, key, shard), |row| row.get(0)))
                .collect()
        })
        .await
    }

    async fn assign(&self, table: &str, key: &Key, shard: &str) -> Result<()> {
        let args = (table.to_owned(), key.directory_bytes(), shard.to_owned());
        self.run(false, args, |conn, (table, key, shard)| {
            conn.prepare_cached(
                "INSERT INTO directory (scope, key, shard) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, key) DO UPDATE SET shard = excluded.shard",
            )?
            .execute((table, key, shard))
            .map(drop)
        })
        .await
    }

    async fn remove(&self, table: &str, key: &Key) -> Result<()> {
        let args = (table.to_owned(), key.directory_bytes());
        self.run(false, args, |conn, (table, key)| {
            conn.prepare_cached("DELETE FROM directory WHERE scope = ?1 AND key = ?2")?
                .execute((table, key))
                .map(drop)
        })
        .await
    }

    async fn replace(
        &self,
        table: &str,
        key: &Key,
        expected: &str,
        value: &str,
    ) -> Result<Option<String>> {
        let args = (
            table.to_owned(),
            key.directory_bytes(),
            expected.to_owned(),
            value.to_owned(),
        );
        // One statement under SQLite's write lock: atomic. The entry read afterwards is only
        // reported when the update did not apply.
        self.run(false, args, |conn, (table, key, expected, value)| {
            let updated = conn
                .prepare_cached(REPLACE)?
                .execute((table, key, expected, value))?;
            if updated == 1 {
                return Ok(Some(value.clone()));
            }
            conn.prepare_cached(LOOKUP)?
                .query_row((table, key), |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn replace_many(
        &self,
        table: &str,
        replacements: &[(Key, String, String)],
    ) -> Result<Vec<Option<String>>> {
        let table = table.to_owned();
        let replacements: Vec<(Vec<u8>, String, String)> = replacements
            .iter()
            .map(|(key, expected, value)| (key.directory_bytes(), expected.clone(), value.clone()))
            .collect();
        self.in_transaction(move |tx| {
            let (mut update, mut read) = (tx.prepare_cached(REPLACE)?, tx.prepare_cached(LOOKUP)?);
            let mut after = Vec::with_capacity(replacements.len());
            for (key, expected, value) in &replacements {
                if update.execute((&table, key, expected, value))? == 1 {
                    after.push(Some(value.clone()));
                } else {
                    after.push(read.query_row((&table, key), |row| row.get(0)).optional()?);
                }
            }
            Ok(after)
        })
        .await
    }

    async fn remove_if(&self, table: &str, key: &Key, expected: &str) -> Result<()> {
        let args = (table.to_owned(), key.directory_bytes(), expected.to_owned());
        self.run(false, args, |conn, (table, key, expected)| {
            conn.prepare_cached(
                "DELETE FROM directory WHERE scope = ?1 AND key = ?2 AND shard = ?3",
            )?
            .execute((table, key, expected))
            .map(drop)
        })
        .await
    }

    async fn list(&self, table: &str, cursor: Option<&str>, limit: usize) -> Result<DirectoryPage> {
        let after = match cursor {
            Some(cursor) => hex::decode(cursor).map_err(|_| {
                Error::decode("cursor", format!("malformed directory cursor {cursor:?}"))
            })?,
            None => Vec::new(),
        };
        let args = (table.to_owned(), after, limit as i64 + 1);
        let rows = self
            .run(true, args, |conn, (table, after, limit)| {
                conn.prepare_cached(
                    "SELECT key, shard FROM directory WHERE scope = ?1 AND key > ?2
                     ORDER BY key LIMIT ?3 + 0",
                )?
                .query_map((table, after, limit), |row| {
                    Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut entries = rows
            .into_iter()
            .map(|(key, shard)| Ok((Key::from_directory_bytes(&key)?, shard)))
            .collect::<Result<Vec<_>>>()?;
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
        self.run(true, (), |conn, ()| {
            conn.query_row("SELECT COUNT(*) FROM directory", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .await
        .map(|n| n as u64)
    }

    async fn clear(&self) -> Result<()> {
        self.run(false, (), |conn, ()| {
            conn.execute_batch("DELETE FROM directory; DELETE FROM counters;")
        })
        .await
    }
}

/// The in-process round-robin coordinator. Counters persist in the directory file; each process
/// reserves tickets in blocks of 64, so concurrent processes interleave whole blocks and placement
/// stays even (within one block per process) without a write per insert.
#[derive(Debug)]
pub struct LocalCoordinator {
    pool: Arc<Pool>,
    /// Per table: the next ticket to hand out and the end of the reserved block.
    blocks: Mutex<HashMap<String, (u64, u64)>>,
}

impl LocalCoordinator {
    fn take(&self, table: &str) -> Option<u64> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let (next, end) = blocks.get_mut(table)?;
        (*next < *end).then(|| {
            *next += 1;
            *next - 1
        })
    }
}

impl Coordinator for LocalCoordinator {
    async fn next_ticket(&self, table: &str) -> Result<u64> {
        if let Some(ticket) = self.take(table) {
            return Ok(ticket);
        }
        let reserve = |conn: &Connection, table: &str| {
            conn.prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
                 RETURNING value",
            )?
            .query_row((table, TICKET_BLOCK as i64), |row| row.get::<_, i64>(0))
        };
        let end = self
            .pool
            .run(
                false,
                |conn| reserve(conn, table),
                || {
                    let table = table.to_owned();
                    move |conn: &Connection| reserve(conn, &table)
                },
            )
            .await
            .map_err(|e| Error::CoordinatorUnavailable(e.to_string()))? as u64;
        let start = end - TICKET_BLOCK;
        // Another task may have reserved a block meanwhile; the newer block replaces it, and the
        // older block's unused tickets are skipped (a gap, never a repeat).
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        blocks.insert(table.to_owned(), (start + 1, end));
        Ok(start)
    }

    async fn load_map(&self) -> Result<Option<ShardMap>> {
        let json: Option<String> = self
            .pool
            .run(
                true,
                |conn| {
                    conn.prepare_cached("SELECT map FROM slot_map WHERE id = 1")?
                        .query_row([], |r| r.get(0))
                        .optional()
                },
                || {
                    |conn: &Connection| {
                        conn.prepare_cached("SELECT map FROM slot_map WHERE id = 1")?
                            .query_row([], |r| r.get(0))
                            .optional()
                    }
                },
            )
            .await
            .map_err(directory_error)?;
        json.map(|json| ShardMap::from_json(&json)).transpose()
    }

    async fn store_map(&self, map: &ShardMap) -> Result<bool> {
        let (version, json) = (map.version() as i64, map.to_json());
        self.pool
            .run_blocking(move |conn| {
                conn.execute(
                    "UPDATE slot_map SET version = ?1, map = ?2 WHERE id = 1 AND version = ?1 - 1",
                    (version, &json),
                )
            })
            .await
            .map(|changed| changed == 1)
            .map_err(directory_error)
    }

    async fn load_job(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_owned();
        self.pool
            .run_blocking(move |conn| {
                conn.query_row("SELECT state FROM jobs WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await
            .map_err(directory_error)
    }

    async fn swap_job(
        &self,
        name: &str,
        expected: Option<&str>,
        json: Option<&str>,
    ) -> Result<bool> {
        let (name, expected, json) = (
            name.to_owned(),
            expected.map(str::to_owned),
            json.map(str::to_owned),
        );
        self.pool
            .run_blocking(move |conn| {
                // One statement each: the check and the write are one atomic step.
                let changed = match (&expected, &json) {
                    (None, Some(json)) => conn.execute(
                        "INSERT INTO jobs (name, state) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                        (&name, json),
                    )?,
                    (Some(expected), Some(json)) => conn.execute(
                        "UPDATE jobs SET state = ?3 WHERE name = ?1 AND state = ?2",
                        (&name, expected, json),
                    )?,
                    (Some(expected), None) => conn.execute(
                        "DELETE FROM jobs WHERE name = ?1 AND state = ?2",
                        (&name, expected),
                    )?,
                    (None, None) => conn.query_row(
                        "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE name = ?1)",
                        [&name],
                        |r| r.get::<_, i64>(0),
                    )? as usize,
                };
                Ok(changed == 1)
            })
            .await
            .map_err(directory_error)
    }

    async fn store_job(&self, name: &str, json: Option<&str>) -> Result<()> {
        let (name, json) = (name.to_owned(), json.map(str::to_owned));
        self.pool
            .run_blocking(move |conn| match &json {
                Some(json) => conn.execute(
                    "INSERT INTO jobs (name, state) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                    (&name, json),
                ),
                None => conn.execute("DELETE FROM jobs WHERE name = ?1", [&name]),
            })
            .await
            .map(drop)
            .map_err(directory_error)
    }
}
