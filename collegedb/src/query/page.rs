//! Keyset pagination across shards: each page ends with an opaque cursor holding the last row's
//! order values and key, and the next page asks every shard for the rows after it (in SQL, so
//! the pushed-down `LIMIT` stays exact), then merges as any scattered query does.
//!
//! A cursor names a position in the order, not a row count, so rows inserted or deleted between
//! pages never shift a page: every row that exists from the first page to the last, and keeps
//! its order values, is returned exactly once; a row inserted meanwhile is returned if it sorts
//! after the cursor of the page being read.

use super::builder::Query;
use super::route::{rows_after, with_key_order, QueryReport};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::router::CollegeDb;
use crate::value::Value;

/// The page size of [`Query::page`] when the query sets no limit.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Where the next page of a [`Query::page`] starts: opaque text, safe to hand to a client and
/// take back (it holds the last row's order values and key, nothing else).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// The cursor as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor from text given out by [`Cursor::as_str`]. Checked when the page is read.
    pub fn from_text(text: impl Into<String>) -> Self {
        Cursor(text.into())
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of [`Query::page`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage<M> {
    /// Up to the page size rows, in the query's order.
    pub rows: Vec<M>,
    /// The cursor of the next page; `None` after the last page.
    pub next: Option<Cursor>,
}

fn encode(order: &[String], values: &[Value]) -> Cursor {
    let values: Vec<serde_json::Value> = values
        .iter()
        .map(|v| match v {
            Value::Null => serde_json::json!(["n"]),
            Value::Integer(i) => serde_json::json!(["i", i]),
            Value::Real(f) => serde_json::json!(["r", f]),
            Value::Text(s) => serde_json::json!(["t", s]),
            Value::Blob(b) => serde_json::json!(["b", hex::encode(b)]),
        })
        .collect();
    let json = serde_json::json!({ "o": order, "v": values }).to_string();
    Cursor(hex::encode(json))
}

fn invalid(reason: &str) -> Error {
    Error::QueryInvalid {
        reason: format!("{reason}: pass the `next` cursor of a page of this same query, or `None` for the first page"),
    }
}

fn decode(cursor: &Cursor, order: &[String]) -> Result<Vec<Value>> {
    let bytes = hex::decode(&cursor.0).map_err(|_| invalid("malformed cursor"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("malformed cursor"))?;
    if json.get("o").and_then(|o| o.as_array()).map(|o| {
        o.iter()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    }) != Some(order.to_vec())
    {
        return Err(invalid("the cursor belongs to a query with another order"));
    }
    let values = json
        .get("v")
        .and_then(|v| v.as_array())
        .ok_or_else(|| invalid("malformed cursor"))?;
    values
        .iter()
        .map(|item| {
            let tag = item.get(0).and_then(|t| t.as_str());
            let body = item.get(1);
            Some(match (tag, body) {
                (Some("n"), _) => Value::Null,
                (Some("i"), Some(v)) => Value::Integer(v.as_i64()?),
                (Some("r"), Some(v)) => Value::Real(v.as_f64()?),
                (Some("t"), Some(v)) => Value::Text(v.as_str()?.to_owned()),
                (Some("b"), Some(v)) => Value::Blob(hex::decode(v.as_str()?).ok()?),
                _ => return None,
            })
        })
        .collect::<Option<Vec<Value>>>()
        .filter(|v| v.len() == order.len())
        .ok_or_else(|| invalid("malformed cursor"))
}

impl<M: Model> Query<M> {
    /// One page of the query's rows (`limit` rows, [`DEFAULT_PAGE_SIZE`] without one), after
    /// `cursor` (`None`: the first page), with the cursor of the next page.
    ///
    /// Keyset pagination: each shard is asked for `limit + 1` rows after the cursor in the
    /// query's order (ties broken by the key), so a page costs at most `N·(limit + 1)` rows
    /// however deep it is. A cursor names a position in the order, not a row count, so rows
    /// inserted or deleted between pages never shift a page: every row that exists from the
    /// first page to the last, and keeps its order values, is returned exactly once. `offset`
    /// must not be set.
    pub async fn page<B: Backend>(
        &self,
        db: &CollegeDb<B>,
        cursor: Option<&Cursor>,
    ) -> Result<QueryPage<M>> {
        let reads = db.reads_for::<M>();
        let db = &*reads;
        if self.offset_value() != 0 {
            return Err(Error::QueryInvalid {
                reason: "`page` continues from its cursor: remove `offset`".into(),
            });
        }
        let size = self.limit_value().unwrap_or(DEFAULT_PAGE_SIZE).max(1);
        let order = with_key_order(self.order_terms());
        let names: Vec<String> = order
            .iter()
            .map(|t| format!("{}:{}", t.column, if t.descending { "d" } else { "a" }))
            .collect();
        let after = cursor.map(|c| decode(c, &names)).transpose()?;
        let mut report = QueryReport::default();
        let mut rows = rows_after::<M, B>(
            db,
            self.filter_node()?,
            self.order_terms(),
            after.as_deref(),
            0,
            Some(size + 1),
            &mut report,
            self.concurrency_value(),
        )
        .await?;
        let next = if rows.len() > size {
            rows.truncate(size);
            let last = rows.last().expect("a full page has a last row");
            let values: Vec<Value> = order
                .iter()
                .map(|t| last.values()[t.index].clone())
                .collect();
            Some(encode(&names, &values))
        } else {
            None
        };
        let rows = rows
            .into_iter()
            .map(|row| M::from_values(row.into_values()))
            .collect::<Result<_>>()?;
        Ok(QueryPage { rows, next })
    }
}
