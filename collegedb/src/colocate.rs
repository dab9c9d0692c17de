//! Colocation: the rows of a table placed by another table's key, so that they live on the shard
//! of that key and move with it (Citus's colocation groups).
//!
//! `db.colocate("posts", "author", "users")` says: a row of `posts` belongs with the `users` key
//! its `author` column holds. Each shard records it in `_collegedb_colocated (tbl, route,
//! scope)`, and from then on:
//!
//! * writes and reads of `posts` route by `author` within the directory scope of `users`: raw
//!   SQL through `db.table("users")` with the author as the key, and the typed layer of a model
//!   that names its parent;
//! * growth moves `posts` rows together with their `users` key: `add_shard` and `drain_shard`
//!   move them by the slot (or directory entry) of `author`, and `reassign("users", key, ..)`
//!   moves the key's `posts` rows with its `users` row;
//! * `verify_table("posts", ..)` checks them against the place of their `users` key.
//!
//! Many rows share one value of the route column, so the colocated table's own primary key is
//! usually composite (`PRIMARY KEY (author, id)`). A table is colocated with one scope, and a
//! scope is not itself colocated: groups are one level deep.

use std::collections::BTreeMap;

use crate::backend::{Backend, ShardConn, Statement};
use crate::error::{Error, Result};
use crate::router::CollegeDb;
use crate::value::Value;

/// The registry's table on every shard.
pub const TABLE: &str = "_collegedb_colocated";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS _collegedb_colocated \
     (tbl TEXT PRIMARY KEY NOT NULL, route TEXT NOT NULL, scope TEXT NOT NULL) WITHOUT ROWID";
const ADD: &str = "INSERT OR IGNORE INTO _collegedb_colocated (tbl, route, scope) VALUES (?, ?, ?)";
const ALL: &str = "SELECT tbl, route, scope FROM _collegedb_colocated";

/// How one colocated table routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Colocation {
    /// The column holding the scope table's key.
    pub route: String,
    /// The table whose keys place the rows (its directory entries, markers and tombstones).
    pub scope: String,
}

fn missing_table(error: &Error) -> bool {
    matches!(error, Error::QueryFailed { message, .. } if message.contains("no such table: _collegedb_colocated"))
}

/// The colocated tables recorded on `shard`, by table.
pub(crate) async fn of_shard<S: ShardConn>(shard: &S) -> Result<BTreeMap<String, Colocation>> {
    let rows = match shard.query_raw(ALL, &[]).await {
        Ok(rows) => rows,
        Err(error) if missing_table(&error) => return Ok(BTreeMap::new()),
        Err(error) => return Err(error),
    };
    rows.into_iter()
        .map(|row| {
            Ok((
                row.get::<String>("tbl")?,
                Colocation {
                    route: row.get::<String>("route")?,
                    scope: row.get::<String>("scope")?,
                },
            ))
        })
        .collect()
}

/// The colocated tables recorded on any shard of `db`, by table (a registration cut short
/// reaches some shards only; every shard that moves rows must know it).
pub(crate) async fn all<B: Backend>(db: &CollegeDb<B>) -> Result<BTreeMap<String, Colocation>> {
    let mut known = BTreeMap::new();
    for shard in db.shards() {
        known.extend(of_shard(shard).await?);
    }
    Ok(known)
}

/// The statements that record `entries` on a shard.
fn recording<'a>(
    entries: impl IntoIterator<Item = (&'a String, &'a Colocation)>,
) -> Vec<Statement> {
    let mut statements = vec![Statement::new(CREATE, Vec::new())];
    statements.extend(entries.into_iter().map(|(table, c)| {
        Statement::new(
            ADD,
            vec![
                Value::Text(table.clone()),
                Value::Text(c.route.clone()),
                Value::Text(c.scope.clone()),
            ],
        )
    }));
    statements
}

/// Copies the registry of `from` to `to` (a shard receiving rows receives how they route).
pub(crate) async fn copy<S: ShardConn>(from: &S, to: &S) -> Result<()> {
    let entries = of_shard(from).await?;
    if entries.is_empty() {
        return Ok(());
    }
    to.batch(&recording(&entries)).await.map(drop)
}

fn identifier(name: &str, what: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
        && !name.starts_with("_collegedb");
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!(
            "invalid {what} `{name}`: use 1 to 64 ASCII letters, digits or `_`, not starting with a digit"
        )))
    }
}

/// Refuses a chain: `scope` colocated in turn, or tables colocated with `table` already.
pub(crate) fn check_chain(
    known: &BTreeMap<String, Colocation>,
    table: &str,
    scope: &str,
) -> Result<()> {
    if let Some(parent) = known.get(scope) {
        return Err(Error::config(format!(
            "`{scope}` is itself colocated with `{}`: colocate `{table}` with `{}` instead",
            parent.scope, parent.scope
        )));
    }
    if known.values().any(|c| c.scope == table) {
        return Err(Error::config(format!(
            "other tables are colocated with `{table}`: it cannot be colocated in turn"
        )));
    }
    Ok(())
}

impl<B: Backend> CollegeDb<B> {
    /// Records on every shard that the rows of `table` are placed by the key of `scope` held in
    /// their `route` column: they live on that key's shard and move with it (see
    /// [`crate::colocate`]). Idempotent; a table already colocated otherwise, a scope that is
    /// itself colocated, or a table colocated with itself is refused with `CONFIG_INVALID`, and
    /// nothing is written.
    ///
    /// Both tables must exist (on some shard): `route` must be a column of `table`, `table` must
    /// have a primary key (a resumed move copies rows again, harmlessly only by key), and
    /// `scope` must have a single-column primary key. A table that holds rows already, or a
    /// growth operation in progress, is refused too: either would change how existing rows
    /// route.
    ///
    /// Give `table` a primary key that starts with the route column, its other columns NOT NULL
    /// and declared INTEGER or TEXT (for example `PRIMARY KEY (author, id)`): moves then read it
    /// in pages of rows, inside groups too, along that index. Without such a key they read whole groups of rows per key, and a
    /// route column without an index makes them scan the table for each page.
    pub async fn colocate(&self, table: &str, route: &str, scope: &str) -> Result<()> {
        identifier(table, "table name")?;
        identifier(route, "column name")?;
        identifier(scope, "table name")?;
        if table == scope {
            return Err(Error::config(format!(
                "`{table}` cannot be colocated with itself"
            )));
        }
        let wanted = Colocation {
            route: route.to_owned(),
            scope: scope.to_owned(),
        };
        let known = all(self).await?;
        if let Some(existing) = known.get(table) {
            if *existing != wanted {
                return Err(Error::config(format!(
                    "`{table}` is already colocated with `{}` by `{}`: a table keeps the scope its rows were placed by",
                    existing.scope, existing.route
                )));
            }
            // Recorded already: make sure every shard has it (a call cut short records some).
            if self.shards().len() > 1 {
                let entries = BTreeMap::from([(table.to_owned(), wanted)]);
                for shard in self.shards() {
                    shard.batch(&recording(&entries)).await?;
                }
            }
            return Ok(());
        }
        if let Some(operation) = self.growth_in_progress().await? {
            return Err(Error::GrowthInProgress {
                operation: operation.to_string(),
            });
        }
        check_chain(&known, table, scope)?;
        self.check_tables(table, route, scope).await?;
        let entries = BTreeMap::from([(table.to_owned(), wanted)]);
        for shard in self.shards() {
            shard.batch(&recording(&entries)).await?;
        }
        Ok(())
    }

    /// Checks, on the shards that have them, that `route` is a column of `table`, that `table`
    /// has a primary key and holds no row yet, and that `scope` has a single-column primary key.
    async fn check_tables(&self, table: &str, route: &str, scope: &str) -> Result<()> {
        let (mut seen_table, mut seen_scope) = (false, false);
        for shard in self.shards() {
            let info = shard
                .query_raw(
                    "SELECT name, pk FROM pragma_table_info(?)",
                    &[Value::Text(table.to_owned())],
                )
                .await?;
            if !info.is_empty() {
                seen_table = true;
                if !info
                    .iter()
                    .any(|row| row.value("name") == Some(&Value::Text(route.into())))
                {
                    return Err(Error::config(format!(
                        "`{table}` has no column `{route}`: name the column that holds `{scope}`'s key"
                    )));
                }
                if !info
                    .iter()
                    .any(|row| matches!(row.value("pk"), Some(Value::Integer(n)) if *n > 0))
                {
                    return Err(Error::config(format!(
                        "`{table}` has no primary key: a move that is resumed copies rows again, and only a primary key makes that harmless; declare one, for example PRIMARY KEY ({route}, id)"
                    )));
                }
                if crate::growth::capture::count(shard, table).await? > 0 {
                    return Err(Error::config(format!(
                        "`{table}` holds rows already, placed by its own key: colocating it would strand them; colocate it while it is empty"
                    )));
                }
            }
            if crate::verify::key_column(shard, scope).await?.is_some() {
                seen_scope = true;
            }
        }
        if !seen_table {
            return Err(Error::config(format!(
                "`{table}` does not exist: create it on every shard first"
            )));
        }
        if !seen_scope {
            return Err(Error::config(format!(
                "`{scope}` does not exist with a single-column primary key: its key places `{table}`'s rows"
            )));
        }
        Ok(())
    }

    /// How `table` routes if it is colocated, as recorded on the first shard that records it.
    pub async fn colocation(&self, table: &str) -> Result<Option<Colocation>> {
        for shard in self.shards() {
            if let Some(found) = of_shard(shard).await?.remove(table) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}
