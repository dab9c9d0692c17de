//! [`CollegeDb::reassign`]: one key of one table moves to a named shard, and its directory entry
//! records where.
//!
//! # How it stays correct while other handles keep writing
//!
//! The key's row moves from the shard `S` that holds it to the target `X`. Handles may reach `S`
//! by the map (the key's slot, on its hash shard `H`) or by a directory entry (their cache may
//! keep naming `S` long after the move). Two marks stand in for a per-key fence:
//!
//! * **Tombstones** (`_collegedb_moved`, see [`crate::fence`]) on `S`, and on `H` when the key
//!   leaves its hash shard: every fenced insert and upsert of the key there changes nothing,
//!   and the writer reads the directory store and follows it. Updates, deletes and reads of a
//!   key no longer on a shard miss there, and a miss reached through a cached entry reads the
//!   store once more ([`crate::crud`]); through the map it finds the off-hash marker and asks
//!   the directory. So a stale route can neither write a second copy nor lose a write.
//! * **A short freeze** of `S` (the key's slot and [`fence::LIVE`] removed from its fence) while
//!   the row is copied and the entry repointed, so that no update lands on `S` after the copy.
//!   Writers of that slot, and directory-routed statements on `S`, wait a few milliseconds (a
//!   few D1 round trips on Cloudflare), as for a slot switch-over.
//!
//! The steps, each idempotent and journaled like a transfer's:
//!
//! 1. **Prepare**: the off-hash marker on `H` (unless `X` is `H`), then tombstones on `S` and
//!    `H` (never on `X`); the table's schema and the fences on `X`.
//! 2. **Freeze**: revoke on `S` what it admitted of the key's slot and [`fence::LIVE`].
//! 3. **Copy** the row from `S` to `X` (`INSERT OR REPLACE`); a row deleted meanwhile is not
//!    copied, and its key keeps its new entry as a deleted key keeps its entry.
//! 4. **Switch**: point the entry at `X`; remove a tombstone `X` kept from an earlier move.
//! 5. **Delete** the row from `S`, then give `S` back what the freeze revoked.
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
            // Marker and tombstones before the entry (see `crate::marker`, `crate::fence`).
            if to != hash {
                db.mark_off_hash(&table, hash).await?;
                fence::bury(db.shard(hash), &table, one).await?;
            }
            fence::bury(db.shard(from), &table, one).await?;
            let key_column = key_column(db, from, &table).await?;
            t.tables = vec![super::TableCursor {
                marked: true,
                table: table.clone(),
                key: key_column,
                after: None,
                done: false,
            }];
            t.phase = Phase::Freeze;
        }
        Phase::Freeze => {
            let mut frozen = Vec::new();
            for fence_value in [i64::from(slot_of(&key)), fence::LIVE] {
                if fence::admits(db, from, fence_value).await? {
                    frozen.push(fence_value);
                }
            }
            fence::revoke(db.shard(from), &frozen).await?;
            t.frozen = frozen;
            t.phase = Phase::Copy;
        }
        Phase::Copy => {
            let key_column = &t.tables[0].key;
            let rows = super::capture::rows_by_key(db.shard(from), &table, key_column, one).await?;
            super::capture::upsert_rows(db.shard(to), &table, &rows).await?;
            t.copied = rows.len() as u64;
            t.phase = Phase::Switch;
        }
        Phase::Switch => {
            db.directory().assign(&table, &key, &t.to).await?;
            fence::unbury(db.shard(to), &table, &value).await?;
            db.directory_cache().invalidate(&table, &key);
            t.phase = Phase::Delete;
        }
        Phase::Delete => {
            let key_column = &t.tables[0].key;
            t.deleted =
                super::capture::delete_keys(db.shard(from), &table, key_column, one).await?;
            fence::grant(db.shard(from), &t.frozen).await?;
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
