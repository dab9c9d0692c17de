//! The seams between the router and the outside world.
//!
//! A [`Backend`] bundles three services: [`ShardConn`] (runs SQL on one shard database),
//! [`Directory`](crate::directory::Directory) (the key-to-shard store) and [`Coordinator`] (the round-robin counter). The router
//! is generic over the bundle, so the hot path is monomorphized: no boxing, no dynamic dispatch.
//!
//! Futures returned here are `Send` on native targets, so the library works inside multi-threaded
//! runtimes such as tokio, and carry no `Send` bound on `wasm32`, where JavaScript objects cannot
//! cross threads. [`MaybeSend`] and [`MaybeSync`] express that.

#[cfg(feature = "cloudflare")]
pub mod cloudflare;
#[cfg(all(feature = "embedded", not(target_arch = "wasm32")))]
pub mod embedded;

use std::future::Future;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::slots::ShardMap;
use crate::value::{ColumnValue, Value};

/// `Send` on native targets; no bound on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets; no bound on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// `Send + Sync` on native targets; no bound on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSync for T {}
/// `Send + Sync` on native targets; no bound on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSync for T {}

/// One SQL statement with its bound parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// SQL text with `?` placeholders.
    pub sql: String,
    /// Values for the placeholders, in order.
    pub params: Vec<Value>,
}

impl Statement {
    /// A statement from SQL text and parameters.
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Self {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}

/// One result row: values in column order, with the column names shared across the result set.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// A row from shared column names and its values (same length).
    pub fn new(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        debug_assert_eq!(columns.len(), values.len());
        Row { columns, values }
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Takes the values out.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// The raw value of a column by name.
    pub fn value(&self, column: &str) -> Option<&Value> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.values.get(index)
    }

    /// Reads a column by name as a Rust type.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use collegedb::{Row, Value};
    /// let row = Row::new(Arc::from(vec!["n".to_string()]), vec![Value::Integer(7)]);
    /// assert_eq!(row.get::<i64>("n").unwrap(), 7);
    /// assert_eq!(row.get::<i64>("missing").unwrap_err().code(), "DECODE_FAILED");
    /// ```
    pub fn get<T: ColumnValue>(&self, column: &str) -> Result<T> {
        let value = self
            .value(column)
            .ok_or_else(|| Error::decode(column, "no such column in the result"))?;
        T::from_value(value.clone()).map_err(|e| match e {
            Error::Decode { message, .. } => Error::decode(column, message),
            other => other,
        })
    }
}

/// Runs SQL on one shard database.
pub trait ShardConn: MaybeSync + 'static {
    /// Runs a point write (one row by key) and returns the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value])
        -> impl Future<Output = Result<u64>> + MaybeSend;

    /// Runs a statement of unknown cost (raw SQL) and returns the number of rows it changed.
    /// Backends that run [`ShardConn::execute`] on the caller's thread run this where a long
    /// statement cannot hold an async executor (the embedded backend: a blocking thread pool).
    fn execute_raw(
        &self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<u64>> + MaybeSend {
        self.execute(sql, params)
    }

    /// Runs a query of unknown cost (a page of a move, raw SQL) and returns its rows; backends
    /// that run [`ShardConn::query`] on the caller's thread run this on a thread pool.
    fn query_raw(
        &self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<Vec<Row>>> + MaybeSend {
        self.query(sql, params)
    }

    /// The most bound parameters one statement may carry on this shard: D1's 100 by default.
    /// Only the mover's bulk statements use more where the backend allows it; the typed layer
    /// stays within 100 everywhere, so that code tested natively runs on D1.
    fn max_parameters(&self) -> usize {
        crate::model::MAX_BOUND_PARAMETERS
    }

    /// Whether SQL on this shard can call `collegedb_slot(key)`, the slot of a key (see
    /// [`crate::slots::slot_of_stored`]): the embedded backend registers it; D1 cannot.
    fn computes_slots(&self) -> bool {
        false
    }

    /// Runs a query and returns its rows.
    fn query(
        &self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<Vec<Row>>> + MaybeSend;

    /// Runs statements as one transaction: all or none. Returns rows changed per statement.
    fn batch(&self, statements: &[Statement])
        -> impl Future<Output = Result<Vec<u64>>> + MaybeSend;

    /// The database's size in bytes.
    fn size_bytes(&self) -> impl Future<Output = Result<u64>> + MaybeSend;

    /// This shard with every statement on its primary database: itself, except for a shard that
    /// reads through a D1 session (see [`crate::session`]).
    fn primary(&self) -> &Self {
        self
    }
}

/// A change in a table's row count on one shard, reported by the router's writes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowDelta {
    /// The shard's name.
    pub shard: String,
    /// The table.
    pub table: String,
    /// Rows added (negative: removed).
    pub delta: i64,
}

/// Hands out round-robin tickets and keeps statistics. Tickets of one table increase by one per
/// call across every process sharing the coordinator, so `ticket % shards` spreads new keys evenly.
pub trait Coordinator: MaybeSync + 'static {
    /// The next ticket for `table`.
    fn next_ticket(&self, table: &str) -> impl Future<Output = Result<u64>> + MaybeSend;

    /// Whether the router should track row-count changes and send them with
    /// [`Coordinator::record_rows`]. Coordinators that compute statistics from the shards
    /// themselves answer `false`, and the router then tracks nothing.
    fn tracks_rows(&self) -> bool {
        false
    }

    /// Applies row-count changes.
    fn record_rows(&self, deltas: Vec<RowDelta>) -> impl Future<Output = Result<()>> + MaybeSend {
        let _ = deltas;
        async { Ok(()) }
    }

    /// Checks that the coordinator answers, for [`CollegeDb::health`](crate::CollegeDb::health).
    /// The default reads the stored shard map (a coordinator that stores none answers at once).
    fn probe(&self) -> impl Future<Output = Result<()>> + MaybeSend {
        async { self.load_map().await.map(drop) }
    }

    /// The stored shard map (see [`crate::slots`]), or `None` when this coordinator stores none
    /// and the configured list's seed is the map.
    fn load_map(&self) -> impl Future<Output = Result<Option<ShardMap>>> + MaybeSend {
        async { Ok(None) }
    }

    /// Stores `map` if the stored map's version is `map.version() - 1` (compare and set), and
    /// returns whether it did. Coordinators that store no map refuse.
    fn store_map(&self, map: &ShardMap) -> impl Future<Output = Result<bool>> + MaybeSend {
        let _ = map;
        async { Err(no_store()) }
    }

    /// A journal document of [`crate::growth`], by name.
    fn load_job(&self, name: &str) -> impl Future<Output = Result<Option<String>>> + MaybeSend {
        let _ = name;
        async { Ok(None) }
    }

    /// Replaces the journal document `name` with `json` (or with `None`, removes it) only if
    /// it holds `expected` now (`None`: only if there is none); returns whether it did. Runners
    /// of a growth operation take and keep it with this, so two of them never both step it.
    fn swap_job(
        &self,
        name: &str,
        expected: Option<&str>,
        json: Option<&str>,
    ) -> impl Future<Output = Result<bool>> + MaybeSend {
        let _ = (name, expected, json);
        async { Err(no_store()) }
    }

    /// Stores (or with `None`, removes) a journal document.
    fn store_job(
        &self,
        name: &str,
        json: Option<&str>,
    ) -> impl Future<Output = Result<()>> + MaybeSend {
        let _ = (name, json);
        async { Err(no_store()) }
    }
}

fn no_store() -> Error {
    Error::config(
        "this backend's coordinator does not store a shard map yet, so shards cannot be added or drained on it",
    )
}

/// A bundle of shard, directory and coordinator implementations for one platform.
pub trait Backend: 'static {
    /// Runs SQL on one shard.
    type Shard: ShardConn;
    /// Stores key-to-shard entries.
    type Directory: crate::directory::Directory;
    /// Hands out round-robin tickets.
    type Coordinator: Coordinator;
}
