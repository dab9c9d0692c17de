//! Cross-shard scans in key order: each shard returns its next rows in key order with the order
//! and a limit pushed down, and the sorted streams are merged (a k-way merge, as Vitess's
//! `MergeSort` does).
//!
//! # Why a page is exact without asking every shard for a whole page
//!
//! Each shard is asked for a share of the page (about `limit / N` plus a slack), not for the whole
//! page. The merge may then only emit rows up to the *bound*: the smallest last key among shards
//! that returned as many rows as asked (a shard that returned fewer is *exhausted*: it holds no
//! more rows after the cursor). Every row at or below the bound has been fetched from every shard,
//! so those rows are certain; a row above it may still sit, unfetched, on the shard that set the
//! bound. When the page is not full, only the shards whose fetched rows are all used up (the one
//! that set the bound) are asked again, for the rows still missing plus one, and the merge goes
//! on. A shard asked again can never run dry again before the page is full, so each shard is asked
//! again at most once per page.
//!
//! Keys are compared straight from the raw key value, in SQLite's order (see
//! [`compare_values`]), and only the rows on the page are decoded into the model.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::backend::{Backend, Row, ShardConn};
use crate::error::{Error, Result};
use crate::key::ShardKey;
use crate::model::{Model, ModelSql};
use crate::router::CollegeDb;
use crate::value::Value;

/// The largest page [`scan`] returns; larger limits are clamped to it.
pub const MAX_SCAN_LIMIT: usize = 1000;

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
/// What crosses the wire, for `N` shards:
///
/// * First, every shard runs `... WHERE key > ? ORDER BY key LIMIT ? + 0` (the order and a limit
///   are pushed down; the `+ 0` keeps SQLite from planning the statement again for each limit)
///   for its share of the page: `ceil(limit / N)` rows plus a slack of
///   `ceil(2·sqrt(limit·(N-1)) / N)`, never more than `limit + 1` (one shard: exactly
///   `limit + 1`). With keys spread by hash, this one round fills the page almost always (about
///   96% of pages of 100 over 3 shards), and about `limit + 2·sqrt(limit·(N-1))` rows cross the
///   wire (132 for a page of 100 over 3 shards) instead of `N·(limit + 1)`.
/// * When the rows certain to come first (see the [module docs](self)) do not fill the page, the
///   shards that limit the merge (in practice one) are asked again, after their last key, for the
///   rows still missing plus one. Each shard is asked again at most once per page. Skewed data
///   (every row on one shard, empty shards, a shard holding only the largest keys) costs these
///   extra queries and stays exact.
/// * Rarely, when the page ends exactly on the last fetched row of a shard that was not asked
///   again and may hold more, one `LIMIT 1` query on it decides whether `next` is `Some`.
///
/// So no shard receives more than two queries per page, nor more than `2·limit + 2` rows.
///
/// `next` is `None` only when no row after the page exists on any shard. Only the returned rows
/// are decoded into `M`. Fails if any shard fails: a page with a shard missing would silently
/// skip rows. `limit` is clamped to `1..=`[`MAX_SCAN_LIMIT`].
pub async fn scan<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    after: Option<M::Key>,
    limit: usize,
) -> Result<Page<M>> {
    if M::ID_COLUMNS.len() > 1 {
        return Err(Error::QueryInvalid {
            reason: format!(
                "`{}` rows are identified by more than their key, and a scan pages by the key alone: use `query_for` or `query` with `order_by`",
                M::TABLE
            ),
        });
    }
    let reads = db.reads_for::<M>();
    let db = &*reads;
    let limit = limit.clamp(1, MAX_SCAN_LIMIT);
    let after = match after {
        Some(key) => Some(key.into_key()?.into_value()),
        None => None,
    };
    let sql = ScanSql::new(M::sql(), after.is_none());
    // Shards that own slots: a standby shard, or one drained away, serves no rows.
    let serving = db.serving_shards();
    let shards = serving.len();
    let mut streams: Vec<Stream> = (0..shards).map(|_| Stream::new()).collect();
    let share = first_request(limit, shards);
    let all: Vec<(usize, usize)> = (0..shards).map(|shard| (shard, share)).collect();
    fetch::<M, B>(db, &serving, &sql, &mut streams, after.as_ref(), &all).await?;

    let mut rows: Vec<M> = Vec::with_capacity(limit);
    loop {
        merge(&mut streams, &mut rows, limit)?;
        let missing = limit - rows.len();
        if missing == 0 {
            break;
        }
        // The page is short: the shard that set the bound has used up its rows (and only such a
        // shard). With no bound (every shard exhausted), every row has been merged.
        let again: Vec<(usize, usize)> = streams
            .iter()
            .enumerate()
            .filter(|(_, s)| s.needs_more())
            .map(|(shard, _)| (shard, missing + 1))
            .collect();
        if again.is_empty() {
            break;
        }
        fetch::<M, B>(db, &serving, &sql, &mut streams, after.as_ref(), &again).await?;
    }

    let mut more = streams.iter().any(|s| !s.rows.is_empty());
    if !more && rows.len() == limit {
        // The page ended on the last fetched row of a shard that may hold more: ask it.
        let probe: Vec<(usize, usize)> = streams
            .iter()
            .enumerate()
            .filter(|(_, s)| s.needs_more())
            .map(|(shard, _)| (shard, 1))
            .collect();
        if !probe.is_empty() {
            fetch::<M, B>(db, &serving, &sql, &mut streams, after.as_ref(), &probe).await?;
            more = streams.iter().any(|s| !s.rows.is_empty());
        }
    }
    let next = match rows.last() {
        Some(row) if more => Some(row.key().clone()),
        _ => None,
    };
    Ok(Page { rows, next })
}

/// The first request to each of `shards` shards for a page of `limit`: its even share plus a
/// slack of two standard deviations, capped at `limit + 1` (which always fills the page in one
/// round).
///
/// With hash placement, the number of a page's rows that one shard holds is binomial,
/// `B(limit, 1/N)`, with a deviation of `sqrt(limit·(N-1))/N`. A page needs a second round when
/// some shard holds more of it than it was asked for: with two deviations, about 4% of pages of
/// 100 over 3 shards (with one, about a third; with half, about two thirds). On the embedded
/// backend, where a second query costs about as much as 5 to 10 rows, slacks from half a deviation to
/// two measured within noise of each other; two keep second rounds, which cost a round trip each
/// on D1, rare.
fn first_request(limit: usize, shards: usize) -> usize {
    if shards <= 1 {
        return limit + 1;
    }
    let share = limit.div_ceil(shards);
    let n = shards as f64;
    let deviation = (limit as f64 * (n - 1.0)).sqrt() / n;
    let slack = (2.0 * deviation).ceil() as usize;
    (share + slack).min(limit + 1)
}

/// One shard's rows in key order, fetched a slice at a time.
struct Stream {
    /// Fetched rows not merged yet.
    rows: VecDeque<Row>,
    /// The key of the last row fetched (merged or not): the next fetch starts after it.
    last_key: Option<Value>,
    /// The last fetch returned fewer rows than asked: the shard holds nothing after `last_key`.
    exhausted: bool,
}

impl Stream {
    fn new() -> Self {
        Stream {
            rows: VecDeque::new(),
            last_key: None,
            exhausted: false,
        }
    }

    /// The shard may hold rows not fetched yet, and none fetched is left to merge.
    fn needs_more(&self) -> bool {
        !self.exhausted && self.rows.is_empty()
    }
}

/// A model's scan statements, with the limit bound as an expression rather than a bare `?`.
///
/// SQLite (3.54, the version bundled for the embedded backend) reads the value bound to a bare
/// `LIMIT ?` while planning, so it marks the statement to be prepared again whenever that
/// parameter is bound anew, and rusqlite clears the bindings of every statement returned to its
/// cache: each scan query through a cached `LIMIT ?` statement was parsed and planned again
/// (about a third of the scan benchmark's profile). `LIMIT ? + 0` is evaluated when the statement
/// runs and never triggers a new plan; the plan (the key's index, in key order) does not depend
/// on the limit, as a unit test checks.
struct ScanSql {
    /// `scan_first`, when the scan starts at the first key.
    first: Option<String>,
    /// `scan_after`.
    after: String,
}

impl ScanSql {
    fn new(sql: &ModelSql, from_start: bool) -> Self {
        ScanSql {
            first: from_start.then(|| limit_as_expression(&sql.scan_first)),
            after: limit_as_expression(&sql.scan_after),
        }
    }
}

/// `sql` with its trailing `LIMIT ?` written `LIMIT ? + 0` (unchanged if it has none).
fn limit_as_expression(sql: &str) -> String {
    match sql.strip_suffix("LIMIT ?") {
        Some(head) => format!("{head}LIMIT ? + 0"),
        None => sql.to_owned(),
    }
}

/// Asks each `(shard, rows)` for its next `rows` rows in key order, concurrently.
async fn fetch<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    serving: &[usize],
    sql: &ScanSql,
    streams: &mut [Stream],
    after: Option<&Value>,
    requests: &[(usize, usize)],
) -> Result<()> {
    let statements: Vec<(&str, Vec<Value>)> = requests
        .iter()
        .map(|&(shard, rows)| {
            let limit = Value::Integer(rows as i64);
            match streams[shard].last_key.as_ref().or(after) {
                Some(key) => (sql.after.as_str(), vec![key.clone(), limit]),
                None => (
                    sql.first
                        .as_deref()
                        .expect("a scan from the start has its SQL"),
                    vec![limit],
                ),
            }
        })
        .collect();
    let results = futures_util::future::join_all(requests.iter().zip(&statements).map(
        |(&(stream, _), (sql, params))| {
            let index = serving[stream];
            let call = db.shard(index).query(sql, params);
            db.metered(index, crate::metrics::Op::Query, call)
        },
    ))
    .await;
    for (&(shard, asked), result) in requests.iter().zip(results) {
        let rows = result?;
        if let Some(short) = rows.iter().find(|r| r.values().len() != M::COLUMNS.len()) {
            return Err(Error::decode(
                M::COLUMNS[M::KEY_INDEX].name,
                format!(
                    "a scan of `{}` returned {} columns, expected {}",
                    M::TABLE,
                    short.values().len(),
                    M::COLUMNS.len()
                ),
            ));
        }
        let stream = &mut streams[shard];
        stream.exhausted = rows.len() < asked;
        if let Some(last) = rows.last() {
            stream.last_key = Some(last.values()[M::KEY_INDEX].clone());
        }
        stream.rows = VecDeque::from(rows);
    }
    Ok(())
}

/// Moves rows into `out`, smallest key first, until it holds `limit` rows or the next row lies
/// beyond the bound (the smallest last key of the shards that may hold more).
fn merge<M: Model>(streams: &mut [Stream], out: &mut Vec<M>, limit: usize) -> Result<()> {
    let mut bound: Option<usize> = None;
    for (i, stream) in streams.iter().enumerate() {
        if stream.exhausted {
            continue;
        }
        let key = stream
            .last_key
            .as_ref()
            .expect("a shard that is not exhausted returned rows");
        if bound.is_none_or(|b| {
            let current = streams[b].last_key.as_ref().expect("set with the bound");
            compare_values(key, current) == Ordering::Less
        }) {
            bound = Some(i);
        }
    }
    while out.len() < limit {
        let mut best: Option<(usize, &Value)> = None;
        for (i, stream) in streams.iter().enumerate() {
            if let Some(row) = stream.rows.front() {
                let key = &row.values()[M::KEY_INDEX];
                if best.is_none_or(|(_, b)| compare_values(key, b) == Ordering::Less) {
                    best = Some((i, key));
                }
            }
        }
        let Some((index, key)) = best else {
            break;
        };
        if let Some(b) = bound {
            let bound_key = streams[b].last_key.as_ref().expect("set with the bound");
            if compare_values(key, bound_key) == Ordering::Greater {
                break;
            }
        }
        let row = streams[index].rows.pop_front().expect("a row was seen");
        out.push(M::from_values(row.into_values())?);
    }
    Ok(())
}

/// Orders two values as SQLite's `ORDER BY` does under the BINARY collation (the default, and
/// the one key columns use): `NULL` first, then numbers by value (integers and reals together),
/// then text by the bytes of its UTF-8 encoding, then blobs by their bytes.
///
/// This agrees with [`Key`](crate::key::Key)'s `Ord`: integer keys by value, before text keys,
/// text keys by UTF-8 bytes (Rust's `str` order). An integer and a real compare through `f64`,
/// exact for integers within ±2^53, the only integers collegedb stores.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn class(value: &Value) -> u8 {
        match value {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        (Value::Real(x), Value::Real(y)) => x.total_cmp(y),
        (Value::Integer(x), Value::Real(y)) => (*x as f64).total_cmp(y),
        (Value::Real(x), Value::Integer(y)) => x.total_cmp(&(*y as f64)),
        _ => class(a).cmp(&class(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    /// Hand-written models (the derive's output cannot name `collegedb` from inside it).
    macro_rules! test_model {
        ($name:ident, $key:ty, $table:literal, $key_type:expr) => {
            struct $name {
                id: $key,
            }
            impl Model for $name {
                type Key = $key;
                type Id = $key;
                const TABLE: &'static str = $table;
                const COLUMNS: &'static [crate::model::ColumnDef] = &[
                    crate::model::ColumnDef {
                        name: "id",
                        ty: $key_type,
                        nullable: false,
                    },
                    crate::model::ColumnDef {
                        name: "body",
                        ty: crate::value::ColumnType::Text,
                        nullable: true,
                    },
                ];
                const KEY_INDEX: usize = 0;
                const ID_COLUMNS: &'static [usize] = &[0];
                const STRATEGY: crate::config::StrategyOverride = crate::config::StrategyOverride {
                    read: None,
                    write: None,
                };
                fn key(&self) -> &$key {
                    &self.id
                }
                fn to_values(&self) -> Result<Vec<Value>> {
                    Ok(vec![self.id.clone().into(), Value::Null])
                }
                fn from_values(values: Vec<Value>) -> Result<Self> {
                    let id = values.into_iter().next().expect("a key");
                    Ok($name {
                        id: crate::value::ColumnValue::from_value(id)?,
                    })
                }
                fn sql() -> &'static ModelSql {
                    static SQL: std::sync::OnceLock<ModelSql> = std::sync::OnceLock::new();
                    SQL.get_or_init(ModelSql::render::<Self>)
                }
            }
        };
    }
    test_model!(IntModel, i64, "ints", crate::value::ColumnType::Integer);
    test_model!(TextModel, String, "texts", crate::value::ColumnType::Text);

    /// The scan statements keep the key's index in key order, never sort, and are not prepared
    /// again when a cached statement is run with another limit.
    #[cfg(all(feature = "embedded", not(target_arch = "wasm32")))]
    fn check_statements<M: Model>(after: Value) {
        use rusqlite::{params_from_iter, Connection, StatementStatus};

        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&M::sql().create_table).unwrap();
        for i in 0..50 {
            let key = match M::COLUMNS[M::KEY_INDEX].ty {
                crate::value::ColumnType::Integer => Value::Integer(i),
                _ => Value::Text(format!("k{i:03}")),
            };
            conn.execute(&M::sql().insert, params_from_iter([key, Value::Null]))
                .unwrap();
        }
        let sql = ScanSql::new(M::sql(), true);
        let first = sql.first.as_deref().unwrap();
        for (text, params) in [(first, vec![]), (sql.after.as_str(), vec![after])] {
            assert!(text.ends_with("LIMIT ? + 0"), "{text}");
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {text}"))
                .unwrap()
                .query_map(
                    params_from_iter(params.iter().cloned().chain([Value::Integer(5)])),
                    |row| row.get::<_, String>(3),
                )
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                plan.iter().all(|step| !step.contains("TEMP B-TREE")),
                "{text}: {plan:?}"
            );
            for limit in [5, 7, 1, 30, 5] {
                let mut stmt = conn.prepare_cached(text).unwrap();
                let all = params.iter().cloned().chain([Value::Integer(limit)]);
                let rows = stmt.query_map(params_from_iter(all), |_| Ok(())).unwrap();
                assert_eq!(rows.count(), limit as usize);
                assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{text}");
            }
        }
    }

    #[test]
    #[cfg(all(feature = "embedded", not(target_arch = "wasm32")))]
    fn scan_statements_use_the_key_order_and_are_planned_once() {
        check_statements::<IntModel>(Value::Integer(3));
        check_statements::<TextModel>(Value::Text("k003".into()));
    }

    #[test]
    fn only_a_trailing_limit_placeholder_is_rewritten() {
        assert_eq!(
            limit_as_expression("SELECT 1 LIMIT ?"),
            "SELECT 1 LIMIT ? + 0"
        );
        assert_eq!(limit_as_expression("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn first_requests_cover_the_page() {
        assert_eq!(first_request(100, 1), 101);
        assert_eq!(first_request(1, 3), 2);
        assert_eq!(first_request(100, 3), 34 + 10);
        assert_eq!(first_request(10, 3), 4 + 3);
        for shards in 1..20 {
            for limit in 1..=MAX_SCAN_LIMIT {
                let first = first_request(limit, shards);
                assert!(first * shards > limit, "{limit} over {shards}");
                assert!(first <= limit + 1);
            }
        }
    }

    #[test]
    fn value_order_agrees_with_key_order() {
        let keys = [
            Key::Int(-7),
            Key::Int(0),
            Key::Int(3),
            Key::Int(10),
            Key::Text("10".into()),
            Key::Text("3".into()),
            Key::Text("B".into()),
            Key::Text("a".into()),
            Key::Text("aa".into()),
            Key::Text("z".into()),
            Key::Text("é".into()),
            Key::Text("\u{ffff}".into()),
            Key::Text("😀".into()),
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    compare_values(&a.to_value(), &b.to_value()),
                    a.cmp(b),
                    "{a} vs {b}"
                );
            }
        }
        assert_eq!(
            compare_values(&Value::Integer(2), &Value::Real(2.5)),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&Value::Null, &Value::Integer(i64::MIN)),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&Value::Text("\u{10ffff}".into()), &Value::Blob(vec![0])),
            Ordering::Less
        );
    }
}
