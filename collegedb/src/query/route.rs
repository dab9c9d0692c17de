//! Where a query runs, and how the answers of several shards become one.
//!
//! * A filter that pins the key ([`pinned_keys`]) runs on each pinned key's owner only, found
//!   in the same lookup order as `find`, with the same slot fence: a shard that no longer owns
//!   the key's slot answers "not owned", and the router reloads the map and asks again
//!   (see [`crate::crud`]).
//! * Anything else runs on every serving shard concurrently, with `ORDER BY` (plus the key, so
//!   ties are broken the same way everywhere) and `LIMIT offset + n` pushed down; the sorted
//!   answers are merged like Vitess's `MergeSort`, so at most `N·(offset + n)` rows cross the
//!   wire for `N` shards.
//!
//! Scattered reads carry no fence: while a move copies a slot, a row of that slot may be seen
//! on both shards, as with [`crate::scan`] and `count`.

use std::cmp::Ordering;

use sea_query::{Expr, ExprTrait, Order, Query, SelectStatement, SqliteQueryBuilder};

use super::column::OrderBy;
use super::filter::{check_parameter_count, pinned_keys, render, unbind, Node};
use crate::backend::{Backend, Row, ShardConn};
use crate::error::Result;
use crate::model::Model;
use crate::router::CollegeDb;
use crate::scan::compare_values;
use crate::value::Value;

/// At most this many pinned keys are looked up at once: each lookup costs one query (two or
/// three after a miss on a directory-placed model), and D1 allows 1,000 queries per Worker
/// invocation (50 on the Free plan).
pub const PINNED_CONCURRENCY: usize = 16;

/// What a query cost: whether it went to every serving shard, how many shards it asked and how
/// many rows crossed the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryReport {
    /// The query went to every serving shard (its filter does not pin the key).
    pub scattered: bool,
    /// Shards asked (for a pinned query: one per pinned key, the owner found for it).
    pub shards: usize,
    /// Rows returned by the shards, before the merge kept `limit` of them.
    pub rows_fetched: usize,
}

/// A statement and its parameters.
pub(crate) struct Rendered {
    pub sql: String,
    pub params: Vec<Value>,
}

/// Builds a statement, binding every value, and checks D1's parameter limit (`extra` more
/// parameters are appended later: a fence value).
pub(crate) fn build(statement: &SelectStatement, extra: usize) -> Result<Rendered> {
    let (sql, values) = statement.build(SqliteQueryBuilder);
    let params: Vec<Value> = values.0.into_iter().map(unbind).collect::<Result<_>>()?;
    check_parameter_count(params.len() + extra)?;
    Ok(Rendered { sql, params })
}

/// `SELECT <columns> FROM t [WHERE filter]`.
pub(crate) fn select_rows<M: Model>(filter: Option<&Node>) -> Result<SelectStatement> {
    let mut select = Query::select();
    select
        .columns(M::COLUMNS.iter().map(|c| c.name))
        .from(M::TABLE);
    if let Some(node) = filter {
        select.and_where(render(node)?);
    }
    Ok(select)
}

/// `ORDER BY` terms with the primary key's columns appended (ascending) unless already present,
/// so that every shard and the merge order ties alike.
pub(crate) fn with_key_order<M: Model>(order: &[OrderBy<M>]) -> Vec<OrderBy<M>> {
    let mut all = order.to_vec();
    for &id in M::ID_COLUMNS {
        if !all.iter().any(|o| o.index == id) {
            all.push(OrderBy::new(M::COLUMNS[id].name, id, false));
        }
    }
    all
}

/// Orders two rows of `M` (all columns, in model order) by `order`, as SQLite does.
pub(crate) fn compare_rows<M>(order: &[OrderBy<M>], a: &Row, b: &Row) -> Ordering {
    compare_terms(
        order
            .iter()
            .map(|t| (t.descending, &a.values()[t.index], &b.values()[t.index])),
    )
}

/// The first unequal pair of `(descending, left, right)` decides, as SQLite orders values.
fn compare_terms<'a>(terms: impl Iterator<Item = (bool, &'a Value, &'a Value)>) -> Ordering {
    for (descending, x, y) in terms {
        let ordering = compare_values(x, y);
        let ordering = if descending {
            ordering.reverse()
        } else {
            ordering
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

/// `LIMIT ?` written `LIMIT ? + 0`: SQLite plans a bare `LIMIT ?` with the bound value and so
/// prepares a cached statement again whenever it is bound anew (see [`crate::scan`]).
fn limit_as_expression(sql: String) -> String {
    match sql.strip_suffix("LIMIT ?") {
        Some(head) => format!("{head}LIMIT ? + 0"),
        None => sql,
    }
}

/// Runs `statement` on every serving shard, at most `concurrency` at once; returns each shard's
/// index and answer, in configuration order.
pub(crate) async fn fan_out<B: Backend>(
    db: &CollegeDb<B>,
    statement: &Rendered,
    concurrency: usize,
) -> Vec<(usize, Result<Vec<Row>>)> {
    let serving = db.serving_shards();
    let mut results = Vec::with_capacity(serving.len());
    for wave in serving.chunks(concurrency.max(1)) {
        let answers = futures_util::future::join_all(wave.iter().map(|&i| {
            let call = db.shard(i).query(&statement.sql, &statement.params);
            db.metered(i, crate::metrics::Op::Query, call)
        }))
        .await;
        results.extend(wave.iter().copied().zip(answers));
    }
    results
}

/// Runs `statement` on every serving shard, at most `concurrency` at once; fails if any shard
/// fails.
pub(crate) async fn on_every_serving<B: Backend>(
    db: &CollegeDb<B>,
    statement: &Rendered,
    report: &mut QueryReport,
    concurrency: usize,
) -> Result<Vec<Vec<Row>>> {
    report.scattered = true;
    let results = fan_out(db, statement, concurrency).await;
    report.shards += results.len();
    let mut all = Vec::with_capacity(results.len());
    for (_, rows) in results {
        let rows = rows?;
        report.rows_fetched += rows.len();
        all.push(rows);
    }
    Ok(all)
}

/// The rows a query selects, in order, after `offset`, at most `limit`.
pub(crate) async fn rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&Node>,
    order: &[OrderBy<M>],
    offset: usize,
    limit: Option<usize>,
    report: &mut QueryReport,
    concurrency: usize,
) -> Result<Vec<Row>> {
    rows_after::<M, B>(db, filter, order, None, offset, limit, report, concurrency).await
}

/// [`rows`], keeping only rows after `after` in the order (with the key appended): one value
/// per term of [`with_key_order`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn rows_after<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&Node>,
    order: &[OrderBy<M>],
    after: Option<&[Value]>,
    offset: usize,
    limit: Option<usize>,
    report: &mut QueryReport,
    concurrency: usize,
) -> Result<Vec<Row>> {
    let order = with_key_order(order);
    if limit == Some(0) {
        return Ok(Vec::new());
    }
    if let Some(keys) = filter.and_then(pinned_keys::<M>) {
        let filter = filter.expect("a pinned query has a filter");
        let mut rows = super::pinned::rows::<M, B>(db, filter, &keys, report).await?;
        if let Some(after) = after {
            rows.retain(|row| compare_to(&order, row, after) == Ordering::Greater);
        }
        rows.sort_by(|a, b| compare_rows(&order, a, b));
        let end = limit.map_or(rows.len(), |n| rows.len().min(offset.saturating_add(n)));
        return Ok(rows.drain(offset.min(end)..end).collect());
    }
    let statement = scatter_statement::<M>(filter, &order, after, offset, limit)?;
    let streams = on_every_serving(db, &statement, report, concurrency).await?;
    Ok(merge_sorted(streams, &order, offset, limit))
}

/// The statement each shard runs for a scattered query: the filter (and the cursor's
/// condition), `ORDER BY` the terms of `order` (the key included), `LIMIT offset + limit`.
fn scatter_statement<M: Model>(
    filter: Option<&Node>,
    order: &[OrderBy<M>],
    after: Option<&[Value]>,
    offset: usize,
    limit: Option<usize>,
) -> Result<Rendered> {
    let mut select = select_rows::<M>(filter)?;
    if let Some(after) = after {
        select.and_where(after_condition(order, after));
    }
    for term in order {
        let direction = if term.descending {
            Order::Desc
        } else {
            Order::Asc
        };
        select.order_by(term.column, direction);
    }
    if let Some(n) = limit {
        select.limit(offset.saturating_add(n) as u64);
    }
    let mut statement = build(&select, 0)?;
    statement.sql = limit_as_expression(statement.sql);
    Ok(statement)
}

/// A scattered query in partial mode: the shards that fail are listed with their error instead
/// of failing the query, and the rows of the others are merged.
pub(crate) async fn rows_partial<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&Node>,
    order: &[OrderBy<M>],
    offset: usize,
    limit: Option<usize>,
    concurrency: usize,
) -> Result<(Vec<Row>, Vec<(String, crate::error::Error)>)> {
    let order = with_key_order(order);
    let statement = scatter_statement::<M>(filter, &order, None, offset, limit)?;
    let results = fan_out(db, &statement, concurrency).await;
    let mut streams = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    for (shard, rows) in results {
        match rows {
            Ok(rows) => streams.push(rows),
            Err(error) => failed.push((db.shard_name(shard).to_owned(), error)),
        }
    }
    Ok((merge_sorted(streams, &order, offset, limit), failed))
}

/// A k-way merge of sorted streams: skips `offset` rows, then keeps at most `limit`.
pub(crate) fn merge_sorted<M>(
    streams: Vec<Vec<Row>>,
    order: &[OrderBy<M>],
    offset: usize,
    limit: Option<usize>,
) -> Vec<Row> {
    let mut streams: Vec<std::vec::IntoIter<Row>> =
        streams.into_iter().map(Vec::into_iter).collect();
    let mut heads: Vec<Option<Row>> = streams.iter_mut().map(Iterator::next).collect();
    let mut out = Vec::new();
    let mut skipped = 0;
    loop {
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        let mut best: Option<usize> = None;
        for (i, head) in heads.iter().enumerate() {
            let Some(row) = head else { continue };
            let better = match best {
                None => true,
                Some(b) => {
                    let current = heads[b].as_ref().expect("a head was chosen");
                    compare_rows(order, row, current) == Ordering::Less
                }
            };
            if better {
                best = Some(i);
            }
        }
        let Some(index) = best else { break };
        let row = std::mem::replace(&mut heads[index], streams[index].next())
            .expect("the chosen head has a row");
        if skipped < offset {
            skipped += 1;
        } else {
            out.push(row);
        }
    }
    out
}

/// Orders a row against cursor values (one per term of `order`), as [`compare_rows`] does.
fn compare_to<M>(order: &[OrderBy<M>], row: &Row, values: &[Value]) -> Ordering {
    compare_terms(
        order
            .iter()
            .zip(values)
            .map(|(t, value)| (t.descending, &row.values()[t.index], value)),
    )
}

/// The rows after `values` in `order`, as SQL: for terms `t1..tk`, the `OR` over `i` of
/// "`t1..t(i-1)` equal (`IS`, so `NULL` equals `NULL`), and `ti` after its value", where
/// "after" follows SQLite's order (`NULL` first ascending, last descending).
fn after_condition<M>(order: &[OrderBy<M>], values: &[Value]) -> Expr {
    let mut any: Option<Expr> = None;
    for (i, (term, value)) in order.iter().zip(values).enumerate() {
        let col = || Expr::col(term.column);
        let after = match (term.descending, value) {
            (false, Value::Null) => col().is_not_null(),
            (false, v) => col().gt(super::filter::bind(v)),
            (true, Value::Null) => Expr::cust("1 = 0"),
            (true, v) => col().lt(super::filter::bind(v)).or(col().is_null()),
        };
        let mut all = after;
        for (earlier, value) in order[..i].iter().zip(values) {
            all = Expr::col(earlier.column)
                .is(super::filter::bind(value))
                .and(all);
        }
        any = Some(match any {
            Some(so_far) => so_far.or(all),
            None => all,
        });
    }
    any.unwrap_or_else(|| Expr::cust("1 = 1"))
}
