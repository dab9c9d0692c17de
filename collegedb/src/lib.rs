//! # collegedb
//!
//! Horizontal sharding of SQLite-style data across Cloudflare D1 databases, with a typed model
//! layer. The same code runs natively on an embedded backend (one SQLite file per shard).
//!
//! ```
//! use collegedb::{CollegeDb, Config, Sharded};
//!
//! #[derive(Sharded, Debug, Clone, PartialEq)]
//! #[sharded(table = "users", read = "hash", write = "hash")]
//! struct User {
//!     #[sharded(key)]
//!     id: String,
//!     name: String,
//!     email: Option<String>,
//! }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # pollster::block_on(async {
//! let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c"]), dir.path())?;
//! User::create_table(&db).await?;
//!
//! let alice = User { id: "alice".into(), name: "Alice".into(), email: None };
//! User::insert(&db, &alice).await?;
//! assert_eq!(User::find(&db, "alice").await?, Some(alice));
//! assert_eq!(User::find(&db, "nobody").await?, None);
//! # Ok::<(), collegedb::Error>(()) }).unwrap();
//! ```
//!
//! ## Where things live
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | shards, regions, priorities, default strategies |
//! | [`placement`] | where a new key goes under each strategy (pure, no I/O) |
//! | [`directory`] | the key-to-shard store trait and its in-memory cache |
//! | [`marker`] | off-hash markers: when a hash-first miss is final without a directory read |
//! | [`router`] | which shard serves a key: the routing rules |
//! | [`slots`] | hash slots and the stored, versioned shard map |
//! | [`fence`] | how each shard refuses statements routed by an old map |
//! | [`shard_map`] | the check that refuses configurations that would strand rows |
//! | [`backend`] | the traits a platform implements, and the embedded implementation |
//! | [`model`], [`crud`] | the typed layer behind `#[derive(Sharded)]`: one row by key |
//! | [`bulk`] | writes of many rows (`insert_many`) |
//! | [`colocate`] | tables whose rows are placed by another table's key, and move with it |
//! | [`batch`] | atomic batches of writes on the shard that owns one key (`db.batch_for`) |
//! | [`unique`] | unique secondary lookups (`find_by_email`), kept in the consistent-lookup order |
//! | [`scan`] | cross-shard scans in key order |
//! | [`query`] | typed queries across shards: filters, ordering, limits, counts, aggregates, bulk writes |
//! | [`raw`] | raw routed SQL, per-shard SQL, scatter-gather, stats, flush |
//! | [`growth`] | adding and draining shards of a live deployment: moves, journal, status |
//! | [`adopt`] | taking over databases that already hold rows |
//! | [`verify`] | an fsck of placement: rows not where the router looks, keys on two shards |
//! | [`health`] | a bounded-time probe of every shard, the directory and the coordinator |
//! | [`metrics`] | per-shard counters and latency histograms of routed calls, `tracing` spans |
//! | [`dashboard`] | the data of the HTML dashboard, and the page |
//! | [`error`] | the error type and its stable codes |

#![warn(missing_docs)]

pub mod adopt;
pub mod backend;
pub mod batch;
pub mod bulk;
pub mod colocate;
pub mod config;
pub mod crud;
pub mod dashboard;
pub mod directory;
pub mod error;
pub mod fence;
pub mod geo;
pub mod growth;
pub mod health;
pub mod key;
pub mod marker;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod placement;
pub mod query;
pub mod raw;
pub mod router;
pub mod scan;
pub mod session;
pub mod shard_map;
pub mod simulate;
pub mod slots;
pub mod unique;
pub mod value;
pub mod verify;

pub use adopt::{AdoptReport, AdoptedTable};
#[cfg(all(feature = "embedded", not(target_arch = "wasm32")))]
pub use backend::embedded::Embedded;
pub use backend::{Backend, Row, Statement};
pub use batch::Batch;
pub use bulk::InsertReport;
pub use config::{Config, CoordinatorFallback, Region, ShardConfig, Strategies, Strategy};
pub use error::{Error, Result, MAX_SAFE_INTEGER};
pub use growth::{GrowthOptions, GrowthStatus, Job};
pub use health::{ComponentHealth, ComponentKind, Health};
pub use key::{Key, MAX_KEY_BYTES};
pub use metrics::MetricsSnapshot;
pub use model::{
    Model, RowId, MAX_BOUND_PARAMETERS, MAX_COLUMNS, MAX_STATEMENT_BYTES, MAX_VALUE_BYTES,
};
pub use query::{Filter, Query};
pub use raw::{Scatter, ShardStats, TableScope};
pub use router::{CollegeDb, DirectoryOps};
pub use scan::Page;
pub use value::{ColumnValue, Value};
pub use verify::{TableInfo, VerifyReport};

/// Derives a sharded model. See the crate README for every attribute.
pub use collegedb_derive::Sharded;

/// The README's examples, compiled as doc tests so they cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// A database on the embedded backend.
#[cfg(all(feature = "embedded", not(target_arch = "wasm32")))]
pub type EmbeddedDb = CollegeDb<Embedded>;

/// The stable surface that `#[derive(Sharded)]` expands to. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::backend::Backend;
    pub use crate::config::{Strategy, StrategyOverride};
    pub use crate::error::{Error, Result};
    pub use crate::key::{KeyArg, ShardKey};
    pub use crate::model::{ColumnDef, Model, ModelSql};
    pub use crate::query::{Column, Json, Query};
    pub use crate::router::CollegeDb;
    pub use crate::value::{json, ColumnType, ColumnValue, Value};
    pub use crate::{bulk, crud, scan, unique};
    pub use std::sync::OnceLock;
    pub use std::vec::Vec;

    /// Reads the next column, naming it in decode errors.
    pub fn column<T: ColumnValue>(
        values: &mut std::vec::IntoIter<Value>,
        name: &'static str,
    ) -> Result<T> {
        next_value(values, name).and_then(|v| T::from_value(v).map_err(|e| rename_column(e, name)))
    }

    /// Reads the next column as JSON, naming it in decode errors.
    pub fn json_column<T: serde::de::DeserializeOwned>(
        values: &mut std::vec::IntoIter<Value>,
        name: &'static str,
    ) -> Result<T> {
        next_value(values, name)
            .and_then(|v| json::from_value(v).map_err(|e| rename_column(e, name)))
    }

    fn next_value(values: &mut std::vec::IntoIter<Value>, name: &'static str) -> Result<Value> {
        values
            .next()
            .ok_or_else(|| crate::Error::decode(name, "missing from the row"))
    }

    fn rename_column(error: Error, name: &'static str) -> Error {
        match error {
            Error::Decode { message, .. } => crate::Error::decode(name, message),
            other => other,
        }
    }

    /// Compile-time assertion that a field type can be stored.
    pub const fn assert_column<T: ColumnValue>() {}
    /// Compile-time assertion that a key type can be a shard key.
    pub const fn assert_shard_key<T: ShardKey>() {}

    /// A `shard_key` field's type and its parent's key type are one type.
    #[diagnostic::on_unimplemented(
        message = "the `shard_key` field is a `{Self}`, but the parent's key is a `{K}`",
        label = "must be the parent's key type, `{K}`",
        note = "a colocated model's `#[sharded(shard_key)]` field holds its parent's key: give it the type of the parent's `#[sharded(key)]` field"
    )]
    pub trait SameKey<K> {}
    impl<K> SameKey<K> for K {}
    /// Compile-time assertion that a `shard_key` field has its parent's key type.
    pub const fn assert_same_key<T: SameKey<K>, K>() {}

    /// Compile-time assertion that a colocated model's parent is not colocated in turn (its
    /// scope is its own table): groups are one level deep.
    pub const fn assert_not_colocated<P: Model>() {
        let (scope, table) = (P::SCOPE.as_bytes(), P::TABLE.as_bytes());
        let mut same = scope.len() == table.len();
        let mut i = 0;
        while same && i < scope.len() {
            same = scope[i] == table[i];
            i += 1;
        }
        assert!(
            same,
            "the parent of a colocated model is colocated itself: groups are one level deep, so colocate with the parent's parent instead"
        );
    }
}
