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

/// The newest entry of the change log on `shard` (0 when it is empty).
pub(crate) async fn last_seq<S: ShardConn>(shard: &S) -> Result<i64> {
    let rows = shard
        .query(
            &format!("SELECT COALESCE(MAX(seq), 0) AS seq FROM {CHANGES}"),
            &[],
        )
        .await?;
    match rows.first().and_then(|row| row.value("seq")) {
        Some(Value::Integer(seq)) => Ok(*seq),
        _ => Ok(0),
    }
}

/// Creates on `to` every table, index, view and trigger of `from` that `to` lacks (collegedb's
/// own excepted),
/// with `from`'s own SQL. A shard that had no table at all receives `from`'s record of applied
/// migrations with it, in the same transaction: its schema is `from`'s now (see
/// [`crate::migrate`]).
pub(crate) async fn copy_schema<S: ShardConn>(from: &S, to: &S) -> Result<()> {
    let schema = format!(
        "SELECT type, name, sql FROM sqlite_master \
         WHERE type IN ('table', 'index', 'view', 'trigger') AND sql IS NOT NULL \
         AND {} \
         ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, name",
        crate::raw::NOT_INTERNAL
    );
    let present: std::collections::HashSet<String> = to
        .query(&schema, &[])
        .await?
        .into_iter()
        .map(|row| row.get::<String>("name"))
        .collect::<Result<_>>()?;
    let mut statements = Vec::new();
    for row in from.query(&schema, &[]).await? {
        if !present.contains(&row.get::<String>("name")?) {
            statements.push(Statement::new(row.get::<String>("sql")?, Vec::new()));
        }
    }
    if !statements.is_empty() {
        if present.is_empty() {
            statements.extend(crate::migrate::copy_records(from).await?);
        }
        to.batch(&statements).await?;
    }
    Ok(())
}

/// Pages of a table's rows in key order: all of them, or on shards that compute slots in SQL
/// (see [`ShardConn::computes_slots`]), only those of some slots, so that a move reads only the
/// rows it moves.
///
/// A colocated table (many rows per key) is read by `grouping`: with the rest of its primary key
/// (`within`), a page is `limit` rows in `(key, within...)` order and the next continues inside
/// a group; without it, a page is the whole groups of `limit` keys. Keys-only pages list each
/// row's primary key (`key, within...`) when paging rows, else each key once.
pub(crate) struct Pages {
    first: String,
    after: String,
    slots: Option<Value>,
}

impl Pages {
    /// Every row (or key) of `table`.
    pub(crate) fn new(
        table: &str,
        key: &str,
        keys_only: bool,
        grouping: Option<&[String]>,
    ) -> Self {
        Self::build(table, key, keys_only, None, grouping)
    }

    /// The rows (or keys) of `slots` when `shard` can select them in SQL, else every row.
    pub(crate) fn of_slots<S: ShardConn>(
        shard: &S,
        table: &str,
        key: &str,
        keys_only: bool,
        slots: &[u16],
        grouping: Option<&[String]>,
    ) -> Self {
        let filter = shard
            .computes_slots()
            .then(|| Value::Text(serde_json::to_string(slots).expect("slots serialize")));
        Self::build(table, key, keys_only, filter, grouping)
    }

    fn build(
        table: &str,
        key: &str,
        keys_only: bool,
        slots: Option<Value>,
        grouping: Option<&[String]>,
    ) -> Self {
        let (t, k) = (quote_ident(table), quote_ident(key));
        let filter = if slots.is_some() {
            " AND collegedb_slot(".to_owned() + &k + ") IN (SELECT value FROM json_each(?))"
        } else {
            String::new()
        };
        // In a colocated table a NULL key routes nowhere and is left out, so that each key of a
        // page of groups brings at least one row, and a page of fewer rows than `limit` is the
        // last. (Elsewhere the first page has them: the move counts them as unroutable.)
        let start = match (grouping.is_some(), filter.is_empty()) {
            (true, _) => format!(" WHERE {k} IS NOT NULL{filter}"),
            (false, true) => String::new(),
            (false, false) => format!(" WHERE{}", &filter[" AND".len()..]),
        };
        let select = |columns: &str, order: &str, bound: &str| {
            (
                format!("SELECT {columns} FROM {t}{start} ORDER BY {order} LIMIT ? + 0"),
                format!(
                    "SELECT {columns} FROM {t} WHERE {bound}{filter} ORDER BY {order} LIMIT ? + 0"
                ),
            )
        };
        let after_key = format!("{k} > ?");
        let (first, after) = match (keys_only, grouping) {
            (keys_only, Some(within)) if !within.is_empty() => {
                // Pages of rows along the primary key: the key's columns only for keys.
                let order = row_order(key, within);
                let bound = format!("({order}) > ({})", marks(within.len() + 1));
                select(if keys_only { &order } else { "*" }, &order, &bound)
            }
            (true, Some(_)) => select(&format!("DISTINCT {k}"), &k, &after_key),
            (true, None) => select(&k, &k, &after_key),
            (false, None) => select("*", &k, &after_key),
            (false, Some(_)) => {
                let (first, after) = select(&format!("DISTINCT {k}"), &k, &after_key);
                let groups =
                    |keys: String| format!("SELECT * FROM {t} WHERE {k} IN ({keys}) ORDER BY {k}");
                (groups(first), groups(after))
            }
        };
        Pages {
            first,
            after,
            slots,
        }
    }

    /// Up to `limit` rows (or keys, or groups) after `after`, the position a cursor keeps (see
    /// [`TableCursor`](super::TableCursor)); from the start when `None`.
    pub(crate) async fn read<S: ShardConn>(
        &self,
        shard: &S,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let mut params = Vec::with_capacity(4);
        let sql = match after {
            None => &self.first,
            Some(position) => {
                params.extend_from_slice(position);
                &self.after
            }
        };
        params.extend(self.slots.clone());
        params.push(Value::Integer(limit as i64));
        shard.query_raw(sql, &params).await
    }
}

/// `key, within...` quoted: the primary key of a colocated table paged by rows.
fn row_order(key: &str, within: &[String]) -> String {
    std::iter::once(key)
        .chain(within.iter().map(String::as_str))
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(", ")
}

fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// On a shard that computes slots in SQL: deletes the next `limit` rows of colocated `table`
/// (routed by `key`, primary key `key, within...`) of `slots` after the row `after`, in one
/// statement; returns how many it deleted and the position of the last.
pub(crate) async fn delete_rows_of_slots<S: ShardConn>(
    shard: &S,
    (table, key, within): (&str, &str, &[String]),
    slots: &[u16],
    after: Option<&[Value]>,
    limit: usize,
) -> Result<(usize, Option<Vec<Value>>)> {
    let (t, k) = (quote_ident(table), quote_ident(key));
    let order = row_order(key, within);
    let mut params: Vec<Value> = Vec::with_capacity(within.len() + 3);
    let bound = match after {
        Some(after) => {
            params.extend_from_slice(after);
            format!("({order}) > ({}) AND ", marks(after.len()))
        }
        None => format!("{k} IS NOT NULL AND "),
    };
    params.push(Value::Text(
        serde_json::to_string(slots).expect("slots serialize"),
    ));
    params.push(Value::Integer(limit as i64));
    let sql = format!(
        "DELETE FROM {t} WHERE ({order}) IN (SELECT {order} FROM {t} WHERE {bound}\
         collegedb_slot({k}) IN (SELECT value FROM json_each(?)) ORDER BY {order} LIMIT ? + 0) \
         RETURNING {order}"
    );
    let rows = shard.query_raw(&sql, &params).await?;
    let last = rows
        .iter()
        .map(|row| row.values())
        .max_by(|a, b| {
            a.iter()
                .zip(b.iter())
                .map(|(x, y)| crate::scan::compare_values(x, y))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(<[Value]>::to_vec);
    Ok((rows.len(), last))
}

/// Deletes the rows of colocated `table` whose primary key (`key, within...`) is one of `rows`
/// (their values in that order), in one transaction; returns rows deleted.
pub(crate) async fn delete_rows<S: ShardConn>(
    shard: &S,
    (table, key, within): (&str, &str, &[String]),
    rows: &[Vec<Value>],
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    // `(k = ? AND w = ?) OR ...`: every SQLite version plans it on the primary key's index
    // (a row-value `IN (VALUES ...)` is a table scan in some).
    let one = std::iter::once(key)
        .chain(within.iter().map(String::as_str))
        .map(|column| format!("{} = ?", quote_ident(column)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let one = format!("({one})");
    let per_statement = (shard.max_parameters() / (within.len() + 1)).max(1);
    let statements: Vec<Statement> = rows
        .chunks(per_statement)
        .map(|chunk| {
            Statement::new(
                format!(
                    "DELETE FROM {} WHERE {}",
                    quote_ident(table),
                    vec![one.as_str(); chunk.len()].join(" OR ")
                ),
                chunk.iter().flatten().cloned().collect(),
            )
        })
        .collect();
    Ok(shard.batch(&statements).await?.iter().sum())
}

/// On a shard that computes slots in SQL: deletes the next page of `table`'s rows of `slots`
/// after `after` in one statement, and returns how many it deleted and the largest key deleted.
pub(crate) async fn delete_page_of_slots<S: ShardConn>(
    shard: &S,
    (table, key): (&str, &str),
    slots: &[u16],
    after: Option<&Value>,
    limit: usize,
) -> Result<(usize, Option<Value>)> {
    let (t, k) = (quote_ident(table), quote_ident(key));
    let mut params = Vec::with_capacity(3);
    let bound = match after {
        Some(after) => {
            params.push(after.clone());
            format!("{k} > ? AND ")
        }
        None => String::new(),
    };
    params.push(Value::Text(
        serde_json::to_string(slots).expect("slots serialize"),
    ));
    params.push(Value::Integer(limit as i64));
    let sql = format!(
        "DELETE FROM {t} WHERE {k} IN (SELECT {k} FROM {t} WHERE {bound}\
         collegedb_slot({k}) IN (SELECT value FROM json_each(?)) ORDER BY {k} LIMIT ? + 0) \
         RETURNING {k}"
    );
    let rows = shard.query_raw(&sql, &params).await?;
    let last = rows
        .iter()
        .filter_map(|row| row.values().first())
        .max_by(|a, b| crate::scan::compare_values(a, b))
        .cloned();
    Ok((rows.len(), last))
}

/// Rows of `table` on `shard` whose key no slot can route (not INTEGER or TEXT, out of range),
/// when the shard computes slots in SQL; `None` otherwise (the move counts them as it reads).
pub(crate) async fn count_unroutable<S: ShardConn>(
    shard: &S,
    table: &str,
    key: &str,
) -> Result<Option<u64>> {
    if !shard.computes_slots() {
        return Ok(None);
    }
    let rows = shard
        .query_raw(
            &format!(
                "SELECT COUNT(*) AS n FROM {} WHERE collegedb_slot({}) IS NULL",
                quote_ident(table),
                quote_ident(key)
            ),
            &[],
        )
        .await?;
    Ok(Some(
        rows.first()
            .map(|row| row.get::<i64>("n"))
            .transpose()?
            .unwrap_or(0) as u64,
    ))
}

/// The rows of `keys` in `table`, read in chunks within the parameter limit.
pub(crate) async fn rows_by_key<S: ShardConn>(
    shard: &S,
    table: &str,
    key: &str,
    keys: &[Value],
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for chunk in keys.chunks(shard.max_parameters()) {
        let sql = format!(
            "SELECT * FROM {} WHERE {} IN ({})",
            quote_ident(table),
            quote_ident(key),
            vec!["?"; chunk.len()].join(", ")
        );
        rows.extend(shard.query_raw(&sql, chunk).await?);
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
    let per_statement = (shard.max_parameters() / columns.len().max(1)).max(1);
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
        .chunks(shard.max_parameters())
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
