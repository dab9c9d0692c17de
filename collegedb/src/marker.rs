//! Off-hash markers: how a hash-first lookup knows, without asking the directory, that a key it
//! did not find on its hash shard cannot live anywhere else.
//!
//! Every shard has a small table `_collegedb_placed (scope)`. A row `users` on shard `s` means
//! "some key of `users` whose hash shard is `s` may have a directory entry naming another
//! shard". The rule that keeps it correct is an ordering, as in Vitess's consistent lookup:
//!
//! 1. Before the router writes a directory entry that names a shard other than the key's hash
//!    shard, it sets the marker on the hash shard (idempotent, `INSERT OR IGNORE`).
//! 2. Then it writes the entry, then the row.
//!
//! So when a lookup misses on the hash shard and the marker is absent *at that moment*, no entry
//! naming another shard existed yet, and no row elsewhere either: the miss is final and costs no
//! directory read. When the marker is present, the lookup asks the directory as before.
//!
//! Markers are never removed (removing one safely would need every entry of its scope gone), so
//! a handle caches the markers it has seen, per isolate on Workers (in the
//! [`DirectoryCache`](crate::directory::DirectoryCache)); absence is never cached. A table that
//! only ever had hash placement has no markers, and a miss costs one more query on the hash
//! shard instead of a directory read.

use std::collections::BTreeSet;

use crate::backend::{Backend, ShardConn, Statement};
use crate::error::{Error, Result};
use crate::router::CollegeDb;
use crate::value::Value;

/// The marker table's name; [`crate::raw`] leaves it out of statistics and `flush`.
pub const TABLE: &str = "_collegedb_placed";

const CREATE: &str =
    "CREATE TABLE IF NOT EXISTS _collegedb_placed (scope TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID";
const SET: &str = "INSERT OR IGNORE INTO _collegedb_placed (scope) VALUES (?)";
const GET: &str = "SELECT 1 FROM _collegedb_placed WHERE scope = ?";
const ALL: &str = "SELECT scope FROM _collegedb_placed";

fn missing_table(error: &Error) -> bool {
    matches!(error, Error::QueryFailed { message, .. } if message.contains("no such table: _collegedb_placed"))
}

/// Creates the marker table on shard `index` if it has none, holding every scope marked on any
/// other shard, in one transaction.
///
/// A shard without the table counts as marked for every scope (see [`get`]), so the table must
/// never appear empty on a shard that joined after keys were placed: a shard appended to the list
/// becomes the hash shard of keys whose markers sit on the others. Copying the union keeps every
/// such key's miss going to the directory.
pub(crate) async fn ensure_table<B: Backend>(db: &CollegeDb<B>, index: usize) -> Result<()> {
    let mut scopes = BTreeSet::new();
    for (other, shard) in db.shards().into_iter().enumerate() {
        match shard.query(ALL, &[]).await {
            Ok(_) if other == index => return Ok(()),
            Ok(rows) => {
                for row in rows {
                    scopes.insert(row.get::<String>("scope")?);
                }
            }
            Err(error) if missing_table(&error) => {}
            Err(error) => return Err(error),
        }
    }
    db.shard(index)
        .batch(&create_holding(scopes))
        .await
        .map(drop)
}

/// The statements that create the marker table (if absent) and set `scopes` in it.
fn create_holding(scopes: impl IntoIterator<Item = String>) -> Vec<Statement> {
    let mut statements = vec![Statement::new(CREATE, Vec::new())];
    statements.extend(
        scopes
            .into_iter()
            .map(|scope| Statement::new(SET, vec![Value::Text(scope)])),
    );
    statements
}

/// Sets the marker for `table` on shard `index`, creating the marker table on first use.
pub(crate) async fn set<B: Backend>(db: &CollegeDb<B>, index: usize, table: &str) -> Result<()> {
    let params = [Value::Text(table.to_owned())];
    match db.shard(index).execute(SET, &params).await {
        Err(error) if missing_table(&error) => {
            ensure_table(db, index).await?;
            db.shard(index).execute(SET, &params).await.map(drop)
        }
        result => result.map(drop),
    }
}

/// Whether the marker for `table` is set on `shard`. A shard without the marker table counts as
/// marked: it may have joined after keys were placed (see [`ensure_table`]), or hold data from
/// before markers existed.
pub(crate) async fn get<S: ShardConn>(shard: &S, table: &str) -> Result<bool> {
    match shard.query(GET, &[Value::Text(table.to_owned())]).await {
        Ok(rows) => Ok(!rows.is_empty()),
        Err(error) if missing_table(&error) => Ok(true),
        Err(error) => Err(error),
    }
}

/// Copies every marker of `from` to `to` (a move hands `from`'s slots to `to`, and with them the
/// duty to send misses of those keys to the directory).
pub(crate) async fn copy<S: ShardConn>(from: &S, to: &S) -> Result<()> {
    let scopes = match from.query(ALL, &[]).await {
        Ok(rows) => rows
            .into_iter()
            .map(|row| row.get::<String>("scope"))
            .collect::<Result<Vec<_>>>()?,
        Err(error) if missing_table(&error) => Vec::new(),
        Err(error) => return Err(error),
    };
    to.batch(&create_holding(scopes)).await.map(drop)
}

/// Whether any shard of the map carries `table`'s marker: whether any of its keys may be placed by a
/// directory entry.
pub(crate) async fn any<B: Backend>(db: &CollegeDb<B>, table: &str) -> Result<bool> {
    // Markers sit on hash shards, which are the shards of the map.
    for index in db.serving_shards() {
        if get(db.shard(index), table).await? {
            return Ok(true);
        }
    }
    Ok(false)
}
