//! Writes of many rows at once: [`insert_many`] and its resumable form,
//! [`insert_many_idempotent`].
//!
//! # What is atomic, and how to finish an interrupted import
//!
//! Both calls run in the same four steps:
//!
//! 1. **Validate every row** before anything is claimed or written: values (integers D1 can
//!    carry, no NaN), keys (size, emptiness) and keys repeated within the input. A bad row fails
//!    the call with [`Error::BatchRow`] (its index and the reason) or
//!    [`Error::DuplicateInBatch`], and nothing at all has been written.
//! 2. **Place every key** with the model's write strategy. Keys placed by round-robin, random or
//!    location claim their directory entries now; a key claimed by an earlier, interrupted call
//!    keeps the shard it claimed.
//! 3. `insert_many` only: **check** every owner shard for keys that already exist, and fail with
//!    [`Error::DuplicateKey`] before writing if one does.
//! 4. **Write** each shard's rows in one transaction (D1 `batch()`), shard after shard, each
//!    statement within D1's 100 bound parameters.
//!
//! Each shard's rows commit all together or not at all; the call as a whole is not one
//! transaction, because D1 has none across databases. If the process dies in step 4, or a
//! concurrent writer inserts one of the keys between steps 3 and 4, the shards written before the
//! failure keep their rows. Run the same input through [`insert_many_idempotent`] to finish: it
//! skips rows that are already present with equal content, inserts the rest, and refuses
//! (without overwriting) rows whose key exists with different content.

use std::collections::{BTreeMap, HashMap};

use crate::backend::{Backend, ShardConn, Statement};
use crate::crud::duplicate_or;
use crate::error::{Error, Result};
use crate::key::{Key, ShardKey};
use crate::model::{insert_rows, insert_rows_or_ignore, rows_per_statement, select_by_keys, Model};
use crate::router::CollegeDb;
use crate::value::Value;

/// What [`insert_many_idempotent`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertReport {
    /// Rows written by this call.
    pub inserted: usize,
    /// Rows that were already present with equal content, and were left as they were.
    pub already_present: usize,
}

/// One validated input row.
struct Prepared {
    index: usize,
    key: Key,
    values: Vec<Value>,
}

/// Step 1: every row's values and key, checked, with no key twice.
fn prepare<M: Model>(rows: &[M]) -> Result<Vec<Prepared>> {
    let mut first_seen: HashMap<Key, usize> = HashMap::with_capacity(rows.len());
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let refused = |source: Error| Error::BatchRow {
                index,
                source: Box::new(source),
            };
            let values = row.to_values().map_err(refused)?;
            let key = row.key().clone().into_key().map_err(refused)?;
            if let Some(first) = first_seen.insert(key.clone(), index) {
                return Err(Error::DuplicateInBatch {
                    table: M::TABLE.to_owned(),
                    first,
                    second: index,
                });
            }
            Ok(Prepared { index, key, values })
        })
        .collect()
}

/// Steps 1 and 2: validated rows grouped by owner shard, in shard order.
async fn place_all<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[M],
) -> Result<BTreeMap<usize, Vec<Prepared>>> {
    let prepared = prepare(rows)?;
    let write = db.strategies(M::STRATEGY).write;
    let keys: Vec<Key> = prepared.iter().map(|row| row.key.clone()).collect();
    let owners = db.place_many(M::TABLE, &keys, write).await?;
    let mut by_shard: BTreeMap<usize, Vec<Prepared>> = BTreeMap::new();
    for (row, shard) in prepared.into_iter().zip(owners) {
        by_shard.entry(shard).or_default().push(row);
    }
    Ok(by_shard)
}

/// The rows of `keys` present on `shard`, by key, read in chunks within the parameter limit.
async fn existing<M: Model, S: ShardConn>(
    shard: &S,
    keys: impl Iterator<Item = Value>,
) -> Result<HashMap<Key, Vec<Value>>> {
    let keys: Vec<Value> = keys.collect();
    let mut found = HashMap::new();
    for chunk in keys.chunks(crate::model::MAX_BOUND_PARAMETERS) {
        for row in shard
            .query(&select_by_keys::<M>(chunk.len()), chunk)
            .await?
        {
            let values = row.into_values();
            let key = Key::from_value(values[M::KEY_INDEX].clone())?;
            found.insert(key, values);
        }
    }
    Ok(found)
}

/// Whether a stored row holds the values an input row would write. Numbers compare by value (D1
/// returns an integral REAL as an integer), and text that is JSON compares as JSON (a map may
/// serialize its keys in another order).
fn same_row(stored: &[Value], input: &[Value]) -> bool {
    stored.len() == input.len() && stored.iter().zip(input).all(|(a, b)| same_value(a, b))
}

fn same_value(stored: &Value, input: &Value) -> bool {
    match (stored, input) {
        (Value::Integer(i), Value::Real(f)) | (Value::Real(f), Value::Integer(i)) => {
            *i as f64 == *f
        }
        (Value::Text(a), Value::Text(b)) if a != b => {
            let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
            matches!((json(a), json(b)), (Some(x), Some(y)) if x == y)
        }
        (a, b) => a == b,
    }
}

/// Step 4 for one shard: `rows` in statements of at most 100 parameters, one transaction.
fn statements<M: Model>(rows: &[&Prepared], ignore_existing: bool) -> Vec<Statement> {
    let per_statement = rows_per_statement::<M>();
    rows.chunks(per_statement)
        .map(|chunk| {
            let sql = if ignore_existing {
                insert_rows_or_ignore::<M>(chunk.len())
            } else {
                insert_rows::<M>(chunk.len())
            };
            let params = chunk.iter().flat_map(|row| row.values.clone()).collect();
            Statement::new(sql, params)
        })
        .collect()
}

/// Inserts many new rows: validated first, grouped by owner shard, one transaction per shard.
/// Fails with [`Error::DuplicateKey`], having written nothing, if a key already exists. Returns
/// the number of rows inserted. See the [module docs](self) for exactly what is atomic.
pub async fn insert_many<M: Model, B: Backend>(db: &CollegeDb<B>, rows: &[M]) -> Result<usize> {
    let by_shard = place_all(db, rows).await?;
    for (&shard, rows) in &by_shard {
        let keys = rows.iter().map(|row| row.key.to_value());
        if !existing::<M, _>(db.shard(shard), keys).await?.is_empty() {
            return Err(Error::DuplicateKey {
                table: M::TABLE.to_owned(),
                shard: db.shard_name(shard).to_owned(),
            });
        }
    }
    let mut written = 0;
    for (shard, rows) in by_shard {
        let rows: Vec<&Prepared> = rows.iter().collect();
        let result = db.shard(shard).batch(&statements::<M>(&rows, false)).await;
        if let Err(error) = result {
            let error = duplicate_or::<M, B>(db, shard, error);
            return Err(if written == 0 {
                error
            } else {
                Error::PartiallyWritten {
                    written,
                    source: Box::new(error),
                }
            });
        }
        written += rows.len();
        db.note_rows(shard, M::TABLE, rows.len() as i64);
    }
    Ok(written)
}

/// Inserts the rows that are not present yet, and can be run again with the same input until it
/// succeeds: the way to finish an interrupted [`insert_many`] or import.
///
/// A row whose key is already present with equal content is skipped. A row whose key is present
/// with different content is never overwritten: the call writes every other row and then fails
/// with [`Error::DuplicateKey`] naming the shard. Validation is the same as `insert_many`'s, and a
/// bad row fails the call before anything is written.
pub async fn insert_many_idempotent<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[M],
) -> Result<InsertReport> {
    let by_shard = place_all(db, rows).await?;
    let mut report = InsertReport::default();
    let mut conflict = None;
    for (shard, rows) in by_shard {
        let present =
            existing::<M, _>(db.shard(shard), rows.iter().map(|r| r.key.to_value())).await?;
        let mut missing = Vec::with_capacity(rows.len());
        for row in &rows {
            match present.get(&row.key) {
                None => missing.push(row),
                Some(stored) if same_row(stored, &row.values) => report.already_present += 1,
                Some(_) => {
                    conflict.get_or_insert((row.index, shard));
                }
            }
        }
        if missing.is_empty() {
            continue;
        }
        // `ON CONFLICT DO NOTHING`: a row a concurrent writer inserted since the check above is
        // left alone, and compared below.
        let changed: u64 = db
            .shard(shard)
            .batch(&statements::<M>(&missing, true))
            .await?
            .iter()
            .sum();
        report.inserted += changed as usize;
        db.note_rows(shard, M::TABLE, changed as i64);
        if changed as usize != missing.len() {
            let keys = missing.iter().map(|row| row.key.to_value());
            let now = existing::<M, _>(db.shard(shard), keys).await?;
            let raced = missing.len() - changed as usize;
            let equal = missing
                .iter()
                .filter(|row| now.get(&row.key).is_some_and(|s| same_row(s, &row.values)))
                .count();
            // Rows this call wrote are equal by construction; the rest raced in.
            let raced_equal = equal.saturating_sub(changed as usize).min(raced);
            report.already_present += raced_equal;
            if raced_equal < raced {
                conflict.get_or_insert((usize::MAX, shard));
            }
        }
    }
    match conflict {
        Some((_, shard)) => Err(Error::DuplicateKey {
            table: M::TABLE.to_owned(),
            shard: db.shard_name(shard).to_owned(),
        }),
        None => Ok(report),
    }
}
