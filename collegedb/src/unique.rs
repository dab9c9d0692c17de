//! Unique secondary lookups: `#[sharded(unique)] email: String` makes `email` unique over every
//! shard and generates `User::find_by_email(&db, "a@b")`, one directory read and one shard query.
//!
//! Each unique column has a lookup scope in the directory store (`users.email`) whose entries
//! map a value to the key of the row that holds it. The entries are kept in the *consistent
//! lookup* order of Vitess, so that no crash can leave a live row without its entry:
//!
//! 1. **Claim** the value for the row's key before the row is written: the entry is created
//!    *pending*, stamped with the time. An entry naming another key is checked against that
//!    key's row: if the row holds the value, the write fails with [`Error::DuplicateValue`];
//!    if not, the entry is an orphan, and is taken over with a compare-and-set. A pending entry
//!    younger than the lease ([`Config::unique_lease_ms`](crate::Config::unique_lease_ms)) is
//!    never taken over: its write may still be on its way, so the claim waits for it.
//! 2. **Write** the row.
//! 3. **Confirm** the claim (pending to *live*, compare-and-set), then **release** the entries
//!    of values the row no longer holds (after an update that changed them, or a delete).
//!
//! A write that fails before its row is written (a later value is taken, the key exists)
//! removes the entries it created. A crash after step 1 leaves an orphan entry, which reads
//! ignore (every read checks the row) and the next claim of the value takes over once the lease
//! has passed. A crash after step 2 leaves a pending entry whose
//! row holds the value: it counts as live. A write that stalls for longer than the lease between
//! steps 1 and 3 may find its claim taken over at step 3; it then undoes its row write and fails
//! with [`Error::DuplicateValue`]. Only a process that dies inside that undo, after stalling past
//! the lease, can leave a second row with the value, and that row has no entry.
//!
//! The lookups are as strong as the directory store's compare-and-set: atomic in the embedded
//! store and on Durable Objects. KV has no compare-and-set, so two racing writes of one value
//! can both succeed there; use the Durable Object directory for unique columns.
//!
//! Writes that bypass the typed calls keep no lookups: raw SQL, and `update_many` (which refuses
//! to set a unique column). `delete_many` leaves orphan entries, which are harmless.

use crate::backend::Backend;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::key::{Key, ShardKey};
use crate::model::Model;
use crate::router::{pause, CollegeDb};
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

/// One lookup entry: the key of the row that holds the value, and, while the write that
/// claimed it has not confirmed it, when it was claimed.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    owner: Key,
    pending_since: Option<u64>,
}

impl Entry {
    /// `live <owner>` or `pending@<ms> <owner>`, the owner as `i:<integer>` or `t:<text>`.
    fn encode(&self) -> String {
        let owner = match &self.owner {
            Key::Int(n) => format!("i:{n}"),
            Key::Text(t) => format!("t:{t}"),
        };
        match self.pending_since {
            None => format!("live {owner}"),
            Some(ms) => format!("pending@{ms} {owner}"),
        }
    }

    fn parse(text: &str) -> Result<Self> {
        let malformed = || Error::Directory(format!("malformed unique lookup entry {text:?}"));
        let (state, owner) = text.split_once(' ').ok_or_else(malformed)?;
        let pending_since = match state {
            "live" => None,
            _ => Some(
                state
                    .strip_prefix("pending@")
                    .and_then(|ms| ms.parse().ok())
                    .ok_or_else(malformed)?,
            ),
        };
        let owner = match owner.split_at_checked(2) {
            Some(("i:", n)) => Key::Int(n.parse().map_err(|_| malformed())?),
            Some(("t:", t)) => Key::Text(t.to_owned()),
            _ => return Err(malformed()),
        };
        Ok(Entry {
            owner,
            pending_since,
        })
    }
}

/// A value claimed for a row, with the entry text the store holds for it.
#[derive(Debug)]
pub(crate) struct Claim {
    column: usize,
    value: Key,
    held: String,
    /// Whether this write created the entry (or took it over), rather than finding its key's.
    fresh: bool,
}

/// The unique values of `values` (a row in column order), by column position.
fn unique_values<M: Model>(values: &[Value]) -> Result<Vec<(usize, Key)>> {
    M::UNIQUE
        .iter()
        .map(|&column| Ok((column, lookup_key::<M>(column, values[column].clone())?)))
        .collect()
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

fn column_name<M: Model>(column: usize) -> &'static str {
    M::COLUMNS[column].name
}

fn duplicate<M: Model>(column: usize) -> Error {
    Error::DuplicateValue {
        table: M::TABLE.to_owned(),
        column: column_name::<M>(column).to_owned(),
    }
}

/// Whether the row of `owner` holds `value` in `column`, read on the primary.
async fn holds<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    owner: &Key,
    column: usize,
    value: &Key,
) -> Result<bool> {
    let primary = db.on_primary();
    let row = crate::crud::find_key::<M, B>(&primary, owner.clone()).await?;
    match row {
        Some(row) => Ok(row.to_values()?.get(column) == Some(&value.to_value())),
        None => Ok(false),
    }
}

/// The time in milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    crate::growth::now_ms()
}

/// Claims `value` of `column` for the row of `key` (step 1 of the module docs).
async fn claim_one<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Key,
    column: usize,
    value: Key,
) -> Result<Claim> {
    let scope = scope(M::TABLE, column_name::<M>(column));
    let lease = db.config().unique_lease_ms;
    let mut wait_ms = 1;
    loop {
        let mine = Entry {
            owner: key.clone(),
            pending_since: Some(now_ms()),
        }
        .encode();
        let held = db.directory().claim(&scope, &value, &mine).await?;
        let entry = Entry::parse(&held)?;
        if entry.owner == *key {
            return Ok(Claim {
                column,
                value,
                fresh: held == mine,
                held,
            });
        }
        if holds::<M, B>(db, &entry.owner, column, &value).await? {
            return Err(duplicate::<M>(column));
        }
        if let Some(since) = entry.pending_since {
            if now_ms().saturating_sub(since) < lease {
                // The claiming write may still be on its way: wait for its row or its lease.
                pause(std::time::Duration::from_millis(wait_ms)).await;
                wait_ms = (wait_ms * 2).min(100);
                continue;
            }
        }
        // An orphan: take it over, unless another write changed it first.
        let after = db.directory().replace(&scope, &value, &held, &mine).await?;
        if after.as_deref() == Some(mine.as_str()) {
            db.directory_cache().forget_owner(&scope, &value);
            return Ok(Claim {
                column,
                value,
                held: mine,
                fresh: true,
            });
        }
    }
}

/// Claims the values of `new` (a row of `key`, in column order) that `old` does not hold.
async fn claim_all<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Key,
    new: &[Value],
    old: Option<&[Value]>,
) -> Result<Vec<Claim>> {
    let mut claims = Vec::new();
    for (column, value) in unique_values::<M>(new)? {
        if old.is_some_and(|old| old.get(column) == Some(&new[column])) {
            continue;
        }
        match claim_one::<M, B>(db, key, column, value).await {
            Ok(claim) => claims.push(claim),
            Err(error) => {
                abandon::<M, B>(db, &claims).await?;
                return Err(error);
            }
        }
    }
    Ok(claims)
}

/// Removes the entries this write created, after it failed without writing its row: left
/// pending, they would hold the values off from other keys until the lease ran out.
async fn abandon<M: Model, B: Backend>(db: &CollegeDb<B>, claims: &[Claim]) -> Result<()> {
    for claim in claims.iter().filter(|c| c.fresh) {
        let scope = scope(M::TABLE, column_name::<M>(claim.column));
        db.directory()
            .remove_if(&scope, &claim.value, &claim.held)
            .await?;
    }
    Ok(())
}

/// Runs the row write of a claimed write; a failure that certainly wrote nothing (the key
/// exists, or the row is missing) abandons the claims. Any other failure may have written the
/// row, so the claims stay: pending entries, which count as live if the row holds their values.
async fn write_claimed<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    claims: &[Claim],
    write: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    match write.await {
        Err(error @ (Error::DuplicateKey { .. } | Error::RowNotFound { .. })) => {
            abandon::<M, B>(db, claims).await?;
            Err(error)
        }
        other => other,
    }
}

/// Turns the claims live (step 3). `Err(column)`: a claim was taken over meanwhile.
async fn confirm<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Key,
    claims: &[Claim],
) -> Result<std::result::Result<(), usize>> {
    let live = Entry {
        owner: key.clone(),
        pending_since: None,
    }
    .encode();
    for claim in claims {
        if claim.held == live {
            continue;
        }
        let scope = scope(M::TABLE, column_name::<M>(claim.column));
        let after = db
            .directory()
            .replace(&scope, &claim.value, &claim.held, &live)
            .await?;
        if after.as_deref() != Some(live.as_str()) {
            return Ok(Err(claim.column));
        }
        db.directory_cache()
            .remember_owner(&scope, &claim.value, key);
    }
    Ok(Ok(()))
}

/// Removes the entries of the values `old` held and `new` does not, where they still name `key`.
async fn release<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Key,
    old: &[Value],
    new: Option<&[Value]>,
) -> Result<()> {
    for (column, value) in unique_values::<M>(old)? {
        if new.is_some_and(|new| new.get(column) == Some(&old[column])) {
            continue;
        }
        let scope = scope(M::TABLE, column_name::<M>(column));
        db.directory_cache().forget_owner(&scope, &value);
        let Some(held) = db.directory().lookup(&scope, &value).await? else {
            continue;
        };
        if Entry::parse(&held)?.owner == *key {
            db.directory().remove_if(&scope, &value, &held).await?;
        }
    }
    Ok(())
}

/// The row of `key` as it is now, on the primary, in column order.
async fn current<M: Model, B: Backend>(db: &CollegeDb<B>, key: &Key) -> Result<Option<Vec<Value>>> {
    let primary = db.on_primary();
    crate::crud::find_key::<M, B>(&primary, key.clone())
        .await?
        .map(|row| row.to_values())
        .transpose()
}

/// [`crate::crud::insert`] of a model with unique columns.
pub(crate) async fn insert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    let key = row.key().clone().into_key()?;
    let claims = claim_all::<M, B>(db, &key, &values, None).await?;
    write_claimed::<M, B>(db, &claims, crate::crud::insert_row(db, row)).await?;
    if let Err(column) = confirm::<M, B>(db, &key, &claims).await? {
        crate::crud::delete_key::<M, B>(db, &key).await?;
        return Err(duplicate::<M>(column));
    }
    Ok(())
}

/// [`crate::crud::update`] of a model with unique columns.
pub(crate) async fn update<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    let key = row.key().clone().into_key()?;
    let Some(old) = current::<M, B>(db, &key).await? else {
        return Err(Error::RowNotFound {
            table: M::TABLE.to_owned(),
        });
    };
    let claims = claim_all::<M, B>(db, &key, &values, Some(&old)).await?;
    write_claimed::<M, B>(db, &claims, crate::crud::update_row(db, row)).await?;
    if let Err(column) = confirm::<M, B>(db, &key, &claims).await? {
        crate::crud::update_row(db, &M::from_values(old)?).await?;
        return Err(duplicate::<M>(column));
    }
    release::<M, B>(db, &key, &old, Some(&values)).await
}

/// [`crate::crud::upsert`] of a model with unique columns.
pub(crate) async fn upsert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    let key = row.key().clone().into_key()?;
    let old = current::<M, B>(db, &key).await?;
    let claims = claim_all::<M, B>(db, &key, &values, old.as_deref()).await?;
    write_claimed::<M, B>(db, &claims, crate::crud::upsert_row(db, row)).await?;
    if let Err(column) = confirm::<M, B>(db, &key, &claims).await? {
        match old {
            Some(old) => crate::crud::upsert_row(db, &M::from_values(old)?).await?,
            None => {
                crate::crud::delete_key::<M, B>(db, &key).await?;
            }
        }
        return Err(duplicate::<M>(column));
    }
    match old {
        Some(old) => release::<M, B>(db, &key, &old, Some(&values)).await,
        None => Ok(()),
    }
}

/// [`crate::crud::delete`] of a model with unique columns: the row first, then its entries.
pub(crate) async fn delete<M: Model, B: Backend>(db: &CollegeDb<B>, key: Key) -> Result<bool> {
    let Some(old) = current::<M, B>(db, &key).await? else {
        return Ok(false);
    };
    let deleted = crate::crud::delete_key::<M, B>(db, &key).await?;
    release::<M, B>(db, &key, &old, None).await?;
    Ok(deleted)
}

/// Claims the unique values of many new rows, before `insert_many` writes them. Two rows of the
/// call with one value fail with [`Error::DuplicateValue`] before anything is claimed.
pub(crate) async fn claim_rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[M],
) -> Result<Vec<(Key, Vec<Claim>)>> {
    let mut seen = std::collections::HashSet::new();
    let mut prepared = Vec::with_capacity(rows.len());
    for row in rows {
        let values = row.to_values()?;
        for (column, value) in unique_values::<M>(&values)? {
            if !seen.insert((column, value)) {
                return Err(duplicate::<M>(column));
            }
        }
        prepared.push((row.key().clone().into_key()?, values));
    }
    let mut claimed = Vec::with_capacity(rows.len());
    for (key, values) in prepared {
        match claim_all::<M, B>(db, &key, &values, None).await {
            Ok(claims) => claimed.push((key, claims)),
            Err(error) => {
                // Nothing is written yet: the other rows' claims go too.
                abandon_rows::<M, B>(db, &claimed).await?;
                return Err(error);
            }
        }
    }
    Ok(claimed)
}

/// Removes the entries [`claim_rows`] created, after `insert_many` failed without writing a row.
pub(crate) async fn abandon_rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    claimed: &[(Key, Vec<Claim>)],
) -> Result<()> {
    for (_, claims) in claimed {
        abandon::<M, B>(db, claims).await?;
    }
    Ok(())
}

/// Confirms the claims of [`claim_rows`] after `insert_many` wrote the rows. A row whose claim
/// was taken over meanwhile is deleted again, and the call fails with [`Error::DuplicateValue`].
pub(crate) async fn confirm_rows<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    claimed: &[(Key, Vec<Claim>)],
) -> Result<()> {
    let mut lost = None;
    for (key, claims) in claimed {
        if let Err(column) = confirm::<M, B>(db, key, claims).await? {
            crate::crud::delete_key::<M, B>(db, key).await?;
            lost.get_or_insert(column);
        }
    }
    match lost {
        Some(column) => Err(duplicate::<M>(column)),
        None => Ok(()),
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
        if let Some(row) = crate::crud::find_key::<M, B>(db, owner).await? {
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
    match crate::crud::find_key::<M, B>(db, owner.clone()).await? {
        Some(row) if matches(&row)? => {
            db.directory_cache().remember_owner(&scope, &value, &owner);
            Ok(Some(row))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        for entry in [
            Entry {
                owner: Key::Int(-42),
                pending_since: None,
            },
            Entry {
                owner: Key::Text("a b:c".into()),
                pending_since: Some(1_700_000_000_000),
            },
            Entry {
                owner: Key::Text(String::new()),
                pending_since: None,
            },
        ] {
            assert_eq!(Entry::parse(&entry.encode()).unwrap(), entry);
        }
        for bad in [
            "",
            "live",
            "live x:1",
            "pending@ t:a",
            "pending@x t:a",
            "live i:z",
        ] {
            assert!(Entry::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
