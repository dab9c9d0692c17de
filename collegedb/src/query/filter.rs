//! Filters: a small expression tree built from typed column handles, rendered into a sea-query
//! expression with every value bound.

use std::marker::PhantomData;

use sea_query::{Expr, ExprTrait, LikeExpr};

use super::column::LIKE_ESCAPE;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::model::{Model, MAX_BOUND_PARAMETERS};
use crate::value::Value;

/// Lists up to this many values are bound one parameter each (`IN (?, ?, ...)`); longer lists
/// are bound as one JSON array (`IN (SELECT value FROM json_each(?))`), so that a list of any
/// length costs one of D1's 100 bound parameters.
///
/// Splitting a long list into several statements (the other way to stay under the limit) would
/// change the meaning of `NOT`, of `not_in` and of an `or` around the list, and multiply round
/// trips; one JSON parameter keeps the statement whole. Blobs have no JSON form: a list of more
/// than this many blobs is refused with [`Error::QueryInvalid`].
pub const INLINE_LIST: usize = 32;

/// SQLite's (and D1's) longest `LIKE` pattern, in bytes (`SQLITE_MAX_LIKE_PATTERN_LENGTH`).
pub const MAX_LIKE_PATTERN_BYTES: usize = 50_000;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compare {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One node of a filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Compare {
        column: &'static str,
        index: usize,
        op: Compare,
        value: Value,
    },
    In {
        column: &'static str,
        index: usize,
        values: Vec<Value>,
        negated: bool,
    },
    Like {
        column: &'static str,
        pattern: String,
    },
    Null {
        column: &'static str,
        negated: bool,
    },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

/// A condition on rows of `M`, built from column handles (`User::fields().name().eq("Ada")`)
/// and combined with [`Filter::and`], [`Filter::or`] and [`Filter::not`] (or `&`, `|`, `!`).
///
/// A value that cannot be bound (an integer beyond ±(2^53 - 1), NaN) is reported when the query
/// runs, as the error the value's conversion gives.
pub struct Filter<M> {
    node: std::result::Result<Node, String>,
    marker: PhantomData<fn() -> M>,
}

impl<M> Clone for Filter<M> {
    fn clone(&self) -> Self {
        Filter {
            node: self.node.clone(),
            marker: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Filter<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Filter").field(&self.node).finish()
    }
}

impl<M> Filter<M> {
    pub(crate) fn from_node(node: Node) -> Self {
        Filter {
            node: Ok(node),
            marker: PhantomData,
        }
    }

    pub(crate) fn from_result(node: Result<Node>) -> Self {
        Filter {
            node: node.map_err(|e| e.to_string()),
            marker: PhantomData,
        }
    }

    /// The filter's tree, or the error of a value that could not be converted.
    pub(crate) fn node(&self) -> Result<&Node> {
        self.node.as_ref().map_err(|reason| Error::QueryInvalid {
            reason: reason.clone(),
        })
    }

    fn combine(self, other: Filter<M>, and: bool) -> Filter<M> {
        let node = match (self.node, other.node) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(a), Ok(b)) => Ok(match (a, b, and) {
                (Node::And(mut xs), Node::And(ys), true)
                | (Node::Or(mut xs), Node::Or(ys), false) => {
                    xs.extend(ys);
                    if and {
                        Node::And(xs)
                    } else {
                        Node::Or(xs)
                    }
                }
                (Node::And(mut xs), y, true) | (Node::Or(mut xs), y, false) => {
                    xs.push(y);
                    if and {
                        Node::And(xs)
                    } else {
                        Node::Or(xs)
                    }
                }
                (x, y, true) => Node::And(vec![x, y]),
                (x, y, false) => Node::Or(vec![x, y]),
            }),
        };
        Filter {
            node,
            marker: PhantomData,
        }
    }

    /// Both conditions hold.
    pub fn and(self, other: Filter<M>) -> Filter<M> {
        self.combine(other, true)
    }

    /// Either condition holds.
    pub fn or(self, other: Filter<M>) -> Filter<M> {
        self.combine(other, false)
    }

    /// The condition does not hold. Like SQL, `not` of a comparison with a `NULL` column is
    /// not true either: `!(x.eq(1))` does not match rows where `x` is `NULL`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter<M> {
        Filter {
            node: self.node.map(|n| Node::Not(Box::new(n))),
            marker: PhantomData,
        }
    }
}

impl<M> std::ops::BitAnd for Filter<M> {
    type Output = Filter<M>;
    fn bitand(self, other: Filter<M>) -> Filter<M> {
        self.and(other)
    }
}

impl<M> std::ops::BitOr for Filter<M> {
    type Output = Filter<M>;
    fn bitor(self, other: Filter<M>) -> Filter<M> {
        self.or(other)
    }
}

impl<M> std::ops::Not for Filter<M> {
    type Output = Filter<M>;
    fn not(self) -> Filter<M> {
        Filter::not(self)
    }
}

/// Our value as a sea-query value, to be bound.
pub(crate) fn bind(value: &Value) -> sea_query::Value {
    match value {
        Value::Null => sea_query::Value::BigInt(None),
        Value::Integer(i) => sea_query::Value::BigInt(Some(*i)),
        Value::Real(f) => sea_query::Value::Double(Some(*f)),
        Value::Text(s) => sea_query::Value::String(Some(s.clone())),
        Value::Blob(b) => sea_query::Value::Bytes(Some(b.clone())),
    }
}

/// A bound sea-query value back in our form (the inverse of [`bind`], plus the integer and
/// float widths sea-query may use for limits).
pub(crate) fn unbind(value: sea_query::Value) -> Result<Value> {
    use sea_query::Value as V;
    Ok(match value {
        V::Bool(v) => v.map_or(Value::Null, |b| Value::Integer(b as i64)),
        V::TinyInt(v) => v.map_or(Value::Null, |i| Value::Integer(i.into())),
        V::SmallInt(v) => v.map_or(Value::Null, |i| Value::Integer(i.into())),
        V::Int(v) => v.map_or(Value::Null, |i| Value::Integer(i.into())),
        V::BigInt(v) => v.map_or(Value::Null, Value::Integer),
        V::TinyUnsigned(v) => v.map_or(Value::Null, |i| Value::Integer(i.into())),
        V::SmallUnsigned(v) => v.map_or(Value::Null, |i| Value::Integer(i.into())),
        V::Unsigned(v) => v.map_or(Value::Null, |i| Value::Integer(i.into())),
        V::BigUnsigned(v) => match v {
            None => Value::Null,
            Some(i) => Value::Integer(i64::try_from(i).map_err(|_| {
                Error::integer_out_of_range(
                    i,
                    "D1 carries integers exactly only within ±(2^53 - 1)",
                )
            })?),
        },
        V::Float(v) => v.map_or(Value::Null, |f| Value::Real(f.into())),
        V::Double(v) => v.map_or(Value::Null, Value::Real),
        V::String(v) => v.map_or(Value::Null, Value::Text),
        V::Char(v) => v.map_or(Value::Null, |c| Value::Text(c.to_string())),
        V::Bytes(v) => v.map_or(Value::Null, Value::Blob),
        other => {
            return Err(Error::QueryInvalid {
                reason: format!("a value of an unsupported kind was bound: {other:?}"),
            })
        }
    })
}

/// The JSON form of a list, when every value has one that SQLite's `json_each` reads back as
/// the same value: integers, finite reals and text without NUL characters.
fn json_list(values: &[Value]) -> Option<String> {
    let mut items = Vec::with_capacity(values.len());
    for value in values {
        items.push(match value {
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Real(f) if f.is_finite() => serde_json::Value::from(*f),
            Value::Text(s) if !s.contains('\0') => serde_json::Value::from(s.as_str()),
            _ => return None,
        });
    }
    Some(serde_json::Value::Array(items).to_string())
}

fn check_values(values: &[Value]) -> Result<()> {
    values.iter().try_for_each(Value::check_bindable)
}

/// Renders a filter into a sea-query expression, every value bound.
pub(crate) fn render(node: &Node) -> Result<Expr> {
    Ok(match node {
        Node::Compare {
            column, op, value, ..
        } => {
            value.check_bindable()?;
            let col = Expr::col(*column);
            match (op, value) {
                (Compare::Eq, Value::Null) => col.is_null(),
                (Compare::Ne, Value::Null) => col.is_not_null(),
                (Compare::Eq, v) => col.eq(bind(v)),
                (Compare::Ne, v) => col.ne(bind(v)),
                (Compare::Lt, v) => col.lt(bind(v)),
                (Compare::Le, v) => col.lte(bind(v)),
                (Compare::Gt, v) => col.gt(bind(v)),
                (Compare::Ge, v) => col.gte(bind(v)),
            }
        }
        Node::In {
            column,
            values,
            negated,
            ..
        } => {
            check_values(values)?;
            if values.is_empty() {
                // `x IN ()` matches nothing and `x NOT IN ()` everything, `NULL` included.
                return Ok(Expr::cust(if *negated { "1 = 1" } else { "1 = 0" }));
            }
            if values.len() > INLINE_LIST {
                let Some(json) = json_list(values) else {
                    return Err(Error::QueryInvalid {
                        reason: format!(
                            "a list of {} values for `{column}` holds a blob or a text with a NUL character; such lists are limited to {INLINE_LIST} values: split the query",
                            values.len()
                        ),
                    });
                };
                let op = if *negated { "NOT IN" } else { "IN" };
                // The column name comes from the derive, which admits only `[A-Za-z0-9_]`.
                return Ok(Expr::cust_with_values(
                    format!("\"{column}\" {op} (SELECT value FROM json_each(?))"),
                    [json],
                ));
            }
            let list = values.iter().map(bind);
            if *negated {
                Expr::col(*column).is_not_in(list)
            } else {
                Expr::col(*column).is_in(list)
            }
        }
        Node::Like { column, pattern } => {
            if pattern.len() > MAX_LIKE_PATTERN_BYTES {
                return Err(Error::QueryInvalid {
                    reason: format!(
                        "a pattern on `{column}` is {} bytes; SQLite and D1 accept at most {MAX_LIKE_PATTERN_BYTES}: compare with `eq` or shorten the text",
                        pattern.len()
                    ),
                });
            }
            Expr::col(*column).like(LikeExpr::new(pattern.clone()).escape(LIKE_ESCAPE))
        }
        Node::Null { column, negated } => {
            if *negated {
                Expr::col(*column).is_not_null()
            } else {
                Expr::col(*column).is_null()
            }
        }
        Node::And(nodes) => join(nodes, true)?,
        Node::Or(nodes) => join(nodes, false)?,
        Node::Not(node) => render(node)?.not(),
    })
}

fn join(nodes: &[Node], and: bool) -> Result<Expr> {
    let mut parts = nodes.iter().map(render);
    let Some(first) = parts.next() else {
        return Ok(Expr::cust(if and { "1 = 1" } else { "1 = 0" }));
    };
    parts.try_fold(first?, |acc, next| {
        let next = next?;
        Ok(if and { acc.and(next) } else { acc.or(next) })
    })
}

/// The keys a filter pins: `Some` when every matching row has one of these keys (the filter is
/// `key = v`, `key IN (...)`, or an `and` with such a term), so only their owners need asking.
/// Of several pinning terms in an `and`, the one with the fewest keys is used; the whole filter
/// still runs on each owner. `None` when a value is not a valid key (the query then scatters).
pub(crate) fn pinned_keys<M: Model>(node: &Node) -> Option<Vec<Key>> {
    let values: Vec<Value> = match node {
        Node::Compare {
            index,
            op: Compare::Eq,
            value,
            ..
        } if *index == M::KEY_INDEX && *value != Value::Null => vec![value.clone()],
        Node::In {
            index,
            values,
            negated: false,
            ..
        } if *index == M::KEY_INDEX => values.clone(),
        Node::And(nodes) => {
            return nodes
                .iter()
                .filter_map(pinned_keys::<M>)
                .min_by_key(Vec::len)
        }
        _ => return None,
    };
    let mut keys: Vec<Key> = values
        .into_iter()
        .map(Key::from_value)
        .collect::<Result<_>>()
        .ok()?;
    keys.sort();
    keys.dedup();
    Some(keys)
}

/// Fails with [`Error::TooManyParameters`] when a statement binds more than D1 accepts.
pub(crate) fn check_parameter_count(count: usize) -> Result<()> {
    if count > MAX_BOUND_PARAMETERS {
        return Err(Error::TooManyParameters {
            count,
            max: MAX_BOUND_PARAMETERS,
        });
    }
    Ok(())
}
