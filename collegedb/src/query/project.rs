//! Projections and `distinct`: a query that returns some columns as a tuple instead of whole
//! rows, optionally without repeats.
//!
//! A scattered projection selects the projected columns plus the order's columns and the key
//! (to merge in a stable order), or, with `distinct`, only the projected columns with `SELECT
//! DISTINCT` on each shard: the order is then the query's order followed by every projected
//! column, `LIMIT offset + n` is pushed down, and the merge drops the repeats between shards
//! (the first `offset + n` distinct values overall are among each shard's first `offset + n`).

use std::cmp::Ordering;

use sea_query::{Order, Query as SqlQuery};

use super::builder::Query;
use super::column::{Column, OrderBy};
use super::route::{self, build, merge_sorted, on_every_serving, with_key_order, QueryReport};
use crate::backend::{Backend, Row};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::router::CollegeDb;
use crate::value::{ColumnValue, Value};

/// Columns to return instead of whole rows: a tuple of one to six [`Column`] handles of `M`,
/// whose output is the tuple of the fields' types.
pub trait Projection<M>: Copy {
    /// The Rust tuple a projected row decodes into.
    type Output;
    /// The columns, as `(name, index in the model)`.
    fn columns(&self) -> Vec<(&'static str, usize)>;
    /// Decodes one projected row (values in the order of [`Projection::columns`]).
    fn decode(values: Vec<Value>) -> Result<Self::Output>;
}

macro_rules! projection {
    ($($name:ident),+) => {
        impl<M: Model, $($name: ColumnValue),+> Projection<M> for ($(Column<M, $name>,)+) {
            type Output = ($($name,)+);
            #[allow(non_snake_case)]
            fn columns(&self) -> Vec<(&'static str, usize)> {
                let ($($name,)+) = self;
                vec![$(($name.name(), $name.index())),+]
            }
            fn decode(values: Vec<Value>) -> Result<Self::Output> {
                let mut values = values.into_iter();
                Ok(($(
                    $name::from_value(values.next().ok_or_else(|| {
                        Error::decode("projection", "a projected column is missing")
                    })?)?,
                )+))
            }
        }
    };
}
projection!(A);
projection!(A, B);
projection!(A, B, C);
projection!(A, B, C, D);
projection!(A, B, C, D, E);
projection!(A, B, C, D, E, F);

/// A [`Query`] that returns some columns: built by [`Query::select`].
pub struct Projected<M, P> {
    query: Query<M>,
    projection: P,
    distinct: bool,
}

impl<M: Model> Query<M> {
    /// Returns only `columns` (a tuple of column handles, `(f.name(), f.age())`), decoded into
    /// a tuple of the fields' types.
    pub fn select<P: Projection<M>>(self, columns: P) -> Projected<M, P> {
        Projected {
            query: self,
            projection: columns,
            distinct: false,
        }
    }
}

impl<M: Model, P: Projection<M>> Projected<M, P> {
    /// Drops repeated tuples (`SELECT DISTINCT`). The query's order may then use projected
    /// columns only; ties are broken by the projected columns, in ascending order.
    pub fn distinct(mut self) -> Self {
        self.distinct = true;
        self
    }

    /// The projected rows, in the query's order, after `offset`, at most `limit`.
    pub async fn all<B: Backend>(&self, db: &CollegeDb<B>) -> Result<Vec<P::Output>> {
        let reads = db.reads_for::<M>();
        let db = &*reads;
        let columns = self.projection.columns();
        let filter = self.query.filter_node()?;
        let (offset, limit) = (self.query.offset_value(), self.query.limit_value());
        let fan = self.query.concurrency_value();
        let mut report = QueryReport::default();
        let pinned = filter.and_then(super::filter::pinned_keys::<M>).is_some();
        if !self.distinct {
            // Whole rows where the key pins them (few rows); projected columns plus the order's
            // and the key's elsewhere.
            if pinned {
                let order = self.query.order_terms();
                let rows =
                    route::rows::<M, B>(db, filter, order, offset, limit, &mut report, usize::MAX)
                        .await?;
                return rows
                    .into_iter()
                    .map(|row| P::decode(pick(row, columns.iter().map(|c| c.1))))
                    .collect();
            }
            let order = with_key_order(self.query.order_terms());
            let mut selected: Vec<(&'static str, usize)> = columns.clone();
            for term in &order {
                if !selected.iter().any(|c| c.1 == term.index) {
                    selected.push((term.column, term.index));
                }
            }
            let rows =
                scatter::<M, B>(db, filter, &selected, &order, offset, limit, false, fan).await?;
            return rows
                .into_iter()
                .map(|row| P::decode(row.into_values().into_iter().take(columns.len()).collect()))
                .collect();
        }
        let mut order: Vec<OrderBy<M>> = self.query.order_terms().to_vec();
        if let Some(term) = order
            .iter()
            .find(|t| !columns.iter().any(|c| c.1 == t.index))
        {
            return Err(Error::QueryInvalid {
                reason: format!(
                    "a distinct query is ordered by `{}`, which it does not select: order by selected columns only",
                    term.column
                ),
            });
        }
        for &(name, index) in &columns {
            if !order.iter().any(|t| t.index == index) {
                order.push(OrderBy::new(name, index, false));
            }
        }
        if pinned {
            let mut rows =
                route::rows::<M, B>(db, filter, &order, 0, None, &mut report, usize::MAX).await?;
            rows.dedup_by(|a, b| same(&order, a, b));
            let end = limit.map_or(rows.len(), |n| rows.len().min(offset.saturating_add(n)));
            return rows
                .drain(offset.min(end)..end)
                .map(|row| P::decode(pick(row, columns.iter().map(|c| c.1))))
                .collect();
        }
        let rows = scatter::<M, B>(db, filter, &columns, &order, offset, limit, true, fan).await?;
        rows.into_iter()
            .map(|row| P::decode(row.into_values()))
            .collect()
    }

    /// The first projected row, if any.
    pub async fn first<B: Backend>(&self, db: &CollegeDb<B>) -> Result<Option<P::Output>> {
        let query = Projected {
            query: self.query.clone().limit(1),
            projection: self.projection,
            distinct: self.distinct,
        };
        Ok(query.all(db).await?.into_iter().next())
    }
}

/// The values of `row` at `indices`.
fn pick(row: Row, indices: impl Iterator<Item = usize>) -> Vec<Value> {
    let values = row.into_values();
    indices.map(|i| values[i].clone()).collect()
}

/// Whether two full rows are equal on every term of `order`.
fn same<M>(order: &[OrderBy<M>], a: &Row, b: &Row) -> bool {
    route::compare_rows(order, a, b) == Ordering::Equal
}

/// Runs `SELECT [DISTINCT] <selected> ... ORDER BY <order> LIMIT offset + n` on every serving
/// shard and merges; with `distinct`, repeats across shards are dropped in the merge.
#[allow(clippy::too_many_arguments)]
async fn scatter<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&super::filter::Node>,
    selected: &[(&'static str, usize)],
    order: &[OrderBy<M>],
    offset: usize,
    limit: Option<usize>,
    distinct: bool,
    concurrency: usize,
) -> Result<Vec<Row>> {
    let mut select = SqlQuery::select();
    select.columns(selected.iter().map(|c| c.0)).from(M::TABLE);
    if distinct {
        select.distinct();
    }
    if let Some(node) = filter {
        select.and_where(super::filter::render(node)?);
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
    let statement = build(&select, 0)?;
    let mut report = QueryReport::default();
    let streams = on_every_serving(db, &statement, &mut report, concurrency).await?;
    // Terms re-pointed at the positions of the selected columns.
    let local: Vec<OrderBy<M>> = order
        .iter()
        .map(|t| {
            let at = selected
                .iter()
                .position(|c| c.1 == t.index)
                .expect("every order column is selected");
            OrderBy::new(t.column, at, t.descending)
        })
        .collect();
    if !distinct {
        return Ok(merge_sorted(streams, &local, offset, limit));
    }
    let mut merged = merge_sorted(streams, &local, 0, None);
    merged.dedup_by(|a, b| same(&local, a, b));
    let end = limit.map_or(merged.len(), |n| merged.len().min(offset.saturating_add(n)));
    Ok(merged.drain(offset.min(end)..end).collect())
}
