//! Cross-shard scans in key order: each shard returns its next rows in key order with the order
//! and the limit pushed down, and the streams are merged.

use crate::backend::{Backend, ShardConn};
use crate::error::Result;
use crate::key::{Key, ShardKey};
use crate::model::Model;
use crate::router::CollegeDb;
use crate::value::Value;

/// One page of a cross-shard scan in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<M: Model> {
    /// Up to `limit` rows, in ascending key order over every shard.
    pub rows: Vec<M>,
    /// The key to pass as `after` for the next page; `None` after the last page.
    pub next: Option<M::Key>,
}

/// Reads rows in ascending key order across every shard, `limit` at a time, after `after`.
///
/// Each shard runs `... WHERE key > ? ORDER BY key LIMIT ?` (the order and the limit are pushed
/// down, so no shard returns more than `limit + 1` rows), and the pages are merged. Fails if any shard
/// fails: a page with a shard missing would silently skip rows. `limit` is clamped to 1..=1000.
pub async fn scan<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    after: Option<M::Key>,
    limit: usize,
) -> Result<Page<M>> {
    let limit = limit.clamp(1, 1000);
    // One more than the page, so a shard holding every remaining row still shows there are more.
    let limit_value = Value::Integer(limit as i64 + 1);
    let (sql, params) = match after {
        Some(key) => (
            &M::sql().scan_after,
            vec![key.into_key()?.into_value(), limit_value],
        ),
        None => (&M::sql().scan_first, vec![limit_value]),
    };
    let mut merged: Vec<(Key, M)> = Vec::new();
    for rows in db.on_every_shard(|shard| shard.query(sql, &params)).await {
        for row in rows? {
            let row = M::from_values(row.into_values())?;
            merged.push((row.key().clone().into_key()?, row));
        }
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let more = merged.len() > limit;
    merged.truncate(limit);
    let next = if more {
        merged.last().map(|(_, row)| row.key().clone())
    } else {
        None
    };
    Ok(Page {
        rows: merged.into_iter().map(|(_, row)| row).collect(),
        next,
    })
}
