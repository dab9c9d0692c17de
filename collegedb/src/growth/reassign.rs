//! [`CollegeDb::reassign`]: one key of one table moves to a named shard, and its directory entry
//! records where.
//!
//! # How it stays correct while other handles keep writing
//!
//! The key's row moves from the shard `S` that holds it to the target `X`. Handles may reach `S`
//! by the map (the key's slot, on its hash shard `H`) or by a directory entry (their cache may
//! keep naming `S` long after the move). Two marks stand in for a per-key fence:
//!
//! * **Tombstones** (`_collegedb_moved`, see [`crate::fence`]): a key with a tombstone on a shard
//!   is absent there for every fenced statement but the hash-first read (inserts and upserts
//!   change nothing, updates, deletes and directory-routed reads find no row), and a writer
//!   refused that way reads the directory store and follows it. The giver keeps one after the
//!   move, and so does the hash shard when the key leaves it: a stale route (a cache, an old
//!   map) can neither write a second copy there nor read an old one. The receiver has one while
//!   the move runs, which hides its copy until the switch.
//! * **A short freeze** (the key's slot and [`fence::LIVE`] removed from the giver's fence, and
//!   the slot from the receiver's when it owns it) while the row is copied and the entry
//!   repointed: no write lands on either copy meanwhile, so a copy resumed after a kill
//!   overwrites nothing. Writers of that slot, and directory-routed statements on the giver,
//!   wait a few milliseconds (a few D1 round trips on Cloudflare), as for a slot switch-over.
//!
//! A miss where a directory entry pointed is final only when the directory store names that
//! shard both before and after the statement ([`crate::crud`]); otherwise the lookup follows the
//! newer entry. Only a key moved away and back within one statement's latency could be missed by
//! a read then; it is never duplicated or lost. With the KV directory, whose reads may lag
//! writes by up to a minute elsewhere, a moved key can read as missing (and its writes wait)
//! in other locations until KV catches up: reassign on a deployment whose directory is the
//! Durable Object one.
//!
//! The steps, each idempotent and journaled like a transfer's:
//!
//! 1. **Prepare**: decide what the freeze revokes (journaled); the off-hash marker and a
//!    tombstone on the hash shard (when the key leaves it); a tombstone on the receiver; the
//!    table's schema and the fences there.
//! 2. **Freeze**: revoke what Prepare decided.
//! 3. **Copy** the row from the giver to the receiver (`INSERT OR REPLACE`).
//! 4. **Switch**: remove the receiver's tombstone, then point the entry at it.
//! 5. **Delete** the row from the giver, leave a tombstone there, give the freeze back.
//!
//! Costs: a handful of statements and two directory writes; nothing for other keys but the
//! freeze's pause on `S`. Afterwards a hash-first read of the key costs one more query and one
//! directory lookup (the marker sends a miss on `H` to the directory), as an adopted key does.

use super::transfer::tables_of;
use super::{Job, Operation, Phase, Transfer};
use crate::backend::Backend;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::fence;
use crate::key::Key;
use crate::router::CollegeDb;
use crate::slots::slot_of;

/// The key, table and target of a reassignment, from its operation.
fn parts(job: &Job) -> Result<(&str, Key, &str)> {
    match &job.operation {
        Operation::Reassign { table, key, shard } => {
            // Validated again: the journal is data read back from the store.
            let key = Key::from_value(key.to_value())?;
            Ok((table.as_str(), key, shard.as_str()))
        }
        other => Err(Error::DirectoryInconsistent(format!(
            "the reassignment step was given the operation {other}"
        ))),
    }
}

/// The transfer of a reassignment: from the shard that holds the key now, to the target. Errors
/// when the target is not in the map or no shard holds the row. `None`: the key is already
/// where it is sent.
pub(super) async fn plan<B: Backend>(
    db: &CollegeDb<B>,
    table: &str,
    key: &Key,
    shard: &str,
) -> Result<Option<Transfer>> {
    let target = db.shard_by_name(shard)?;
    if let Some(colocation) = db.colocation(table).await? {
        return Err(Error::config(format!(
            "`{table}` is colocated with `{}`: its rows move with their `{}` key; reassign that key in `{}`",
            colocation.scope, colocation.route, colocation.scope
        )));
    }
    if !db.shard_map().contains(shard) {
        return Err(Error::config(format!(
            "shard `{shard}` is not in the shard map (standby or drained): reassign a key only to a serving shard; add it first with `add_shard`"
        )));
    }
    let holder = match db.directory_lookup_fresh(table, key).await? {
        Some(holder) => holder,
        None => db.hash_shard(key),
    };
    let key_column = key_column(db, holder, table).await?;
    let rows = super::capture::rows_by_key(
        db.shard(holder),
        table,
        &key_column,
        std::slice::from_ref(&key.to_value()),
    )
    .await?;
    if rows.is_empty() {
        return Err(Error::RowNotFound {
            table: table.to_owned(),
        });
    }
    if holder == target {
        return Ok(None);
    }
    let mut transfer = Transfer::new(crate::slots::SlotTransfer {
        from: db.shard_name(holder).to_owned(),
        to: shard.to_owned(),
        slots: Vec::new(),
    });
    transfer.estimate = 1;
    Ok(Some(transfer))
}

/// The primary-key column of `table` on shard `index`.
async fn key_column<B: Backend>(db: &CollegeDb<B>, index: usize, table: &str) -> Result<String> {
    let (tables, _) = tables_of(db, index).await?;
    tables
        .into_iter()
        .find(|cursor| cursor.table == table)
        .map(|cursor| cursor.key)
        .ok_or_else(|| {
            Error::config(format!(
                "table `{table}` on shard `{}` has no single-column primary key (or does not exist): reassign moves rows of a routed table",
                db.shard_name(index)
            ))
        })
}

/// Advances the reassignment by one step.
pub(super) async fn step<B: Backend>(db: &CollegeDb<B>, job: &mut Job) -> Result<()> {
    let (table, key, _) = parts(job)?;
    let table = table.to_owned();
    let t = &mut job.transfers[job.current];
    let (from, to) = (db.shard_by_name(&t.from)?, db.shard_by_name(&t.to)?);
    let hash = db.hash_shard(&key);
    let value = key.to_value();
    let one = std::slice::from_ref(&value);
    match t.phase {
        Phase::Prepare => {
            for index in [from, to, hash] {
                fence::ensure(db, index).await?;
            }
            super::capture::copy_schema(db.shard(from), db.shard(to)).await?;
            // What the freeze will revoke, decided once and journaled with the phase, so that
            // a freeze resumed after a kill gives back exactly what it took: on the giver, the
            // key's slot and LIVE as far as it admits them; on the receiver, the slot if it owns
            // it (hash-first routes reach the receiver when it is the hash shard).
            let slot = i64::from(slot_of(&key));
            let mut giver = Vec::new();
            for fence_value in [slot, fence::LIVE] {
                if fence::admits(db, from, fence_value).await? {
                    giver.push(fence_value);
                }
            }
            let receiver = if fence::admits(db, to, slot).await? {
                vec![slot]
            } else {
                Vec::new()
            };
            // Marker and tombstones before the entry (see `crate::marker`, `crate::fence`):
            // the hash shard refuses inserts of the key from now on, and the receiver hides the
            // copy from every route until the switch.
            if to != hash {
                db.mark_off_hash(&table, hash).await?;
                if hash != from {
                    fence::bury(db.shard(hash), &table, one).await?;
                }
            }
            fence::bury(db.shard(to), &table, one).await?;
            let key_column = key_column(db, from, &table).await?;
            crate::colocate::copy(db.shard(from), db.shard(to)).await?;
            // The key's row, and the rows of tables colocated with its table (see
            // `crate::colocate`), which move with it.
            let (all, _) = tables_of(db, from).await?;
            let mut tables = vec![super::TableCursor {
                marked: true,
                table: table.clone(),
                key: key_column,
                after: None,
                done: false,
                scope: None,
                within: Vec::new(),
                after_row: None,
            }];
            tables.extend(
                all.into_iter()
                    .filter(|cursor| cursor.scope.as_deref() == Some(table.as_str())),
            );
            t.tables = tables;
            t.frozen = giver;
            t.frozen_receiver = receiver;
            t.phase = Phase::Freeze;
        }
        Phase::Freeze => {
            fence::revoke(db.shard(from), &t.frozen).await?;
            fence::revoke(db.shard(to), &t.frozen_receiver).await?;
            t.phase = Phase::Copy;
        }
        Phase::Copy => {
            // Nothing can have written the receiver's copy since an earlier run of this step:
            // it is hidden and frozen, so copying again is harmless.
            let mut copied = 0;
            for cursor in &t.tables {
                let shard = db.shard(from);
                let rows =
                    super::capture::rows_by_key(shard, &cursor.table, &cursor.key, one).await?;
                // A colocated group is replaced as a whole: a resumed copy finds no stale row.
                if cursor.grouped() {
                    super::capture::delete_keys(db.shard(to), &cursor.table, &cursor.key, one)
                        .await?;
                }
                super::capture::upsert_rows(db.shard(to), &cursor.table, &rows).await?;
                copied += rows.len() as u64;
            }
            t.copied = copied;
            t.phase = Phase::Switch;
        }
        Phase::Switch => {
            // The copy shows itself first, then the entry points at it: never an entry naming
            // a shard where the key reads as absent (a lookup would call that a final miss).
            // Meanwhile only a stale entry naming the receiver reaches the copy, and it is
            // current (the giver is frozen) and becomes the row.
            fence::unbury(db.shard(to), &table, &value).await?;
            db.directory().assign(&table, &key, &t.to).await?;
            db.directory_cache().invalidate(&table, &key);
            t.phase = Phase::Delete;
        }
        Phase::Delete => {
            // The giver keeps a tombstone: a stale route there finds no row and inserts
            // nothing. Then the freeze is given back.
            let mut deleted = 0;
            for cursor in &t.tables {
                let shard = db.shard(from);
                deleted +=
                    super::capture::delete_keys(shard, &cursor.table, &cursor.key, one).await?;
            }
            t.deleted = deleted;
            fence::bury(db.shard(from), &table, one).await?;
            fence::grant(db.shard(from), &t.frozen).await?;
            fence::grant(db.shard(to), &t.frozen_receiver).await?;
            t.phase = Phase::Done;
        }
        Phase::CatchUp | Phase::FinalCatchUp | Phase::Done => t.phase = Phase::Done,
    }
    Ok(())
}

impl<B: Backend> CollegeDb<B> {
    /// Moves the row of `key` in `table` to `shard`, and records it there in the directory:
    /// from then on every handle finds it on `shard`, whatever the table's placement strategy.
    /// Other keys stay where they are. Resumable and journaled like [`CollegeDb::add_shard`]
    /// (one growth operation at a time); see [`crate::growth`]'s `reassign` docs for how it stays
    /// correct while other handles read and write the key.
    ///
    /// Fails with [`Error::RowNotFound`] if no shard holds the row, and with
    /// [`Error::ConfigInvalid`] if `shard` is not a serving shard of the map. A key already on
    /// `shard` is left as it is.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config, Sharded};
    /// #[derive(Sharded, Debug, PartialEq)]
    /// #[sharded(table = "users")]
    /// struct User { #[sharded(key)] id: String, name: String }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c"]), dir.path())?;
    /// User::create_table(&db).await?;
    /// User::insert(&db, &User { id: "alice".into(), name: "Alice".into() }).await?;
    /// let to = if User::locate(&db, "alice").await?.as_deref() == Some("a") { "b" } else { "a" };
    /// db.reassign("users", "alice", to).await?;
    /// assert_eq!(User::locate(&db, "alice").await?.as_deref(), Some(to));
    /// assert_eq!(User::find(&db, "alice").await?.unwrap().name, "Alice");
    /// assert!(db.verify_table("users", "id").await?.is_clean());
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub async fn reassign<K: crate::key::AnyKey>(
        &self,
        table: &str,
        key: K,
        shard: &str,
    ) -> Result<Job> {
        self.reassign_with(table, key, shard, &super::GrowthOptions::default())
            .await
    }

    /// [`CollegeDb::reassign`] with options (its progress hook is called after every step).
    pub async fn reassign_with<K: crate::key::AnyKey>(
        &self,
        table: &str,
        key: K,
        shard: &str,
        options: &super::GrowthOptions,
    ) -> Result<Job> {
        let operation = Operation::Reassign {
            table: table.to_owned(),
            key: key.into_any_key()?,
            shard: shard.to_owned(),
        };
        self.start_or_resume(operation, options).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reassignment_journal_round_trips() {
        let op = super::Operation::Reassign {
            table: "users".into(),
            key: crate::key::Key::Int(7),
            shard: "b".into(),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(serde_json::from_str::<super::Operation>(&json).unwrap(), op);
        assert_eq!(op.to_string(), "reassign users/7 -> b");
    }
}
