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

use crate::backend::ShardConn;
use crate::error::{Error, Result};
use crate::value::Value;

/// The marker table's name; [`crate::raw`] leaves it out of statistics and `flush`.
pub const TABLE: &str = "_collegedb_placed";

const CREATE: &str =
    "CREATE TABLE IF NOT EXISTS _collegedb_placed (scope TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID";
const SET: &str = "INSERT OR IGNORE INTO _collegedb_placed (scope) VALUES (?)";
const GET: &str = "SELECT 1 FROM _collegedb_placed WHERE scope = ?";

fn missing_table(error: &Error) -> bool {
    matches!(error, Error::QueryFailed { message, .. } if message.contains("no such table: _collegedb_placed"))
}

/// Creates the marker table on `shard` if it does not exist.
pub(crate) async fn create<S: ShardConn>(shard: &S) -> Result<()> {
    shard.execute(CREATE, &[]).await.map(drop)
}

/// Sets the marker for `table` on `shard`, creating the marker table on first use.
pub(crate) async fn set<S: ShardConn>(shard: &S, table: &str) -> Result<()> {
    let params = [Value::Text(table.to_owned())];
    match shard.execute(SET, &params).await {
        Err(error) if missing_table(&error) => {
            create(shard).await?;
            shard.execute(SET, &params).await.map(drop)
        }
        result => result.map(drop),
    }
}

/// Runs a query that reads the marker table (such as `select_by_key_or_marker`), creating the
/// marker table first if the shard has none.
pub(crate) async fn query_with<S: ShardConn>(
    shard: &S,
    sql: &str,
    params: &[Value],
) -> Result<Vec<crate::backend::Row>> {
    match shard.query(sql, params).await {
        Err(error) if missing_table(&error) => {
            create(shard).await?;
            shard.query(sql, params).await
        }
        result => result,
    }
}

/// Whether the marker for `table` is set on `shard`. A shard without the marker table has no
/// marker.
pub(crate) async fn get<S: ShardConn>(shard: &S, table: &str) -> Result<bool> {
    match shard.query(GET, &[Value::Text(table.to_owned())]).await {
        Ok(rows) => Ok(!rows.is_empty()),
        Err(error) if missing_table(&error) => Ok(false),
        Err(error) => Err(error),
    }
}
