//! The steps of the consistent-lookup order for the values of one row: claim, confirm, abandon
//! and release (see the [module docs](super)).

use super::entry::{Entry, Owner};
use super::{column_name, duplicate, lookup_key, scope};
use crate::backend::Backend;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::model::Model;
use crate::router::{pause, CollegeDb};
use crate::value::Value;

/// A value this write holds in its column's lookup: the text of its own pending entry.
#[derive(Debug)]
pub(crate) struct Claim {
    column: usize,
    value: Key,
    entry: Entry,
    held: String,
}

/// An entry of a value the row held before this write, as read before the row was written:
/// released after the write only if it is still that very text.
#[derive(Debug)]
pub(super) struct Held {
    column: usize,
    value: Key,
    text: String,
}

/// Whether the row of `owner` holds `value` in `column`, read on the primary.
pub(super) async fn holds<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    owner: &Owner,
    column: usize,
    value: &Key,
) -> Result<bool> {
    let row = super::row_of::<M, B>(&db.on_primary(), owner).await?;
    match row {
        Some(row) => Ok(row.to_values()?.get(column) == Some(&value.to_value())),
        None => Ok(false),
    }
}

fn now_ms() -> u64 {
    crate::growth::now_ms()
}

/// Claims `value` of `column` for the row of `key` (step 1).
pub(super) async fn claim_one<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    column: usize,
    value: Key,
) -> Result<Claim> {
    let scope = scope(M::TABLE, column_name::<M>(column));
    let lease = db.config().unique_lease_ms;
    let mut wait_ms = 1;
    loop {
        let entry = Entry::pending(key, now_ms());
        let mine = entry.encode();
        let claim = |held: String| Claim {
            column,
            value: value.clone(),
            entry: entry.clone(),
            held,
        };
        let held = db.directory().claim(&scope, &value, &mine).await?;
        if held == mine {
            return Ok(claim(held));
        }
        let found = Entry::parse(&held)?;
        if found.owner != *key {
            if holds::<M, B>(db, &found.owner, column, &value).await? {
                return Err(duplicate::<M>(column));
            }
            if let Some(since) = found.pending_since {
                if now_ms().saturating_sub(since) < lease {
                    // The claiming write may still be on its way: wait for its row or its
                    // lease, polling less and less often.
                    pause(std::time::Duration::from_millis(wait_ms)).await;
                    wait_ms = (wait_ms * 2).min(1_000);
                    continue;
                }
            }
        }
        // An orphan of another key, or the entry of this key left by another write of it:
        // this write takes it over with its own text, so that it confirms, abandons or releases
        // only what it wrote itself.
        let after = db.directory().replace(&scope, &value, &held, &mine).await?;
        if after.as_deref() == Some(mine.as_str()) {
            db.directory_cache().forget_owner(&scope, &value);
            return Ok(claim(mine));
        }
    }
}

/// Refuses a directory store without an atomic compare-and-set (KV).
pub(super) fn check_store<M: Model, B: Backend>(db: &CollegeDb<B>) -> Result<()> {
    if db.directory().compares_and_sets() {
        return Ok(());
    }
    Err(Error::config(format!(
        "`{}` has unique columns, whose lookups need a directory with an atomic compare-and-set: use the Durable Object directory, not KV",
        M::TABLE
    )))
}

/// Claims the values of `new` (a row of `key`, in column order) that `old` does not hold. On a
/// failure nothing claimed stays behind but what the row of `key` holds.
pub(super) async fn claim_all<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    new: &[Value],
    old: Option<&[Value]>,
) -> Result<Vec<Claim>> {
    check_store::<M, B>(db)?;
    let mut claims = Vec::new();
    for &column in M::UNIQUE {
        if old.is_some_and(|old| old.get(column) == Some(&new[column])) {
            continue;
        }
        let value = lookup_key::<M>(column, new[column].clone())?;
        match claim_one::<M, B>(db, key, column, value).await {
            Ok(claim) => claims.push(claim),
            Err(error) => {
                abandon::<M, B>(db, key, &claims).await;
                return Err(error);
            }
        }
    }
    Ok(claims)
}

/// Claims the values of many new rows (`(key, values in column order)`): per column, one
/// [`Directory::claim_many`] (one transaction natively, one request per directory partition on
/// Workers); a value whose entry is not this write's own goes through [`claim_one`]. On a
/// failure nothing claimed stays behind but what the rows' keys hold.
pub(super) async fn claim_batch<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[(Owner, Vec<Value>)],
) -> Result<Vec<Vec<Claim>>> {
    check_store::<M, B>(db)?;
    let mut claimed: Vec<Vec<Claim>> = rows.iter().map(|_| Vec::new()).collect();
    let result = claim_batch_into::<M, B>(db, rows, &mut claimed).await;
    if let Err(error) = result {
        for ((key, _), claims) in rows.iter().zip(&claimed) {
            abandon::<M, B>(db, key, claims).await;
        }
        return Err(error);
    }
    Ok(claimed)
}

async fn claim_batch_into<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[(Owner, Vec<Value>)],
    claimed: &mut [Vec<Claim>],
) -> Result<()> {
    for &column in M::UNIQUE {
        let scope = scope(M::TABLE, column_name::<M>(column));
        let mut wanted = Vec::with_capacity(rows.len());
        for (key, values) in rows {
            let value = lookup_key::<M>(column, values[column].clone())?;
            wanted.push((value, Entry::pending(key, now_ms())));
        }
        let requests: Vec<(Key, String)> = wanted
            .iter()
            .map(|(value, entry)| (value.clone(), entry.encode()))
            .collect();
        let winners = db.directory().claim_many(&scope, &requests).await?;
        // Every entry this write won is recorded before any other claim can fail.
        let mut contested = Vec::new();
        for (index, ((value, entry), winner)) in wanted.into_iter().zip(winners).enumerate() {
            if winner == entry.encode() {
                claimed[index].push(Claim {
                    column,
                    value,
                    held: winner,
                    entry,
                });
            } else {
                contested.push((index, value));
            }
        }
        for (index, value) in contested {
            let claim = claim_one::<M, B>(db, &rows[index].0, column, value).await?;
            claimed[index].push(claim);
        }
    }
    Ok(())
}

/// Confirms one claim (step 3): `Ok(false)` when another key holds the value now and the row
/// of `key` holds it too.
async fn confirm_one<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    claim: &Claim,
) -> Result<bool> {
    let scope = scope(M::TABLE, column_name::<M>(claim.column));
    let live = claim.entry.live().encode();
    let directory = db.directory();
    let after = directory
        .replace(&scope, &claim.value, &claim.held, &live)
        .await?;
    let confirmed = match after {
        Some(text) if text == live => true,
        // A later write of this key took the entry over: finishing it is that write's part.
        Some(text) if Entry::parse(&text)?.owner == *key => true,
        Some(_) => false,
        // Released by a later write of this key that changed or deleted the value; if the row
        // holds the value again, it needs its entry back.
        None if !holds::<M, B>(db, key, claim.column, &claim.value).await? => true,
        None => {
            let winner = directory.claim(&scope, &claim.value, &live).await?;
            winner == live || Entry::parse(&winner)?.owner == *key
        }
    };
    if confirmed {
        db.directory_cache()
            .remember_owner(&scope, &claim.value, key);
    }
    Ok(confirmed)
}

/// Confirms every claim of a written row; `Err(column)`: another key took the value of `column`
/// over meanwhile (a write stalled past the lease), and the row holds it too.
pub(super) async fn confirm<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    claims: &[Claim],
) -> Result<std::result::Result<(), usize>> {
    for claim in claims {
        if !confirm_one::<M, B>(db, key, claim).await? {
            return Ok(Err(claim.column));
        }
    }
    Ok(Ok(()))
}

/// [`confirm`] of many written rows (`(key, claims)`), column after column: each column's
/// claims in one [`Directory::replace_many`] (one transaction natively, one request per
/// directory partition on Workers); a claim that batch does not turn live outright goes through
/// [`confirm_one`], which decides it. Records each row's outcome in `outcome` (one per row,
/// `Ok(())` to start with) as it is known, so that an error midway still reports the rows
/// already found lost.
pub(super) async fn confirm_batch<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    rows: &[(Owner, Vec<Claim>)],
    outcome: &mut [std::result::Result<(), usize>],
) -> Result<()> {
    for &column in M::UNIQUE {
        let scope = scope(M::TABLE, column_name::<M>(column));
        let mut pending: Vec<(usize, &Claim)> = Vec::new();
        for (index, (_, claims)) in rows.iter().enumerate() {
            if outcome[index].is_err() {
                continue;
            }
            pending.extend(
                claims
                    .iter()
                    .filter(|c| c.column == column)
                    .map(|c| (index, c)),
            );
        }
        if pending.is_empty() {
            continue;
        }
        let requests: Vec<(Key, String, String)> = pending
            .iter()
            .map(|(_, c)| (c.value.clone(), c.held.clone(), c.entry.live().encode()))
            .collect();
        let after = db.directory().replace_many(&scope, &requests).await?;
        for (((index, claim), (_, _, live)), after) in pending.iter().zip(&requests).zip(after) {
            let key = &rows[*index].0;
            if after.as_deref() == Some(live.as_str()) {
                db.directory_cache()
                    .remember_owner(&scope, &claim.value, key);
            } else if !confirm_one::<M, B>(db, key, claim).await? {
                outcome[*index] = Err(column);
            }
        }
    }
    Ok(())
}

/// After a write failed: a claim whose value the row of `key` holds (a write of the same key
/// put it there) is confirmed; the others are removed, so they do not hold the values off
/// from other keys until the lease runs out. Best effort: a failure here leaves pending entries,
/// which the lease takes care of, and is logged, not returned.
pub(super) async fn abandon<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    claims: &[Claim],
) {
    for claim in claims {
        let result = async {
            if holds::<M, B>(db, key, claim.column, &claim.value).await? {
                confirm_one::<M, B>(db, key, claim).await.map(drop)
            } else {
                let scope = scope(M::TABLE, column_name::<M>(claim.column));
                db.directory()
                    .remove_if(&scope, &claim.value, &claim.held)
                    .await
            }
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(table = M::TABLE, %error, "could not remove a unique claim of a failed write; it expires with its lease");
        }
    }
}

/// The entries naming `key` of the values `old` holds and `new` does not: read before the row is
/// written, to be released after it.
pub(super) async fn held<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Owner,
    old: &[Value],
    new: Option<&[Value]>,
) -> Result<Vec<Held>> {
    let mut held = Vec::new();
    for &column in M::UNIQUE {
        if new.is_some_and(|new| new.get(column) == Some(&old[column])) {
            continue;
        }
        let value = lookup_key::<M>(column, old[column].clone())?;
        let scope = scope(M::TABLE, column_name::<M>(column));
        if let Some(text) = db.directory().lookup(&scope, &value).await? {
            if Entry::parse(&text)?.owner == *key {
                held.push(Held {
                    column,
                    value,
                    text,
                });
            }
        }
    }
    Ok(held)
}

/// Whether every entry read by [`held`] is still the same text.
pub(super) async fn still_held<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    held: &[Held],
) -> Result<bool> {
    for h in held {
        let scope = scope(M::TABLE, column_name::<M>(h.column));
        if db.directory().lookup(&scope, &h.value).await?.as_deref() != Some(h.text.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the entries read by [`held`], each only if it is still that very text: a write of
/// the same key that claimed the value again meanwhile keeps its own.
pub(super) async fn release<M: Model, B: Backend>(db: &CollegeDb<B>, held: &[Held]) -> Result<()> {
    for h in held {
        let scope = scope(M::TABLE, column_name::<M>(h.column));
        db.directory_cache().forget_owner(&scope, &h.value);
        db.directory().remove_if(&scope, &h.value, &h.text).await?;
    }
    Ok(())
}
