//! Aggregates pushed down as partials: each shard answers one row per group with `COUNT`,
//! `SUM`, `MIN` and `MAX` of its own rows (`AVG` as `SUM` and `COUNT`), and the router combines
//! them: counts and sums added, minimums and maximums compared, averages divided at the end.
//! Raw rows never cross the wire; `having` is applied to the combined groups.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use sea_query::{Expr, ExprTrait};

use super::column::{Column, Comparable};
use super::filter::{render, Node};
use super::route::{build, on_every_serving, QueryReport};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::router::CollegeDb;
use crate::scan::compare_values;
use crate::value::Value;

/// A field type that can be summed and averaged: the integer and float types, `bool`, and
/// their `Option`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a numeric column: `sum` and `avg` need an integer or float field",
    label = "use `count`, `min` or `max` on this column"
)]
pub trait Numeric {}

macro_rules! numeric {
    ($($t:ty),*) => {$( impl Numeric for $t {} impl Numeric for Option<$t> {} )*};
}
numeric!(i64, i32, u32, i16, u16, i8, u8, f64, f32, bool);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    CountColumn,
    Sum,
    Min,
    Max,
    Avg,
}

/// One aggregate of a grouped query: `count`, `sum`, `min`, `max` or `avg`.
pub struct Aggregate<M> {
    kind: Kind,
    column: Option<&'static str>,
    marker: std::marker::PhantomData<fn() -> M>,
}

impl<M> Clone for Aggregate<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Aggregate<M> {}

impl<M> std::fmt::Debug for Aggregate<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}({})", self.kind, self.column.unwrap_or("*"))
    }
}

impl<M: Model> Aggregate<M> {
    fn new(kind: Kind, column: Option<&'static str>) -> Self {
        Aggregate {
            kind,
            column,
            marker: std::marker::PhantomData,
        }
    }

    /// `COUNT(*)`: the rows of the group.
    pub fn count() -> Self {
        Self::new(Kind::Count, None)
    }

    /// `COUNT(column)`: the rows of the group whose column is not `NULL`.
    pub fn count_of<T>(column: Column<M, T>) -> Self {
        Self::new(Kind::CountColumn, Some(column.name()))
    }

    /// `SUM(column)`: an integer for integer columns (a typed error on overflow, as SQLite
    /// gives), `NULL` when every value is `NULL`.
    pub fn sum<T: Numeric>(column: Column<M, T>) -> Self {
        Self::new(Kind::Sum, Some(column.name()))
    }

    /// `MIN(column)`, ignoring `NULL`, in SQLite's order.
    pub fn min<T: Comparable>(column: Column<M, T>) -> Self {
        Self::new(Kind::Min, Some(column.name()))
    }

    /// `MAX(column)`, ignoring `NULL`, in SQLite's order.
    pub fn max<T: Comparable>(column: Column<M, T>) -> Self {
        Self::new(Kind::Max, Some(column.name()))
    }

    /// `AVG(column)` as a REAL, computed as the total `SUM` over the total `COUNT`; `NULL` when
    /// the group has no value that is not `NULL`.
    pub fn avg<T: Numeric>(column: Column<M, T>) -> Self {
        Self::new(Kind::Avg, Some(column.name()))
    }

    /// The groups where this aggregate is greater than `value` (for [`Query::having`](super::Query::having)).
    pub fn gt(self, value: impl Into<Value>) -> Having<M> {
        Having::new(self, Ordering::Greater, false, value.into())
    }

    /// The groups where this aggregate is at least `value`.
    pub fn ge(self, value: impl Into<Value>) -> Having<M> {
        Having::new(self, Ordering::Less, true, value.into())
    }

    /// The groups where this aggregate is less than `value`.
    pub fn lt(self, value: impl Into<Value>) -> Having<M> {
        Having::new(self, Ordering::Less, false, value.into())
    }

    /// The groups where this aggregate is at most `value`.
    pub fn le(self, value: impl Into<Value>) -> Having<M> {
        Having::new(self, Ordering::Greater, true, value.into())
    }

    /// The groups where this aggregate equals `value`.
    pub fn eq(self, value: impl Into<Value>) -> Having<M> {
        Having::new(self, Ordering::Equal, false, value.into())
    }

    /// The partial expressions each shard computes for this aggregate.
    fn partials(&self) -> Vec<Expr> {
        let col = || Expr::col(self.column.expect("a column aggregate names its column"));
        match self.kind {
            Kind::Count => vec![Expr::col(sea_query::Asterisk).count()],
            Kind::CountColumn => vec![col().count()],
            Kind::Sum => vec![col().sum()],
            Kind::Min => vec![col().min()],
            Kind::Max => vec![col().max()],
            Kind::Avg => vec![col().sum(), col().count()],
        }
    }
}

/// A condition on an aggregate of each group, applied after the groups of every shard are
/// combined (SQL's `HAVING`). `NULL` aggregates match no condition.
pub struct Having<M> {
    aggregate: Aggregate<M>,
    ordering: Ordering,
    or_equal: bool,
    value: Value,
}

impl<M> Clone for Having<M> {
    fn clone(&self) -> Self {
        Having {
            aggregate: self.aggregate,
            ordering: self.ordering,
            or_equal: self.or_equal,
            value: self.value.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Having<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {:?}{} {:?}",
            self.aggregate,
            self.ordering,
            if self.or_equal { "=" } else { "" },
            self.value
        )
    }
}

impl<M> Having<M> {
    fn new(aggregate: Aggregate<M>, ordering: Ordering, or_equal: bool, value: Value) -> Self {
        Having {
            aggregate,
            ordering,
            or_equal,
            value,
        }
    }

    fn holds(&self, value: &Value) -> bool {
        if *value == Value::Null || self.value == Value::Null {
            return false;
        }
        let ordering = compare_values(value, &self.value);
        ordering == self.ordering || (self.or_equal && ordering == Ordering::Equal)
    }
}

/// One group of an aggregate query: the values of the `group_by` columns and of each aggregate,
/// in the order they were asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRow {
    /// The group's values of the `group_by` columns (empty without `group_by`).
    pub group: Vec<Value>,
    /// One value per aggregate asked for.
    pub values: Vec<Value>,
}

/// Group values, ordered as SQLite orders them (so `1` and `1.0` are one group, as in SQL).
struct GroupKey(Vec<Value>);

impl PartialEq for GroupKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for GroupKey {}
impl PartialOrd for GroupKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for GroupKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| compare_values(a, b))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    }
}

fn add(a: &Value, b: &Value) -> Result<Value> {
    Ok(match (a, b) {
        (Value::Null, x) | (x, Value::Null) => x.clone(),
        (Value::Integer(x), Value::Integer(y)) => {
            Value::Integer(x.checked_add(*y).ok_or_else(|| Error::QueryInvalid {
                reason: "integer overflow in SUM: sum a REAL column, or narrow the filter".into(),
            })?)
        }
        (x, y) => Value::Real(as_real(x)? + as_real(y)?),
    })
}

fn as_real(value: &Value) -> Result<f64> {
    match value {
        Value::Integer(i) => Ok(*i as f64),
        Value::Real(f) => Ok(*f),
        other => Err(Error::decode(
            "aggregate",
            format!("expected a number, found {}", other.type_name()),
        )),
    }
}

fn combine(kind: Kind, a: &Value, b: &Value) -> Result<Value> {
    let pick = |wanted: Ordering| match (a, b) {
        (Value::Null, x) | (x, Value::Null) => x.clone(),
        (x, y) if compare_values(y, x) == wanted => y.clone(),
        (x, _) => x.clone(),
    };
    match kind {
        Kind::Min => Ok(pick(Ordering::Less)),
        Kind::Max => Ok(pick(Ordering::Greater)),
        _ => add(a, b),
    }
}

/// Runs the aggregates on every serving shard and combines the groups.
pub(crate) async fn aggregate<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    filter: Option<&Node>,
    group_by: &[&'static str],
    aggregates: &[Aggregate<M>],
    having: &[Having<M>],
    concurrency: usize,
) -> Result<Vec<AggregateRow>> {
    // The aggregates asked for, then those only `having` needs.
    let all: Vec<Aggregate<M>> = aggregates
        .iter()
        .chain(having.iter().map(|h| &h.aggregate))
        .copied()
        .collect();
    let mut select = sea_query::Query::select();
    select.from(M::TABLE);
    for column in group_by {
        select.column(*column).group_by_col(*column);
    }
    let mut kinds = Vec::new();
    for aggregate in &all {
        for (i, expr) in aggregate.partials().into_iter().enumerate() {
            select.expr(expr);
            // An average's second partial is its count.
            kinds.push(if aggregate.kind == Kind::Avg && i == 1 {
                Kind::Count
            } else {
                aggregate.kind
            });
        }
    }
    if let Some(node) = filter {
        select.and_where(render(node)?);
    }
    let statement = build(&select, 0)?;
    let mut report = QueryReport::default();
    let mut groups: BTreeMap<GroupKey, Vec<Value>> = BTreeMap::new();
    for rows in on_every_serving(db, &statement, &mut report, concurrency).await? {
        for row in rows {
            let mut values = row.into_values();
            let partials = values.split_off(group_by.len());
            // Without `GROUP BY` an empty shard still answers one row: its zero counts add
            // nothing, and `combine` skips its NULL sums and extremes.
            match groups.get_mut(&GroupKey(values.clone())) {
                Some(total) => {
                    for ((total, partial), kind) in total.iter_mut().zip(&partials).zip(&kinds) {
                        *total = combine(*kind, total, partial)?;
                    }
                }
                None => {
                    groups.insert(GroupKey(values), partials);
                }
            }
        }
    }
    if group_by.is_empty() && groups.is_empty() {
        // No serving shard: SQL answers one row of zero counts and NULLs.
        let zeros = kinds
            .iter()
            .map(|k| match k {
                Kind::Count | Kind::CountColumn => Value::Integer(0),
                _ => Value::Null,
            })
            .collect();
        groups.insert(GroupKey(Vec::new()), zeros);
    }
    let mut out = Vec::with_capacity(groups.len());
    'groups: for (GroupKey(group), partials) in groups {
        let mut finals = Vec::with_capacity(all.len());
        let mut at = 0;
        for aggregate in &all {
            finals.push(if aggregate.kind == Kind::Avg {
                let (sum, count) = (&partials[at], &partials[at + 1]);
                at += 2;
                match count {
                    Value::Integer(0) | Value::Null => Value::Null,
                    count => Value::Real(as_real(sum)? / as_real(count)?),
                }
            } else {
                at += 1;
                partials[at - 1].clone()
            });
        }
        for (condition, value) in having.iter().zip(&finals[aggregates.len()..]) {
            if !condition.holds(value) {
                continue 'groups;
            }
        }
        finals.truncate(aggregates.len());
        out.push(AggregateRow {
            group,
            values: finals,
        });
    }
    Ok(out)
}
