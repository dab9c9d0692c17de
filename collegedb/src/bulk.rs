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
//!
//! A model with `#[sharded(unique)]` columns claims every row's unique values between steps 3
//! and 4, and confirms them after step 4, in the order [`crate::unique`] describes. Two rows of
//! the input with one value fail the call with [`Error::DuplicateValue`] before anything is
//! claimed. The claims of a column go as one batch, and so do its confirms (one request per
//! directory partition on Workers). A value that already has an entry (taken, orphaned, or
//! left by an earlier run of the same call), and every claim of a call that fails, takes about
//! two requests of its own: on Workers (1,000 subrequests per invocation) keep a call that may
//! re-run under about 400 rows per unique column.

use std::collections::{BTreeMap, HashMap};

use crate::backend::{Backend, ShardConn, Statement};
use crate::crud::duplicate_or;
use crate::error::{Error, Result};
use crate::fence;
use crate::key::{Key, ShardKey};
use crate::model::{insert_rows, insert_rows_or_ignore, rows_per_statement, select_by_keys, Model};
use crate::router::{Backoff, CollegeDb};
use crate::slots::slot_of;
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
    /// The key that places the row.
    key: Key,
    /// What identifies the row: the key, or for a colocated model `[parent key, own key]`.
    id: Id,
    values: Vec<Value>,
}

/// A row's primary key, as keys.
type Id = Vec<Key>;

/// The primary key of a row given in column order.
fn id_of<M: Model>(values: &[Value]) -> Result<Id> {
    M::ID_COLUMNS
        .iter()
        .map(|&i| Key::from_value(values[i].clone()))
        .collect()
}

/// Step 1: every row's values and key, checked, with no key twice.
fn prepare<M: Model>(rows: &[M]) -> Result<Vec<Prepared>> {
    let mut first_seen: HashMap<Id, usize> = HashMap::with_capacity(rows.len());
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let refused = |source: Error| Error::BatchRow {
                index,
                source: Box::new(source),
            };
            let values = row.to_values().map_err(refused)?;
            crate::model::check_row(&values).map_err(refused)?;
            let key = row.key().clone().into_key().map_err(refused)?;
            let id = id_of::<M>(&values).map_err(refused)?;
            if let Some(first) = first_seen.insert(id.clone(), index) {
                return Err(Error::DuplicateInBatch {
                    table: M::TABLE.to_owned(),
                    first,
                    second: index,
                });
            }
            Ok(Prepared {
                index,
                key,
                id,
                values,
            })
        })
        .collect()
}

/// Steps 1 and 2: validated rows grouped by owner shard, in shard order, and whether the shard
/// map placed them (hash writes: their statements are fenced, see [`crate::fence`]).
async fn place_all<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[M],
) -> Result<(BTreeMap<usize, Vec<Prepared>>, bool)> {
    let prepared = prepare(rows)?;
    let write = db.strategies(M::STRATEGY).write;
    let keys: Vec<Key> = prepared.iter().map(|row| row.key.clone()).collect();
    let owners = db.place_many(M::SCOPE, &keys, write).await?;
    let mut by_shard: BTreeMap<usize, Vec<Prepared>> = BTreeMap::new();
    for (row, shard) in prepared.into_iter().zip(owners) {
        by_shard.entry(shard).or_default().push(row);
    }
    Ok((by_shard, write == crate::config::Strategy::Hash))
}

/// The rows of `keys` (placing keys) present on `shard`, by primary key, read in chunks within
/// the parameter limit.
async fn existing<M: Model, S: ShardConn>(
    shard: &S,
    keys: impl Iterator<Item = Value>,
) -> Result<HashMap<Id, Vec<Value>>> {
    let mut keys: Vec<Value> = keys.collect();
    keys.dedup();
    let mut found = HashMap::new();
    for chunk in keys.chunks(crate::model::MAX_BOUND_PARAMETERS) {
        for row in shard
            .query(&select_by_keys::<M>(chunk.len()), chunk)
            .await?
        {
            let values = row.into_values();
            found.insert(id_of::<M>(&values)?, values);
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

/// Step 4 for one shard's rows: one transaction behind the fence's guards (see
/// [`crate::fence`]): the rows' slots when the map placed them, [`fence::LIVE`] when the
/// directory did, and the keys' tombstones. If the shard refuses (a move, or a key reassigned
/// elsewhere), nothing is written there and the rows are placed again by the refreshed map or
/// the directory. Returns the rows changed on each shard.
async fn write_shard<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    shard: usize,
    rows: Vec<&Prepared>,
    by_map: bool,
    ignore_existing: bool,
) -> Result<Vec<(usize, u64)>> {
    let mut pending = vec![(shard, by_map, rows)];
    let mut written = Vec::new();
    let mut backoff = Backoff::new();
    while let Some((shard, by_map, rows)) = pending.pop() {
        let fences: Vec<i64> = if by_map {
            rows.iter()
                .map(|row| i64::from(slot_of(&row.key)))
                .collect()
        } else {
            vec![fence::LIVE]
        };
        let keys: Vec<Value> = rows.iter().map(|row| row.key.to_value()).collect();
        let statements = statements::<M>(&rows, ignore_existing);
        let guard = Some((M::SCOPE, &keys[..]));
        let refusal = match fence::guarded_batch(db, shard, &fences, guard, &statements)
            .await
            .map_err(|e| duplicate_or::<M, B>(db, shard, e))?
        {
            Ok(changed) => {
                written.push((shard, changed.iter().sum()));
                continue;
            }
            Err(refusal) => refusal,
        };
        let mut regrouped: BTreeMap<(usize, bool), Vec<&Prepared>> = BTreeMap::new();
        match refusal {
            fence::Refusal::NotOwned => {
                db.after_not_owned(fences[0], &mut backoff).await?;
                let keys: Vec<Key> = rows.iter().map(|row| row.key.clone()).collect();
                let owners = if by_map {
                    keys.iter().map(|key| db.hash_shard(key)).collect()
                } else {
                    for key in &keys {
                        db.directory_cache().invalidate(M::SCOPE, key);
                    }
                    let write = db.strategies(M::STRATEGY).write;
                    db.place_many(M::SCOPE, &keys, write).await?
                };
                for (row, owner) in rows.into_iter().zip(owners) {
                    regrouped.entry((owner, by_map)).or_default().push(row);
                }
            }
            fence::Refusal::Moved => {
                // Some key has a tombstone here: each row goes where the directory store names,
                // or stays (a reassignment in flight, waited out).
                let mut redirected = false;
                for row in rows {
                    match db.directory_lookup_fresh(M::SCOPE, &row.key).await? {
                        Some(owner) if owner != shard => {
                            redirected = true;
                            regrouped.entry((owner, false)).or_default().push(row);
                        }
                        _ => regrouped.entry((shard, by_map)).or_default().push(row),
                    }
                }
                if !redirected {
                    backoff.wait(fences[0]).await?;
                }
            }
        }
        pending.extend(
            regrouped
                .into_iter()
                .map(|((shard, by_map), rows)| (shard, by_map, rows)),
        );
    }
    Ok(written)
}

/// Inserts many new rows: validated first, grouped by owner shard, one transaction per shard.
/// Fails with [`Error::DuplicateKey`], having written nothing, if a key already exists. Returns
/// the number of rows inserted. See the [module docs](self) for exactly what is atomic.
pub async fn insert_many<M: Model, B: Backend>(db: &CollegeDb<B>, rows: &[M]) -> Result<usize> {
    let (by_shard, by_map) = place_all(db, rows).await?;
    for (&shard, rows) in &by_shard {
        let keys = rows.iter().map(|row| row.key.to_value());
        let present = existing::<M, _>(db.shard(shard), keys).await?;
        if rows.iter().any(|row| present.contains_key(&row.id)) {
            return Err(Error::DuplicateKey {
                table: M::TABLE.to_owned(),
                shard: db.shard_name(shard).to_owned(),
            });
        }
    }
    let all: Vec<&M> = rows.iter().collect();
    let claimed = if M::UNIQUE.is_empty() {
        Vec::new()
    } else {
        crate::unique::claim_rows(db, &all).await?
    };
    let mut written = 0;
    for (shard, rows) in by_shard {
        let rows: Vec<&Prepared> = rows.iter().collect();
        match write_shard::<M, B>(db, shard, rows, by_map, false).await {
            Ok(changed) => {
                for (shard, changed) in changed {
                    written += changed as usize;
                    db.note_rows(shard, M::TABLE, changed as i64);
                }
            }
            Err(error) if written == 0 => {
                if matches!(error, Error::DuplicateKey { .. }) {
                    // A key inserted meanwhile: nothing of this call was written.
                    crate::unique::abandon_rows::<M, B>(db, &claimed).await;
                }
                return Err(error);
            }
            Err(error) => {
                return Err(Error::PartiallyWritten {
                    written,
                    source: Box::new(error),
                })
            }
        }
    }
    // Every row is written: a failed confirm leaves pending entries that count as live (their
    // rows hold the values), and the caller learns which rows are there.
    let (lost, confirmed) = crate::unique::confirm_rows::<M, B>(db, &claimed, &all).await;
    if let Err(error) = confirmed {
        return Err(partially(written.saturating_sub(lost.len()), error));
    }
    if let Some((_, column)) = lost.first() {
        // Claims another key took over meanwhile: those rows were deleted again.
        return Err(partially(
            written.saturating_sub(lost.len()),
            crate::unique::duplicate_of::<M>(*column),
        ));
    }
    Ok(written)
}

/// `source`, or [`Error::PartiallyWritten`] if rows were written.
fn partially(written: usize, source: Error) -> Error {
    if written == 0 {
        source
    } else {
        Error::PartiallyWritten {
            written,
            source: Box::new(source),
        }
    }
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
    let (by_shard, by_map) = place_all(db, rows).await?;
    // Rows whose key holds other content are refused, not written: none of their values is
    // claimed.
    let mut claimable: Vec<&M> = Vec::new();
    if !M::UNIQUE.is_empty() {
        let mut refused = std::collections::HashSet::new();
        for (&shard, prepared) in &by_shard {
            let keys = prepared.iter().map(|r| r.key.to_value());
            let present = existing::<M, _>(db.shard(shard), keys).await?;
            for row in prepared {
                if present
                    .get(&row.id)
                    .is_some_and(|stored| !same_row(stored, &row.values))
                {
                    refused.insert(row.index);
                }
            }
        }
        claimable = (0..rows.len())
            .filter(|i| !refused.contains(i))
            .map(|i| &rows[i])
            .collect();
    }
    let claimed = if M::UNIQUE.is_empty() {
        Vec::new()
    } else {
        crate::unique::claim_rows(db, &claimable).await?
    };
    let mut report = InsertReport::default();
    let mut conflict = None;
    for (shard, rows) in by_shard {
        let present =
            existing::<M, _>(db.shard(shard), rows.iter().map(|r| r.key.to_value())).await?;
        let mut missing = Vec::with_capacity(rows.len());
        for row in &rows {
            match present.get(&row.id) {
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
        let mut changed = 0;
        for (written_on, n) in write_shard::<M, B>(db, shard, missing.clone(), by_map, true).await?
        {
            changed += n;
            db.note_rows(written_on, M::TABLE, n as i64);
        }
        report.inserted += changed as usize;
        if changed as usize != missing.len() {
            let keys = missing.iter().map(|row| row.key.to_value());
            let now = existing::<M, _>(db.shard(shard), keys).await?;
            let raced = missing.len() - changed as usize;
            let equal = missing
                .iter()
                .filter(|row| now.get(&row.id).is_some_and(|s| same_row(s, &row.values)))
                .count();
            // Rows this call wrote are equal by construction; the rest raced in.
            let raced_equal = equal.saturating_sub(changed as usize).min(raced);
            report.already_present += raced_equal;
            if raced_equal < raced {
                conflict.get_or_insert((usize::MAX, shard));
            }
        }
    }
    let (lost, confirmed) = crate::unique::confirm_rows::<M, B>(db, &claimed, &claimable).await;
    confirmed?;
    if let Some((_, column)) = lost.first() {
        return Err(crate::unique::duplicate_of::<M>(*column));
    }
    match conflict {
        Some((_, shard)) => Err(Error::DuplicateKey {
            table: M::TABLE.to_owned(),
            shard: db.shard_name(shard).to_owned(),
        }),
        None => Ok(report),
    }
}
