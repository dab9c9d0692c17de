//! Bulk writes by filter: `update_many` and `delete_many`, fenced like every write of the typed
//! layer.
//!
//! * A filter that pins the key writes on each key's owner with the fenced point statement of
//!   `update`/`delete` (`... AND <owned>`), found and retried like them.
//! * Any other filter runs on every serving shard concurrently. Each shard first lists the keys
//!   the filter matches, then, in one transaction, guards the slots of those keys (see
//!   [`crate::fence`]; a key whose hash slot belongs elsewhere is a directory-placed row and is
//!   guarded by the shard's live mark) and writes `... WHERE key IN (keys) AND (filter)`, so a
//!   row that matches between the two steps is left alone rather than written without its
//!   fence. A shard that refuses (a move switched a slot) wrote nothing; the router reloads the
//!   map and runs the call again on every shard.
//!
//! Deleted keys keep their directory entries, as with `delete`. `update_many` refuses to set a
//! `#[sharded(unique)]` column; `delete_many` leaves the deleted rows' unique lookup entries as
//! orphans, which reads ignore and later writes take over (see [`crate::unique`]).

use sea_query::{Expr, ExprTrait, Query as SqlQuery, SqliteQueryBuilder};

use super::column::{Column, Comparable, Operand};
use super::filter::{bind, check_parameter_count, pinned_keys, render, unbind, Node};
use super::route::PINNED_CONCURRENCY;
use crate::backend::{Backend, ShardConn, Statement};
use crate::crud::{execute_owner, Cost, RoutedWrite};
use crate::error::{Error, Result};
use crate::fence;
use crate::key::Key;
use crate::model::{Model, MAX_BOUND_PARAMETERS};
use crate::router::{Backoff, CollegeDb};
use crate::value::Value;

/// `column = value` in an [`update_many`](super::Query::update_many).
pub struct Assignment<M> {
    column: &'static str,
    index: usize,
    value: std::result::Result<Value, String>,
    marker: std::marker::PhantomData<fn() -> M>,
}

impl<M> Clone for Assignment<M> {
    fn clone(&self) -> Self {
        Assignment {
            column: self.column,
            index: self.index,
            value: self.value.clone(),
            marker: std::marker::PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Assignment<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {:?}", self.column, self.value)
    }
}

impl<M: Model, T> Column<M, T> {
    /// Sets this column to `value` in an [`update_many`](super::Query::update_many). The key
    /// column cannot be set (a row's key decides its shard): that is refused when the update
    /// runs.
    pub fn set(self, value: impl Operand<T>) -> Assignment<M>
    where
        T: Comparable,
    {
        Assignment {
            column: self.name(),
            index: self.index(),
            value: value.into_value().map_err(|e| e.to_string()),
            marker: std::marker::PhantomData,
        }
    }
}

/// Rows changed by a bulk write, per shard and in total.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteReport {
    /// `(shard name, rows changed)` for every shard that changed rows, in configuration order.
    pub per_shard: Vec<(String, u64)>,
    /// Rows changed over every shard.
    pub total: u64,
}

impl WriteReport {
    fn add<B: Backend>(&mut self, db: &CollegeDb<B>, shard: usize, changed: u64) {
        if changed == 0 {
            return;
        }
        let name = db.shard_name(shard);
        match self.per_shard.iter_mut().find(|(n, _)| n == name) {
            Some((_, n)) => *n += changed,
            None => self.per_shard.push((name.to_owned(), changed)),
        }
        self.total += changed;
    }

    fn sort<B: Backend>(&mut self, db: &CollegeDb<B>) {
        let order = db.list_known_shards();
        self.per_shard
            .sort_by_key(|(name, _)| order.iter().position(|n| n == name));
    }
}

/// What a bulk write does to each row it matches.
pub(crate) enum Change<'a, M> {
    Update(&'a [Assignment<M>]),
    Delete,
}

/// The statement for rows matching `filter` and the condition `scope` on the key; returns the
/// SQL and its parameters (SET values, then the scope's, then the filter's).
fn statement<M: Model>(
    change: &Change<'_, M>,
    scope: Expr,
    filter: Option<&Node>,
) -> Result<(String, Vec<Value>)> {
    let (sql, values) = match change {
        Change::Update(assignments) => {
            let mut update = SqlQuery::update();
            update.table(M::TABLE);
            for a in assignments.iter() {
                if M::ID_COLUMNS.contains(&a.index) {
                    return Err(Error::QueryInvalid {
                        reason: format!(
                            "`update_many` cannot set the key column `{}`: a row's key decides its shard; insert a row with the new key and delete the old one",
                            a.column
                        ),
                    });
                }
                if M::UNIQUE.contains(&a.index) {
                    return Err(Error::QueryInvalid {
                        reason: format!(
                            "`update_many` cannot set the unique column `{}`: its lookup is kept by the typed calls, one row at a time; use `update` on each row",
                            a.column
                        ),
                    });
                }
                let value = a
                    .value
                    .clone()
                    .map_err(|reason| Error::QueryInvalid { reason })?;
                value.check_bindable()?;
                update.value(a.column, Expr::val(bind(&value)));
            }
            update.and_where(scope);
            if let Some(node) = filter {
                update.and_where(render(node)?);
            }
            update.build(SqliteQueryBuilder)
        }
        Change::Delete => {
            let mut delete = SqlQuery::delete();
            delete.from_table(M::TABLE).and_where(scope);
            if let Some(node) = filter {
                delete.and_where(render(node)?);
            }
            delete.build(SqliteQueryBuilder)
        }
    };
    let params = values.0.into_iter().map(unbind).collect::<Result<_>>()?;
    Ok((sql, params))
}

/// Runs a bulk write; see the [module docs](self).
pub(crate) async fn write_many<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&Node>,
    change: Change<'_, M>,
) -> Result<WriteReport> {
    if let Change::Update(assignments) = &change {
        if assignments.is_empty() {
            return Err(Error::QueryInvalid {
                reason: "`update_many` needs at least one `column.set(value)`".into(),
            });
        }
    }
    let mut report = if let Some(keys) = filter.and_then(pinned_keys::<M>) {
        pinned::<M, B>(db, filter, &change, &keys).await?
    } else {
        scattered::<M, B>(db, filter, &change).await?
    };
    if matches!(change, Change::Delete) {
        for (name, n) in &report.per_shard {
            if let Ok(shard) = db.shard_by_name(name) {
                db.note_rows(shard, M::TABLE, -(*n as i64));
            }
        }
    }
    report.sort(db);
    Ok(report)
}

async fn pinned<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&Node>,
    change: &Change<'_, M>,
    keys: &[Key],
) -> Result<WriteReport> {
    let key_column = M::COLUMNS[M::KEY_INDEX].name;
    // The key's parameter is found by a value no filter can hold (sea-query writes some
    // values, such as NULL, inline, so positions cannot be counted).
    let marker = Value::Text("\0collegedb key".into());
    let scope = Expr::col(key_column).eq(bind(&marker));
    let (sql, params) = statement::<M>(change, scope, filter)?;
    check_parameter_count(params.len() + 1)?;
    let key_at = params
        .iter()
        .position(|p| *p == marker)
        .expect("the key's parameter is bound");
    // As `update`'s and `delete`'s own statements: the slot fence, and a key with a tombstone
    // on the shard (reassigned away, or a copy of a move in flight) counts as absent there.
    let fenced = format!(
        "{sql} AND {} AND {}",
        fence::OWNED,
        fence::not_moved(M::SCOPE, key_at + 1)
    );
    let read = db.strategies(M::STRATEGY).read;
    let mut report = WriteReport::default();
    for chunk in keys.chunks(PINNED_CONCURRENCY) {
        let writes = chunk.iter().map(|key| {
            let mut params = params.clone();
            params[key_at] = key.to_value();
            let (sql, fenced) = (&sql, &fenced);
            async move {
                let write = RoutedWrite {
                    sql,
                    fenced: Some(fenced),
                    params: &params,
                    cost: Cost::Point,
                };
                execute_owner(db, M::SCOPE, key, read, write).await
            }
        });
        for written in futures_util::future::join_all(writes).await {
            if let Some((shard, changed)) = written? {
                report.add(db, shard, changed);
            }
        }
    }
    Ok(report)
}

/// One shard's part of a scattered bulk write: `None` when the shard refused (wrote nothing).
async fn on_shard<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    shard: usize,
    filter: Option<&Node>,
    change: &Change<'_, M>,
) -> Result<Option<u64>> {
    let key_column = M::COLUMNS[M::KEY_INDEX].name;
    let mut select = SqlQuery::select();
    select.column(key_column).from(M::TABLE);
    if let Some(node) = filter {
        select.and_where(render(node)?);
    }
    let listed = super::route::build(&select, 0)?;
    let call = db.shard(shard).query(&listed.sql, &listed.params);
    let rows = db.metered(shard, crate::metrics::Op::Query, call).await?;
    if rows.is_empty() {
        return Ok(Some(0));
    }
    let mut keys = Vec::with_capacity(rows.len());
    let mut fences = Vec::with_capacity(rows.len());
    for row in rows {
        let value = row.into_values().into_iter().next().unwrap_or(Value::Null);
        let key = Key::from_value(value.clone())?;
        let (hash_shard, slot) = db.hash_target(&key);
        fences.push(if hash_shard == shard {
            slot
        } else {
            fence::LIVE
        });
        keys.push(value);
    }
    // Room for keys beside the statement's other parameters.
    let (_, others) = statement::<M>(change, Expr::cust("1 = 1"), filter)?;
    let room = MAX_BOUND_PARAMETERS.saturating_sub(others.len());
    if room == 0 {
        check_parameter_count(others.len() + 1)?;
    }
    let mut statements = Vec::new();
    for chunk in keys.chunks(room) {
        let scope = Expr::col(key_column).is_in(chunk.iter().map(bind));
        let (sql, params) = statement::<M>(change, scope, filter)?;
        statements.push(Statement::new(sql, params));
    }
    Ok(fence::guarded_batch(db, shard, &fences, None, &statements)
        .await?
        .ok()
        .map(|changed| changed.iter().sum()))
}

async fn scattered<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&Node>,
    change: &Change<'_, M>,
) -> Result<WriteReport> {
    // A move copies rows between shards and a drain's shard stops serving before its
    // directory-placed rows leave it: a bulk write by filter could change a copy and miss the
    // row it copies. It waits for the operation instead (retryable).
    if let Some(operation) = db.growth_in_progress().await? {
        return Err(crate::error::Error::GrowthInProgress {
            operation: operation.to_string(),
        });
    }
    let mut report = WriteReport::default();
    let mut backoff = Backoff::new();
    loop {
        let serving = db.serving_shards();
        let passes = serving
            .iter()
            .map(|&shard| on_shard::<M, B>(db, shard, filter, change));
        let results = futures_util::future::join_all(passes).await;
        let mut refused = false;
        let mut first_error = None;
        for (&shard, result) in serving.iter().zip(results) {
            match result {
                Ok(Some(changed)) => report.add(db, shard, changed),
                Ok(None) => refused = true,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        // Other shards may have committed their part: the same call is safe to run again
        // (setting the same values, deleting the same rows).
        if let Some(error) = first_error {
            return Err(error);
        }
        if !refused {
            return Ok(report);
        }
        db.after_not_owned(fence::LIVE, &mut backoff).await?;
    }
}
