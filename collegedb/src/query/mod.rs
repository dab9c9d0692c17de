//! Typed queries across shards: filters on typed column handles, ordering, limits, counts,
//! aggregates and bulk writes, executed as a distributed SQL router (Vitess VTGate, Citus) runs
//! them.
//!
//! Layout: [`Column`] handles and their operators (`column`), [`Filter`] trees rendered with
//! sea-query (`filter`), the [`Query`] builder (`builder`), routing and the k-way merge
//! (`route`), keyset pages (`page`), projections and `distinct` (`project`), partial aggregates (`aggregate`) and fenced bulk writes
//! (`write`).
//!
//! ```
//! use collegedb::{CollegeDb, Config, Sharded};
//!
//! #[derive(Sharded, Debug, Clone, PartialEq)]
//! #[sharded(table = "users")]
//! struct User {
//!     #[sharded(key)]
//!     id: String,
//!     name: String,
//!     age: i64,
//!     email: Option<String>,
//! }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # pollster::block_on(async {
//! let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c"]), dir.path())?;
//! User::create_table(&db).await?;
//! for (id, age) in [("ada", 36), ("bob", 17), ("cy", 52)] {
//!     let user = User { id: id.into(), name: id.to_uppercase(), age, email: None };
//!     User::insert(&db, &user).await?;
//! }
//! let f = User::fields();
//!
//! // Scatters to every shard, ORDER BY and LIMIT pushed down, answers merged.
//! let adults = User::query()
//!     .filter(f.age().ge(18).and(f.email().is_null()))
//!     .order_by(f.age().desc())
//!     .limit(10)
//!     .all(&db)
//!     .await?;
//! assert_eq!(adults.iter().map(|u| u.age).collect::<Vec<_>>(), [52, 36]);
//!
//! // Pins the key: runs on the owner only, like `find`.
//! let ada = User::query().filter(f.id().eq("ada")).first(&db).await?;
//! assert_eq!(ada.map(|u| u.age), Some(36));
//!
//! assert_eq!(User::query().filter(f.name().starts_with("B")).count(&db).await?, 1);
//! assert!(!User::query().filter(f.id().is_in(["zed", "yan"])).exists(&db).await?);
//! # Ok::<(), collegedb::Error>(()) }).unwrap();
//! ```
//!
//! # What runs where
//!
//! | query | shards asked | rows crossing the wire |
//! | --- | --- | --- |
//! | filter pins the key (`key.eq(v)`, `key.is_in(list)`, or an `and` holding one) | the owner of each key, found like `find`: one fenced statement per hash shard for hash-first reads, one per key ([`PINNED_CONCURRENCY`] at a time) otherwise | the matching rows |
//! | any other filter, `all`/`first` | every serving shard, concurrently | at most `N·(offset + limit)` for `N` shards |
//! | any other filter, `count` | every serving shard | one per shard (`COUNT(*)`) |
//! | any other filter, `exists` | every serving shard | at most one per shard (`LIMIT 1`) |
//! | [`Query::page`] | as `all`, after the cursor | at most `N·(limit + 1)`, at any depth |
//! | [`Query::select`], [`Projected::distinct`] | as `all` | at most `N·(offset + limit)` tuples |
//! | [`Query::aggregate`] | every serving shard | one per group and shard (partials; see [`Aggregate`]) |
//! | [`Query::update_many`], [`Query::delete_many`], pinned | each key's owner, with the fenced point statement of `update`/`delete` | none |
//! | [`Query::update_many`], [`Query::delete_many`], other filter | every serving shard: the matching keys, then one guarded transaction | the matching keys |
//!
//! Pinned queries carry the slot fence of `find` (see [`crate::fence`]): a shard that no longer
//! owns the key's slot refuses, and the router reloads the map and asks the new owner.
//! Scattered reads carry no fence: while a move copies a slot, a row of that slot may be seen
//! on both shards, as with [`crate::scan`] and `count`. A query fails if any shard it needs
//! fails: a result with a shard missing would silently lack rows.
//!
//! Every value is bound, never spliced into SQL; statements are built with sea-query. `like`
//! patterns use `ESCAPE '\'`, and `contains`/`starts_with`/`ends_with` escape `%`, `_` and `\`
//! in their text. Ordering follows SQLite: `NULL` first ascending, text by UTF-8 bytes; ties are
//! broken by the key, so a query returns the same rows in the same order on every run and on
//! any number of shards.

mod aggregate;
mod builder;
mod column;
mod filter;
mod page;
mod pinned;
mod project;
mod route;
mod write;

pub use aggregate::{Aggregate, AggregateRow, Having, Numeric};
pub use builder::{PartialRows, Query};
pub use column::{escape_like, Column, Comparable, Json, Operand, OrderBy, Textual, LIKE_ESCAPE};
pub use filter::{Filter, INLINE_LIST, MAX_LIKE_PATTERN_BYTES};
pub use page::{Cursor, QueryPage, DEFAULT_PAGE_SIZE};
pub use project::{Projected, Projection};
pub use route::{QueryReport, PINNED_CONCURRENCY};
pub use write::{Assignment, WriteReport};
