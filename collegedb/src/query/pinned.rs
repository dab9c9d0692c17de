//! Queries whose filter pins the key: they run on the keys' owners only.
//!
//! With a hash-first read strategy, the keys are grouped by the shard their slot maps to and
//! each shard gets one statement for its keys (`key IN (...) AND filter`), fenced for every
//! slot it names: `UNION ALL` one all-`NULL` row if the shard owns any of them no longer, and
//! the router then reloads the map and asks again, as `find` does. A key not found on its hash
//! shard is looked up like `find` (the off-hash marker, then the directory) only if that shard
//! carries the table's off-hash marker. So an `is_in` of 100 keys over 3 shards costs 3 queries,
//! not 100. With a directory-first read strategy, each key is looked up like `find`, one query
//! per key, [`PINNED_CONCURRENCY`] at a time.

use std::collections::{BTreeMap, BTreeSet};

use sea_query::{Expr, ExprTrait, Query};

use super::filter::{bind, render, Node};
use super::route::{build, QueryReport, Rendered, PINNED_CONCURRENCY};
use crate::backend::{Backend, Row};
use crate::crud::{query_owner, RoutedQuery};
use crate::error::Result;
use crate::key::Key;
use crate::model::{Model, MAX_BOUND_PARAMETERS};
use crate::router::{hash_first, Backoff, CollegeDb};
use crate::value::Value;

/// The rows the filter matches among `keys`, from their owners.
pub(crate) async fn rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: &Node,
    keys: &[Key],
    report: &mut QueryReport,
) -> Result<Vec<Row>> {
    let read = db.strategies(M::STRATEGY).read;
    let rows = if hash_first(read) && keys.len() > 1 {
        grouped::<M, B>(db, filter, keys, report).await?
    } else {
        one_by_one::<M, B>(db, filter, keys, report).await?
    };
    report.rows_fetched += rows.len();
    Ok(rows)
}

/// `SELECT <columns> FROM t WHERE <key scope> AND (filter)`.
fn select<M: Model>(scope: Expr, filter: &Node, extra: usize) -> Result<Rendered> {
    let mut select = Query::select();
    select
        .columns(M::COLUMNS.iter().map(|c| c.name))
        .from(M::TABLE)
        .and_where(scope)
        .and_where(render(filter)?);
    build(&select, extra)
}

/// Each key through `find`'s lookup, [`PINNED_CONCURRENCY`] at a time.
async fn one_by_one<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: &Node,
    keys: &[Key],
    report: &mut QueryReport,
) -> Result<Vec<Row>> {
    let key = M::COLUMNS[M::KEY_INDEX].name;
    let scope = Expr::col(key).eq(sea_query::Value::BigInt(Some(0)));
    let Rendered { sql, params } = select::<M>(scope, filter, 1)?;
    let nulls = vec!["NULL"; M::COLUMNS.len()].join(", ");
    let fenced = format!(
        "{sql} UNION ALL SELECT {nulls} WHERE NOT {}",
        crate::fence::OWNED
    );
    let read = db.strategies(M::STRATEGY).read;
    let mut rows = Vec::new();
    for chunk in keys.chunks(PINNED_CONCURRENCY) {
        let lookups = chunk.iter().map(|key| {
            let mut params = params.clone();
            params[0] = key.to_value();
            let (sql, fenced) = (&sql, &fenced);
            async move {
                let query = RoutedQuery {
                    sql,
                    fenced: Some((fenced, M::KEY_INDEX)),
                    params: &params,
                };
                query_owner(db, M::SCOPE, key, read, query).await
            }
        });
        for found in futures_util::future::join_all(lookups).await {
            report.shards += 1;
            if let Some((_, _, found)) = found? {
                rows.extend(found);
            }
        }
    }
    Ok(rows)
}

/// The fence of a grouped statement: one all-`NULL` row when the shard does not own one of the
/// slots of the JSON array bound last.
fn fence_clause(columns: usize) -> String {
    let nulls = vec!["NULL"; columns].join(", ");
    format!(
        " UNION ALL SELECT {nulls} WHERE EXISTS (SELECT 1 FROM json_each(?) \
         WHERE value NOT IN (SELECT \"slot\" FROM \"{}\"))",
        crate::fence::TABLE
    )
}

/// Keys grouped by their hash shard, one fenced statement per shard and chunk of keys.
async fn grouped<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: &Node,
    keys: &[Key],
    report: &mut QueryReport,
) -> Result<Vec<Row>> {
    let key_column = M::COLUMNS[M::KEY_INDEX].name;
    // Room for keys beside the filter's parameters and the slot list.
    let (_, others) = {
        let Rendered { sql, params } = select::<M>(Expr::cust("1 = 1"), filter, 1)?;
        (sql, params.len())
    };
    let room = MAX_BOUND_PARAMETERS.saturating_sub(others + 1).max(1);
    let clause = fence_clause(M::COLUMNS.len());
    let mut backoff = Backoff::new();
    let (rows, hash_shards) = 'route: loop {
        let mut by_shard: BTreeMap<usize, Vec<(&Key, i64)>> = BTreeMap::new();
        for key in keys {
            let (shard, slot) = db.hash_target(key);
            by_shard.entry(shard).or_default().push((key, slot));
        }
        let mut statements = Vec::new();
        for (&shard, group) in &by_shard {
            for chunk in group.chunks(room) {
                let scope =
                    Expr::col(key_column).is_in(chunk.iter().map(|(k, _)| bind(&k.to_value())));
                let Rendered { sql, mut params } = select::<M>(scope, filter, 1)?;
                let slots: BTreeSet<i64> = chunk.iter().map(|(_, s)| *s).collect();
                let slots: Vec<i64> = slots.into_iter().collect();
                params.push(Value::Text(
                    serde_json::to_string(&slots).expect("slots serialize"),
                ));
                statements.push((shard, format!("{sql}{clause}"), params, slots[0]));
            }
        }
        let results = futures_util::future::join_all(
            statements
                .iter()
                .map(|(shard, sql, params, _)| crate::fence::query(db, *shard, sql, params)),
        )
        .await;
        report.shards += statements.len();
        let mut rows = Vec::new();
        for ((_, _, _, slot), result) in statements.iter().zip(results) {
            let found = result?;
            if found
                .iter()
                .any(|row| row.values()[M::KEY_INDEX] == Value::Null)
            {
                db.after_not_owned(*slot, &mut backoff).await?;
                continue 'route;
            }
            rows.extend(found);
        }
        break (rows, by_shard);
    };
    // Keys not found on their hash shard: elsewhere only if the shard carries the marker.
    let found: BTreeSet<Key> = rows
        .iter()
        .filter_map(|row| Key::from_value(row.values()[M::KEY_INDEX].clone()).ok())
        .collect();
    let mut elsewhere = Vec::new();
    for (shard, group) in hash_shards {
        let missing: Vec<Key> = group
            .iter()
            .filter(|(k, _)| !found.contains(*k))
            .map(|(k, _)| (*k).clone())
            .collect();
        if !missing.is_empty() && db.may_be_elsewhere(M::SCOPE, shard).await? {
            elsewhere.extend(missing);
        }
    }
    let mut rows = rows;
    if !elsewhere.is_empty() {
        rows.extend(one_by_one::<M, B>(db, filter, &elsewhere, report).await?);
    }
    Ok(rows)
}
