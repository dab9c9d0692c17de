//! A fixed pool of connections to one SQLite file, and the rule that keeps async callers'
//! threads free: **run inline what is quick, hand off to a blocking thread what may wait.**
//!
//! A call first tries to take a free connection and run its statement right on the caller's
//! thread, with SQLite's busy timeout at zero:
//!
//! * a **read-only** query also gets a budget of virtual-machine steps; one that runs past it is
//!   interrupted (a read has no effect to undo) and run again on the thread pool;
//! * a **write** runs inline only when the caller knows it is a point write (the typed layer's
//!   insert, update and delete by key: [`Pool::execute`]); raw SQL of unknown cost
//!   ([`Pool::execute_offloaded`]), queries that write (`... RETURNING`) and transactions
//!   ([`Pool::batch`]) always run on the thread pool. A write is never interrupted: SQLite may
//!   report an interrupt after a write has committed, and running it again would apply it twice.
//!
//! If every connection is taken, or another writer holds the file's lock (`SQLITE_BUSY`, which
//! SQLite reports before changing anything), the call is sent to the [`blocking`] thread pool and
//! runs there with the configured busy timeout, while the caller's future waits without holding an
//! executor thread. A lock held past the busy timeout becomes [`Error::Busy`], which is retryable.
//! A statement that leaves a transaction open (a raw `BEGIN`) is rolled back and refused, so the
//! pooled connection never carries it into another caller's statement.
//!
//! Futures that complete without waiting never yield on their own, so a task looping over
//! embedded calls could keep an executor thread forever. Every `YIELD_EVERY` (32) inline calls on
//! a thread, the call yields once to the executor first (as tokio's cooperative budget does).

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ErrorCode, ToSql};

use crate::backend::{Row, Statement};
use crate::error::{Error, Result};
use crate::value::Value;

/// Prepared statements cached per connection.
const STATEMENT_CACHE: usize = 64;
/// SQLite calls the progress handler every this many virtual-machine instructions.
const PROGRESS_STEP: i32 = 1_000;
/// Progress calls an inline statement may take (about 20,000 instructions, tens of
/// microseconds) before it is interrupted and handed to the thread pool. Point queries and
/// single-row writes take a few hundred.
const INLINE_BUDGET: usize = 20;
/// A budget that never runs out, for statements on the thread pool.
const UNLIMITED: usize = usize::MAX;
/// Inline calls per thread between two yields to the executor.
pub(crate) const YIELD_EVERY: u32 = 32;

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

/// How the embedded backend opens its files.
///
/// ```
/// use std::time::Duration;
/// use collegedb::backend::embedded::EmbeddedOptions;
/// let options = EmbeddedOptions::default().busy_timeout(Duration::from_secs(2));
/// assert_eq!(options.busy_timeout, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmbeddedOptions {
    /// How long a call waits (on a blocking thread, never on the caller's) for another writer
    /// to release a file's lock before failing with [`Error::Busy`]. Default 10 s.
    pub busy_timeout: Duration,
    /// Connections per file (at least 1). Readers in WAL mode run in parallel; writers queue on
    /// SQLite's lock. Default 4.
    pub connections: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            busy_timeout: Duration::from_secs(10),
            connections: 4,
        }
    }
}

impl EmbeddedOptions {
    /// Sets [`EmbeddedOptions::busy_timeout`].
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets [`EmbeddedOptions::connections`].
    #[must_use]
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }
}

/// One connection and the step budget its progress handler enforces.
/// Registers `collegedb_slot(key)` (see [`crate::slots::slot_of_stored`]) on a connection, so
/// that a move can select the rows of its slots inside SQLite.
fn register_slot_function(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    conn.create_scalar_function(
        "collegedb_slot",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                ValueRef::Integer(i) => crate::slots::slot_of_stored(Some(i), None),
                ValueRef::Text(bytes) => crate::slots::slot_of_stored(None, Some(bytes)),
                _ => None,
            })
        },
    )
}

struct Slot {
    conn: Connection,
    budget: Arc<AtomicUsize>,
}

impl Slot {
    fn open(path: &Path, options: &EmbeddedOptions) -> Result<Self> {
        let mut conn = Connection::open(path)
            .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
        // Opening is synchronous anyway: switching to WAL waits for other processes that hold
        // the file (with the configured timeout); calls then start with no busy wait.
        conn.busy_timeout(options.busy_timeout)
            .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| conn.busy_timeout(Duration::ZERO))
            .map_err(|e| Error::Io(format!("cannot configure {}: {e}", path.display())))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        register_slot_function(&conn)
            .map_err(|e| Error::Io(format!("cannot configure {}: {e}", path.display())))?;
        let budget = Arc::new(AtomicUsize::new(UNLIMITED));
        let counter = budget.clone();
        conn.progress_handler(
            PROGRESS_STEP,
            Some(move || {
                // `true` interrupts the statement; SQLite rolls it back.
                let left = counter.load(Ordering::Relaxed);
                if left == UNLIMITED {
                    return false;
                }
                counter.store(left.saturating_sub(1), Ordering::Relaxed);
                left == 0
            }),
        )
        .map_err(|e| Error::Io(format!("cannot configure {}: {e}", path.display())))?;
        Ok(Slot { conn, budget })
    }
}

/// The error an inline closure returns to ask for the thread pool before running anything.
fn offload_please() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
        None,
    )
}

/// Whether SQLite gave up because of another connection's lock, or because a read's inline
/// budget ran out (or the closure asked for it): "nothing changed, run it on the thread pool".
fn must_offload(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::OperationInterrupted)
    )
}

/// A fixed pool of connections to one SQLite file.
pub(crate) struct Pool {
    label: String,
    slots: Vec<Mutex<Slot>>,
    busy_timeout: Duration,
    /// Which connection to wait for when all are busy, rotated so waiters spread out.
    next_wait: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("label", &self.label)
            .field("connections", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn open(path: &Path, label: String, options: &EmbeddedOptions) -> Result<Arc<Self>> {
        let slots = (0..options.connections.max(1))
            .map(|_| Slot::open(path, options).map(Mutex::new))
            .collect::<Result<_>>()?;
        Ok(Arc::new(Pool {
            label,
            slots,
            busy_timeout: options.busy_timeout,
            next_wait: AtomicUsize::new(0),
        }))
    }

    /// A free connection, if any.
    fn try_get(&self) -> Option<MutexGuard<'_, Slot>> {
        self.slots.iter().find_map(|slot| slot.try_lock().ok())
    }

    /// A connection, waiting for one if all are busy. Only on the thread pool.
    fn get_waiting(&self) -> MutexGuard<'_, Slot> {
        if let Some(slot) = self.try_get() {
            return slot;
        }
        let index = self.next_wait.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.slots[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The error for a failed statement: [`Error::Busy`] for lock timeouts, else
    /// [`Error::QueryFailed`] with SQLite's message.
    pub(crate) fn failed(&self, error: rusqlite::Error) -> Error {
        if matches!(
            error.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        ) {
            return Error::Busy {
                shard: self.label.clone(),
                message: format!(
                    "{error} (waited {} ms for another writer)",
                    self.busy_timeout.as_millis()
                ),
            };
        }
        Error::QueryFailed {
            shard: self.label.clone(),
            message: error.to_string(),
        }
    }

    /// Runs `inline` on the caller's thread if a connection is free and it finishes quickly;
    /// otherwise runs the closure made by `offload` on the thread pool (see the module docs).
    /// `offload` owns its inputs, so only calls that hand off pay for copying them.
    ///
    /// `read_only`: the statement cannot change anything, so it may be interrupted when it runs
    /// past its inline budget. Pass `false` for writes: they are never interrupted.
    pub(crate) async fn run<T, I, O>(
        self: &Arc<Self>,
        read_only: bool,
        inline: I,
        offload: impl FnOnce() -> O,
    ) -> Result<T>
    where
        T: Send + 'static,
        I: FnOnce(&Connection) -> rusqlite::Result<T>,
        O: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        yield_now_and_then().await;
        if let Some(slot) = self.try_get() {
            let result = {
                let _budget = Armed::new(&slot.budget, read_only);
                inline(&slot.conn)
            };
            let result = close_transaction(&slot.conn, result);
            match result {
                Err(error) if must_offload(&error) => {}
                result => return result.map_err(|e| self.failed(e)),
            }
        }
        self.run_blocking(offload()).await
    }

    /// Runs `work` on this thread, waiting for a connection and for locks: for opening, which is
    /// synchronous anyway.
    pub(crate) fn run_blocking_sync<T>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let slot = self.get_waiting();
        slot.budget.store(UNLIMITED, Ordering::Relaxed);
        slot.conn.busy_timeout(self.busy_timeout)?;
        let result = close_transaction(&slot.conn, work(&slot.conn));
        slot.conn.busy_timeout(Duration::ZERO)?;
        result
    }

    /// Runs `work` on the thread pool, waiting there for a connection and for locks.
    pub(crate) async fn run_blocking<T, O>(self: &Arc<Self>, work: O) -> Result<T>
    where
        T: Send + 'static,
        O: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.clone();
        blocking::unblock(move || {
            let slot = pool.get_waiting();
            // A panic in an earlier call may have left the budget armed or the timeout set.
            slot.budget.store(UNLIMITED, Ordering::Relaxed);
            let _ = slot.conn.busy_timeout(pool.busy_timeout);
            let result = close_transaction(&slot.conn, work(&slot.conn));
            let _ = slot.conn.busy_timeout(Duration::ZERO);
            result.map_err(|e| pool.failed(e))
        })
        .await
    }

    /// Runs a point write (one row by key), inline when the file is free.
    pub(crate) async fn execute(self: &Arc<Self>, sql: &str, params: &[Value]) -> Result<u64> {
        self.run(
            false,
            |conn| execute(conn, sql, params),
            || {
                let (sql, params) = (sql.to_owned(), params.to_vec());
                move |conn: &Connection| execute(conn, &sql, &params)
            },
        )
        .await
    }

    /// Runs a statement of unknown cost (raw SQL) on the thread pool.
    pub(crate) async fn execute_offloaded(
        self: &Arc<Self>,
        sql: &str,
        params: &[Value],
    ) -> Result<u64> {
        let (sql, params) = (sql.to_owned(), params.to_vec());
        self.run_blocking(move |conn| execute(conn, &sql, &params))
            .await
    }

    /// Runs a query of unknown cost on the thread pool, never inline.
    pub(crate) async fn query_offloaded(
        self: &Arc<Self>,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Row>> {
        let (sql, params) = (sql.to_owned(), params.to_vec());
        self.run_blocking(move |conn| query(conn, &sql, &params, false))
            .await?
    }

    /// Runs a query: inline under a step budget when it is read-only, else on the thread pool.
    pub(crate) async fn query(self: &Arc<Self>, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let rows = self
            .run(
                true,
                |conn| query(conn, sql, params, true),
                || {
                    let (sql, params) = (sql.to_owned(), params.to_vec());
                    move |conn: &Connection| query(conn, &sql, &params, false)
                },
            )
            .await?;
        rows
    }

    /// Runs statements as one `BEGIN IMMEDIATE` transaction, always on the thread pool.
    pub(crate) async fn batch(self: &Arc<Self>, statements: &[Statement]) -> Result<Vec<u64>> {
        let statements = statements.to_vec();
        self.run_blocking(move |conn| {
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let mut changed = Vec::with_capacity(statements.len());
            for statement in &statements {
                let mut stmt = tx.prepare_cached(&statement.sql)?;
                changed.push(stmt.execute(params_from_iter(&statement.params))? as u64);
            }
            tx.commit()?;
            Ok(changed)
        })
        .await
    }
}

/// How many statements' column names each thread remembers.
const REMEMBERED_COLUMNS: usize = 64;

thread_local! {
    /// Column names of recent statements, by the address of their SQL text (the typed layer's
    /// statements live for the whole process), so that a read allocates no names.
    static COLUMNS: std::cell::RefCell<std::collections::HashMap<usize, Arc<[String]>>> =
        std::cell::RefCell::new(std::collections::HashMap::with_capacity(REMEMBERED_COLUMNS));
}

/// The column names of `stmt`: remembered ones when they still match, name by name (the address
/// of a freed SQL text may come back holding another statement), else read and remembered.
fn column_names(stmt: &rusqlite::Statement<'_>, sql: &str) -> Arc<[String]> {
    let address = sql.as_ptr() as usize;
    let count = stmt.column_count();
    let matches = |names: &Arc<[String]>| {
        names.len() == count
            && names
                .iter()
                .enumerate()
                .all(|(i, name)| stmt.column_name(i).is_ok_and(|n| n == name))
    };
    COLUMNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(names) = cache.get(&address).filter(|names| matches(names)) {
            return names.clone();
        }
        let names: Arc<[String]> = stmt.column_names().map(str::to_owned).collect();
        if cache.len() >= REMEMBERED_COLUMNS {
            cache.clear();
        }
        cache.insert(address, names.clone());
        names
    })
}

/// Arms a connection's step budget for one inline statement, and disarms it when dropped (also
/// on panic).
struct Armed<'a>(&'a AtomicUsize);

impl<'a> Armed<'a> {
    fn new(budget: &'a AtomicUsize, read_only: bool) -> Self {
        budget.store(
            if read_only { INLINE_BUDGET } else { UNLIMITED },
            Ordering::Relaxed,
        );
        Armed(budget)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.store(UNLIMITED, Ordering::Relaxed);
    }
}

/// Refuses a statement that left a transaction open (a raw `BEGIN`), rolling it back, so that
/// the pooled connection never carries it into another caller's statements. Use `batch` for
/// transactions.
fn close_transaction<T>(conn: &Connection, result: rusqlite::Result<T>) -> rusqlite::Result<T> {
    if conn.is_autocommit() {
        return result;
    }
    let _ = conn.execute_batch("ROLLBACK");
    result.and(Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some("a statement left a transaction open and was rolled back: run transactions with batch()".into()),
    )))
}

fn execute(conn: &Connection, sql: &str, params: &[Value]) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.execute(params_from_iter(params)).map(|n| n as u64)
}

/// Reads every row. A decode failure (TEXT that is not UTF-8) is returned inside `Ok`, so that
/// only SQLite's own errors decide whether to hand off.
///
/// `inline`: on the caller's thread, where a statement that writes (`... RETURNING`) must not
/// run: it is sent to the thread pool instead.
fn query(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    inline: bool,
) -> rusqlite::Result<Result<Vec<Row>>> {
    let mut stmt = conn.prepare_cached(sql)?;
    if inline && !stmt.readonly() {
        return Err(offload_please());
    }
    let columns = column_names(&stmt, sql);
    let width = columns.len();
    let mut rows = stmt.query(params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            match read_value(row.get_ref(i)?, i) {
                Ok(value) => values.push(value),
                Err(error) => return Ok(Err(error)),
            }
        }
        out.push(Row::new(columns.clone(), values));
    }
    Ok(Ok(out))
}

thread_local! {
    static INLINE_CALLS: Cell<u32> = const { Cell::new(0) };
}

/// Yields once to the executor every [`YIELD_EVERY`] calls on this thread; otherwise ready at
/// once.
fn yield_now_and_then() -> YieldIfDue {
    let due = INLINE_CALLS.with(|calls| {
        let n = calls.get().wrapping_add(1);
        calls.set(n);
        n % YIELD_EVERY == 0
    });
    YieldIfDue { pending: due }
}

struct YieldIfDue {
    pending: bool,
}

impl Future for YieldIfDue {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::take(&mut self.pending) {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}
