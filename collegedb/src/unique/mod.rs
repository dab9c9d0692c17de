//! Unique secondary lookups: `#[sharded(unique)] email: String` makes `email` unique over every
//! shard and generates `User::find_by_email(&db, "a@b")`, one directory read and one shard query.
//!
//! Each unique column has a lookup scope in the directory store (`users.email`) whose entries
//! map a value to the primary key of the row that holds it (the parent's key and the row's own
//! on a colocated model). The entries are kept in the *consistent
//! lookup* order of Vitess, so that a crash never leaves a row without the entries of its values:
//!
//! 1. **Claim** each new value for the row's key before the row is written: the write puts its
//!    own *pending* entry in, stamped with the time and a tag no other write has. An entry
//!    naming another key is checked against that key's row: if the row holds the value, the
//!    write fails with [`Error::DuplicateValue`]; if not, the entry is an orphan, and is taken
//!    over with a compare-and-set. A pending entry younger than the lease
//!    ([`Config::unique_lease_ms`](crate::Config::unique_lease_ms)) is never taken over: its
//!    write may still be on its way, so the claim waits for it. An entry of the same key (left
//!    by an earlier write of it, or held by one running now) is taken over at once.
//! 2. **Write** the row.
//! 3. **Confirm** each claim (pending to *live*, compare-and-set), then **release** the entries
//!    of the values the row held before and no longer holds, each only if it is still the very
//!    entry read before the row was written.
//!
//! Every compare-and-set acts on one write's own entry, so two writes of one key never remove
//! each other's. A write that fails without writing its row (a later value is taken, the key
//! exists, the row is gone) removes its claims, except those whose value the row holds.
//!
//! | crash | leaves | effect |
//! | --- | --- | --- |
//! | after a claim, before the row | a pending entry, no row holding its value | reads ignore it; the next claim by another key takes it over once the lease has passed |
//! | after the row, before the confirm | a pending entry whose row holds the value | counts as live: reads find the row, claims of other keys fail |
//! | before a release | an entry whose row no longer holds the value | reads ignore it; the next claim takes it over at once |
//!
//! What is not promised: a write that stalls for longer than the lease between its claim and its
//! confirm can find its claim taken over by another key, whose row then holds the value too. It
//! undoes its row write (an insert deletes its row; an update or upsert puts the old values back,
//! if nothing else changed the row or its entries meanwhile) and fails with
//! [`Error::DuplicateValue`]. If it cannot undo, or dies first, the value stays on two rows, and
//! only the other one is found by its lookup.
//!
//! The lookups need a directory store with an atomic compare-and-set: the embedded store and the
//! Durable Object directory. A write of a model with unique columns through a KV directory fails
//! with `CONFIG_INVALID`.
//!
//! Writes that bypass the typed calls keep no lookups: raw SQL, and `update_many` (which refuses
//! to set a unique column). `delete_many` leaves orphan entries, which are harmless. Rows that
//! exist before a column becomes unique (or are adopted) have no entries: see [`backfill`].

mod claim;
mod entry;

pub(crate) use claim::Claim;
use claim::{abandon, claim_all, confirm, held, release, still_held};
use entry::Entry;
pub(crate) use entry::Owner;

use crate::backend::Backend;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::key::{Key, ShardKey};
use crate::model::Model;
use crate::router::CollegeDb;
use crate::value::Value;

/// A Rust type that a `#[sharded(unique)]` column can have: the shard key types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a unique column",
    label = "unsupported type for `#[sharded(unique)]`",
    note = "a `#[sharded(unique)]` field must be `String`, `i64`, `i32` or `u32`: its values are kept in the directory, as keys are"
)]
pub trait UniqueValue: ShardKey {}

impl<T: ShardKey> UniqueValue for T {}

/// The lookup scope of one unique column in the directory store: `table.column`. A dot cannot
/// appear in a table name, so it never meets a table's own entries.
pub fn scope(table: &str, column: &str) -> String {
    format!("{table}.{column}")
}

fn column_name<M: Model>(column: usize) -> &'static str {
    M::COLUMNS[column].name
}

/// [`Error::DuplicateValue`] for `column` of `M`.
pub(crate) fn duplicate_of<M: Model>(column: usize) -> Error {
    duplicate::<M>(column)
}

fn duplicate<M: Model>(column: usize) -> Error {
    Error::DuplicateValue {
        table: M::TABLE.to_owned(),
        column: column_name::<M>(column).to_owned(),
    }
}

/// A unique column's value as a directory key, with errors that name the column.
fn lookup_key<M: Model>(column: usize, value: Value) -> Result<Key> {
    let invalid = |reason: String| Error::UniqueValueInvalid {
        table: M::TABLE.to_owned(),
        column: column_name::<M>(column).to_owned(),
        reason,
    };
    Key::from_value(value).map_err(|error| match error {
        Error::KeyTooLarge { len, max } => invalid(format!(
            "{len} bytes; unique values are kept in the directory as keys, at most {max} bytes: store a shorter value, or make a hash of it the unique column"
        )),
        Error::KeyInvalid { reason } => invalid(reason.to_owned()),
        other => other,
    })
}

/// Logs a failed undo: the write's error is what the caller needs to see.
fn undo_failed<M: Model>(error: Error) {
    tracing::warn!(table = M::TABLE, %error, "could not undo a write whose unique value another key took over meanwhile");
}

/// The row `owner` names, read through `db`.
async fn row_of<M: Model, B: Backend>(db: &CollegeDb<B>, owner: &Owner) -> Result<Option<M>> {
    crate::crud::find_id::<M, B>(db, owner.placing().clone(), &owner.ids()).await
}

/// The row of `key` as it is now, on the primary, in column order.
async fn current<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
) -> Result<Option<Vec<Value>>> {
    row_of::<M, B>(&db.on_primary(), key)
        .await?
        .map(|row| row.to_values())
        .transpose()
}

/// Runs the row write of a claimed write. A failure that certainly wrote nothing (the key
/// exists, or the row is missing) abandons the claims; any other may have written the row, so
/// the claims stay pending (they count as live if the row holds their values).
async fn write_claimed<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    claims: &[Claim],
    write: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    match write.await {
        Err(error @ (Error::DuplicateKey { .. } | Error::RowNotFound { .. })) => {
            abandon::<M, B>(db, key, claims).await;
            Err(error)
        }
        other => other,
    }
}

/// Puts `old` back after a write whose claim another key took over, if the row is still what
/// the write made it and the old values' entries are unchanged; else leaves it.
async fn put_back<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    written: &[Value],
    old: Option<Vec<Value>>,
    held: &[claim::Held],
) -> Result<()> {
    if current::<M, B>(db, key).await?.as_deref() != Some(written) {
        return Ok(());
    }
    match old {
        None => crate::crud::delete_id::<M, B>(db, key.placing(), &key.ids())
            .await
            .map(drop),
        Some(old) if still_held::<M, B>(db, held).await? => {
            crate::crud::update_row(db, &M::from_values(old)?).await
        }
        Some(_) => Ok(()),
    }
}

/// [`crate::crud::insert`] of a model with unique columns.
pub(crate) async fn insert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    crate::model::check_ids::<M>(&values)?;
    let key = Owner::of_row::<M>(&values)?;
    let claims = claim_all::<M, B>(db, &key, &values, None).await?;
    write_claimed::<M, B>(db, &key, &claims, crate::crud::insert_row(db, row)).await?;
    if let Err(column) = confirm::<M, B>(db, &key, &claims).await? {
        if let Err(error) = put_back::<M, B>(db, &key, &values, None, &[]).await {
            undo_failed::<M>(error);
        }
        return Err(duplicate::<M>(column));
    }
    Ok(())
}

/// [`crate::crud::update`] and [`crate::crud::upsert`] of a model with unique columns: `old` is
/// the row as it is, `None` for an upsert of a new key.
async fn overwrite<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    row: &M,
    old: Option<Vec<Value>>,
    upsert: bool,
) -> Result<()> {
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    crate::model::check_ids::<M>(&values)?;
    let key = Owner::of_row::<M>(&values)?;
    let held = match &old {
        Some(old) => held::<M, B>(db, &key, old, Some(&values)).await?,
        None => Vec::new(),
    };
    let claims = claim_all::<M, B>(db, &key, &values, old.as_deref()).await?;
    let write = async {
        if upsert {
            crate::crud::upsert_row(db, row).await
        } else {
            crate::crud::update_row(db, row).await
        }
    };
    write_claimed::<M, B>(db, &key, &claims, write).await?;
    if let Err(column) = confirm::<M, B>(db, &key, &claims).await? {
        if let Err(error) = put_back::<M, B>(db, &key, &values, old, &held).await {
            undo_failed::<M>(error);
        }
        return Err(duplicate::<M>(column));
    }
    release::<M, B>(db, &held).await
}

/// [`crate::crud::update`] of a model with unique columns.
pub(crate) async fn update<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let key = Owner::of_row::<M>(&row.to_values()?)?;
    let Some(old) = current::<M, B>(db, &key).await? else {
        return Err(Error::RowNotFound {
            table: M::TABLE.to_owned(),
        });
    };
    overwrite(db, row, Some(old), false).await
}

/// [`crate::crud::upsert`] of a model with unique columns.
pub(crate) async fn upsert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let key = Owner::of_row::<M>(&row.to_values()?)?;
    let old = current::<M, B>(db, &key).await?;
    overwrite(db, row, old, true).await
}

/// [`crate::crud::delete`] of a model with unique columns: the row first, then its entries.
pub(crate) async fn delete<M: Model, B: Backend>(db: &CollegeDb<B>, key: Owner) -> Result<bool> {
    let Some(old) = current::<M, B>(db, &key).await? else {
        return Ok(false);
    };
    let held = held::<M, B>(db, &key, &old, None).await?;
    let deleted = crate::crud::delete_id::<M, B>(db, key.placing(), &key.ids()).await?;
    release::<M, B>(db, &held).await?;
    Ok(deleted)
}

/// The claims of the rows of one `insert_many` call, by key.
pub(crate) type RowClaims = Vec<(Owner, Vec<Claim>)>;

/// Claims the unique values of many new rows, before `insert_many` writes them, a batch of
/// directory claims per column. Two rows of the call with one value fail with
/// [`Error::DuplicateValue`] before anything is claimed; any failure removes the claims made.
pub(crate) async fn claim_rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[&M],
) -> Result<RowClaims> {
    let mut seen = std::collections::HashSet::new();
    let mut prepared = Vec::with_capacity(rows.len());
    for row in rows {
        let values = row.to_values()?;
        for &column in M::UNIQUE {
            if !seen.insert((column, lookup_key::<M>(column, values[column].clone())?)) {
                return Err(duplicate::<M>(column));
            }
        }
        prepared.push((Owner::of_row::<M>(&values)?, values));
    }
    let claims = claim::claim_batch::<M, B>(db, &prepared).await?;
    Ok(prepared
        .into_iter()
        .map(|(key, _)| key)
        .zip(claims)
        .collect())
}

/// Removes the claims of [`claim_rows`] whose values their rows do not hold, after rows were
/// not written.
pub(crate) async fn abandon_rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    claimed: &[(Owner, Vec<Claim>)],
) {
    for (key, claims) in claimed {
        abandon::<M, B>(db, key, claims).await;
    }
}

/// Confirms the claims of [`claim_rows`] after `insert_many` wrote the rows; returns the keys
/// whose claim another key took over meanwhile, with the column (their rows, if still as this
/// call wrote them, are deleted again), and whether every other confirm went through: a failed
/// one still reports the rows found lost before it.
pub(crate) async fn confirm_rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    claimed: &[(Owner, Vec<Claim>)],
    rows: &[&M],
) -> (Vec<(Owner, usize)>, Result<()>) {
    let mut lost = Vec::new();
    let mut outcomes = vec![Ok(()); claimed.len()];
    let confirmed = claim::confirm_batch::<M, B>(db, claimed, &mut outcomes).await;
    // Rows found lost are undone even when a later confirm failed.
    for (((key, claims), row), outcome) in claimed.iter().zip(rows).zip(outcomes) {
        if let Err(column) = outcome {
            let undone = match row.to_values() {
                Ok(values) => put_back::<M, B>(db, key, &values, None, &[]).await,
                Err(error) => Err(error),
            };
            if let Err(error) = undone {
                undo_failed::<M>(error);
            }
            // The claims of its later columns were never confirmed: free them now rather than
            // at the end of their lease (those the row still holds are kept).
            abandon::<M, B>(db, key, claims).await;
            lost.push((key.clone(), column));
        }
    }
    (lost, confirmed)
}

/// What [`backfill`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Rows read.
    pub rows: u64,
    /// Entries created or confirmed.
    pub entries: u64,
    /// Values held by more than one row: `(column, value)`; the first row met keeps the entry.
    pub duplicates: Vec<(String, String)>,
}

/// Creates the lookup entries of every existing row of `M`: for a column made unique on a table
/// that already has rows, or rows adopted or written with raw SQL. Reads every shard in
/// primary-key order, `page` rows at a time; safe to run again, and beside live writes (it claims values as
/// they do). Values held by two rows are reported, not changed: fix them, then run it again.
pub async fn backfill<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    page: usize,
) -> Result<BackfillReport> {
    claim::check_store::<M, B>(db)?;
    let mut report = BackfillReport::default();
    let mut cursor = None;
    // Pages in primary-key order over every shard (a colocated model's key is composite).
    let pages = crate::query::Query::<M>::new().limit(page.clamp(1, crate::scan::MAX_SCAN_LIMIT));
    loop {
        let rows = pages.page(db, cursor.as_ref()).await?;
        for row in &rows.rows {
            report.rows += 1;
            let values = row.to_values()?;
            let key = Owner::of_row::<M>(&values)?;
            for &column in M::UNIQUE {
                let value = lookup_key::<M>(column, values[column].clone())?;
                let kept = match claim::claim_one::<M, B>(db, &key, column, value.clone()).await {
                    Ok(claim) => confirm::<M, B>(db, &key, &[claim]).await?.is_ok(),
                    Err(Error::DuplicateValue { .. }) => false,
                    Err(error) => return Err(error),
                };
                if kept {
                    report.entries += 1;
                } else {
                    report
                        .duplicates
                        .push((column_name::<M>(column).to_owned(), value.to_string()));
                }
            }
        }
        match rows.next {
            Some(next) => cursor = Some(next),
            None => return Ok(report),
        }
    }
}

/// Finds the row whose unique `column` holds `value`: the value's entry names the key, and the
/// row is read by that key and checked, so an orphan or stale entry reads as absent.
pub async fn find_by<M: Model, B: Backend, V: UniqueValue>(
    db: &CollegeDb<B>,
    column: usize,
    value: V,
) -> Result<Option<M>> {
    let reads = db.reads_for::<M>();
    let db = &*reads;
    let value = lookup_key::<M>(column, value.to_value()?)?;
    let scope = scope(M::TABLE, column_name::<M>(column));
    let expected = value.to_value();
    let matches = |row: &M| -> Result<bool> { Ok(row.to_values()?.get(column) == Some(&expected)) };
    if let Some(owner) = db.directory_cache().owner(&scope, &value) {
        if let Some(row) = row_of::<M, B>(db, &owner).await? {
            if matches(&row)? {
                return Ok(Some(row));
            }
        }
        db.directory_cache().forget_owner(&scope, &value);
    }
    let Some(held) = db.directory().lookup(&scope, &value).await? else {
        return Ok(None);
    };
    let owner = Entry::parse(&held)?.owner;
    match row_of::<M, B>(db, &owner).await? {
        Some(row) if matches(&row)? => {
            db.directory_cache().remember_owner(&scope, &value, &owner);
            Ok(Some(row))
        }
        _ => Ok(None),
    }
}
