//! The SQL a move runs on shards: change capture on the giving shard, schema copies to the
//! receiving one, and row copies, deletes and pages of rows in key order.
//!
//! Change capture is what stands in for a binlog: while a shard gives rows away, an
//! `AFTER INSERT / UPDATE / DELETE` trigger on each of its tables appends the row's key to
//! `_collegedb_changes`, in the same transaction as the write. SQL cannot compute XXH3, so the
//! triggers log every key and the mover keeps those of the moving slots.

use std::sync::Arc;

use crate::backend::{Row, ShardConn, Statement};
use crate::error::Result;
use crate::model::MAX_BOUND_PARAMETERS;
use crate::raw::quote_ident;
use crate::value::Value;

/// The change log's table.
pub(crate) const CHANGES: &str = "_collegedb_changes";

/// One logged change: its sequence number, table and key.
pub(crate) struct Change {
    pub seq: i64,
    pub table: String,
    pub key: Value,
}

fn trigger_names(table: &str) -> [String; 3] {
    ["i", "u", "d"].map(|kind| quote_ident(&format!("_collegedb_cc_{kind}_{table}")))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Installs change capture for `tables` (`(table, key column)`) on `shard`, idempotently.
pub(crate) async fn install<S: ShardConn>(shard: &S, tables: &[(String, String)]) -> Result<()> {
    let mut statements = vec![Statement::new(
        format!(
            "CREATE TABLE IF NOT EXISTS {CHANGES} \
             (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, k)"
        ),
        Vec::new(),
    )];
    for (table, key) in tables {
        let [insert, update, delete] = trigger_names(table);
        let (t, name, k) = (quote_ident(table), literal(table), quote_ident(key));
        let log = |row: &str| format!("INSERT INTO {CHANGES} (tbl, k) VALUES ({name}, {row}.{k});");
        for sql in [
            format!(
                "CREATE TRIGGER IF NOT EXISTS {insert} AFTER INSERT ON {t} BEGIN {} END",
                log("NEW")
            ),
            format!(
                "CREATE TRIGGER IF NOT EXISTS {update} AFTER UPDATE ON {t} BEGIN {} {} END",
                log("OLD"),
                log("NEW")
            ),
            format!(
                "CREATE TRIGGER IF NOT EXISTS {delete} AFTER DELETE ON {t} BEGIN {} END",
                log("OLD")
            ),
        ] {
            statements.push(Statement::new(sql, Vec::new()));
        }
    }
    shard.batch(&statements).await.map(drop)
}

/// Removes change capture from `shard` (triggers of `tables`, then the log), idempotently.
pub(crate) async fn remove<S: ShardConn>(shard: &S, tables: &[(String, String)]) -> Result<()> {
    let mut statements = Vec::new();
    for (table, _) in tables {
        for trigger in trigger_names(table) {
            statements.push(Statement::new(
                format!("DROP TRIGGER IF EXISTS {trigger}"),
                Vec::new(),
            ));
        }
    }
    statements.push(Statement::new(
        format!("DROP TABLE IF EXISTS {CHANGES}"),
        Vec::new(),
    ));
    shard.batch(&statements).await.map(drop)
}

/// Up to `limit` logged changes after `after`, oldest first.
pub(crate) async fn read<S: ShardConn>(shard: &S, after: i64, limit: usize) -> Result<Vec<Change>> {
    let rows = shard
        .query(
            &format!("SELECT seq, tbl, k FROM {CHANGES} WHERE seq > ? ORDER BY seq LIMIT ? + 0"),
            &[Value::Integer(after), Value::Integer(limit as i64)],
        )
        .await?;
    rows.into_iter()
        .map(|row| {
            let mut values = row.into_values().into_iter();
            let seq = match values.next() {
                Some(Value::Integer(seq)) => seq,
                _ => 0,
            };
            let table = match values.next() {
                Some(Value::Text(table)) => table,
                _ => String::new(),
            };
            let key = values.next().unwrap_or(Value::Null);
            Ok(Change { seq, table, key })
        })
        .collect()
}

/// Creates on `to` every table and index of `from` that `to` lacks (collegedb's own excepted),
/// with `from`'s own SQL.
pub(crate) async fn copy_schema<S: ShardConn>(from: &S, to: &S) -> Result<()> {
    const SCHEMA: &str = "SELECT type, name, sql FROM sqlite_master \
         WHERE type IN ('table', 'index') AND sql IS NOT NULL \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
         AND name NOT LIKE '\\_collegedb\\_%' ESCAPE '\\' ORDER BY type DESC, name";
    let present: std::collections::HashSet<String> = to
        .query(SCHEMA, &[])
        .await?
        .into_iter()
        .map(|row| row.get::<String>("name"))
        .collect::<Result<_>>()?;
    let mut statements = Vec::new();
    for row in from.query(SCHEMA, &[]).await? {
        if !present.contains(&row.get::<String>("name")?) {
            statements.push(Statement::new(row.get::<String>("sql")?, Vec::new()));
        }
    }
    if !statements.is_empty() {
        to.batch(&statements).await?;
    }
    Ok(())
}

/// Pages of a table's rows in key order.
pub(crate) struct Pages {
    first: String,
    after: String,
}

impl Pages {
    pub(crate) fn new(table: &str, key: &str, keys_only: bool) -> Self {
        let (t, k) = (quote_ident(table), quote_ident(key));
        let columns = if keys_only { k.clone() } else { "*".to_owned() };
        Pages {
            first: format!("SELECT {columns} FROM {t} ORDER BY {k} LIMIT ? + 0"),
            after: format!("SELECT {columns} FROM {t} WHERE {k} > ? ORDER BY {k} LIMIT ? + 0"),
        }
    }

    /// Up to `limit` rows after `after` (from the start when `None`).
    pub(crate) async fn read<S: ShardConn>(
        &self,
        shard: &S,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let limit = Value::Integer(limit as i64);
        match after {
            None => shard.query(&self.first, &[limit]).await,
            Some(key) => shard.query(&self.after, &[key.clone(), limit]).await,
        }
    }
}

/// The rows of `keys` in `table`, read in chunks within the parameter limit.
pub(crate) async fn rows_by_key<S: ShardConn>(
    shard: &S,
    table: &str,
    key: &str,
    keys: &[Value],
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(MAX_BOUND_PARAMETERS) {
        let sql = format!(
            "SELECT * FROM {} WHERE {} IN ({})",
            quote_ident(table),
            quote_ident(key),
            vec!["?"; chunk.len()].join(", ")
        );
        rows.extend(shard.query(&sql, chunk).await?);
    }
    Ok(rows)
}

/// Writes `rows` (all of one table, same columns) to `shard` with `INSERT OR REPLACE`, in one
/// transaction of statements within the parameter limit.
pub(crate) async fn upsert_rows<S: ShardConn>(shard: &S, table: &str, rows: &[Row]) -> Result<()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let columns: Arc<[String]> = first.columns().into();
    let names = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let per_statement = (MAX_BOUND_PARAMETERS / columns.len().max(1)).max(1);
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    let statements: Vec<Statement> = rows
        .chunks(per_statement)
        .map(|chunk| {
            Statement::new(
                format!(
                    "INSERT OR REPLACE INTO {} ({names}) VALUES {}",
                    quote_ident(table),
                    vec![one.as_str(); chunk.len()].join(", ")
                ),
                chunk.iter().flat_map(|row| row.values().to_vec()).collect(),
            )
        })
        .collect();
    shard.batch(&statements).await.map(drop)
}

/// Deletes the rows of `keys` from `table` on `shard`, in one transaction; returns rows deleted.
pub(crate) async fn delete_keys<S: ShardConn>(
    shard: &S,
    table: &str,
    key: &str,
    keys: &[Value],
) -> Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let statements: Vec<Statement> = keys
        .chunks(MAX_BOUND_PARAMETERS)
        .map(|chunk| {
            Statement::new(
                format!(
                    "DELETE FROM {} WHERE {} IN ({})",
                    quote_ident(table),
                    quote_ident(key),
                    vec!["?"; chunk.len()].join(", ")
                ),
                chunk.to_vec(),
            )
        })
        .collect();
    Ok(shard.batch(&statements).await?.iter().sum())
}

/// Rows in `table` on `shard`.
pub(crate) async fn count<S: ShardConn>(shard: &S, table: &str) -> Result<u64> {
    let rows = shard
        .query(
            &format!("SELECT COUNT(*) AS n FROM {}", quote_ident(table)),
            &[],
        )
        .await?;
    Ok(rows
        .first()
        .map(|row| row.get::<i64>("n"))
        .transpose()?
        .unwrap_or(0) as u64)
}
