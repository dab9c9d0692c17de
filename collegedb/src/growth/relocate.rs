//! The last transfer of a drain: the drained shard's directory-placed rows move to other serving
//! shards, and their entries follow. The steps are a slot transfer's (see the
//! [module docs](super)), with the fence value [`fence::LIVE`] frozen instead of slots, and the
//! switch repointing directory entries instead of storing a map.
//!
//! A row's new shard is given by [`Targets`]: a serving shard other than its key's hash shard whenever
//! there is one, so that hash-first reads, which go to the hash shard before the directory, never
//! meet the copy before the switch. Each copy is hidden by a tombstone on its new shard (see
//! [`crate::fence`]) from the copy until its entry points there.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::capture::{self, Pages};
use super::transfer::{key_columns, tables_of};
use super::{GrowthOptions, Job, Phase, StoredValue};
use crate::backend::{Backend, Row};
use crate::directory::Directory;
use crate::error::Result;
use crate::fence;
use crate::key::Key;
use crate::router::CollegeDb;
use crate::value::Value;

/// Advances the relocation by one step.
pub(super) async fn step<B: Backend>(
    db: &CollegeDb<B>,
    job: &mut Job,
    options: &GrowthOptions,
) -> Result<()> {
    let page = options.page_rows.max(1);
    let targets = Targets::new(db);
    let t = &mut job.transfers[job.current];
    let from = db.shard_by_name(&t.from)?;
    match t.phase {
        Phase::Prepare => {
            fence::ensure(db, from).await?;
            for index in db.serving_shards() {
                fence::ensure(db, index).await?;
                capture::copy_schema(db.shard(from), db.shard(index)).await?;
                crate::colocate::copy(db.shard(from), db.shard(index)).await?;
            }
            let (mut tables, _) = tables_of(db, from).await?;
            // Only a marked table can have directory entries (the marker precedes every claim).
            tables.retain(|cursor| cursor.marked);
            let mut estimate = 0;
            for cursor in &tables {
                estimate += capture::count(db.shard(from), &cursor.table).await?;
            }
            t.estimate = estimate;
            capture::install(db.shard(from), &key_columns(&tables)).await?;
            t.tables = tables;
            t.phase = Phase::Copy;
        }
        Phase::Copy => {
            let Some(cursor) = t.tables.iter_mut().find(|c| !c.done) else {
                t.phase = Phase::CatchUp;
                return Ok(());
            };
            let rows = Pages::new(&cursor.table, &cursor.key, false, cursor.grouping())
                .read(db.shard(from), cursor.position().as_deref(), page)
                .await?;
            cursor.done = rows.len() < page;
            if let Some(last) = rows.last() {
                cursor.advance(last);
            }
            let mut by_target: BTreeMap<usize, Vec<Row>> = BTreeMap::new();
            // Rows of one group come together: one directory read decides them all.
            let mut last: Option<(Value, Option<Key>)> = None;
            for row in rows {
                let value = row.value(&cursor.key).cloned();
                let here = match (&last, value) {
                    (Some((seen, here)), Some(value)) if *seen == value => here.clone(),
                    (_, value) => {
                        let here =
                            placed_here(db, cursor.scope(), &cursor.key, &row, &t.from).await?;
                        last = value.map(|value| (value, here.clone()));
                        here
                    }
                };
                if let Some(key) = here {
                    by_target.entry(targets.of(db, &key)).or_default().push(row);
                }
            }
            for (target, rows) in by_target {
                let mut keys: Vec<Value> = rows
                    .iter()
                    .filter_map(|row| row.value(&cursor.key).cloned())
                    .collect();
                keys.dedup();
                // Hidden until the switch: tombstone first, then the copy.
                fence::bury(db.shard(target), cursor.scope(), &keys).await?;
                capture::upsert_rows(db.shard(target), &cursor.table, &rows).await?;
                t.copied += rows.len() as u64;
            }
        }
        Phase::CatchUp | Phase::FinalCatchUp => {
            let changes = capture::read(db.shard(from), t.log_after, page).await?;
            let read = changes.len();
            let mut keys: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
            for change in changes {
                t.log_after = t.log_after.max(change.seq);
                if let Ok(key) = Key::from_value(change.key) {
                    keys.entry(change.table).or_default().insert(key);
                }
            }
            for (table, keys) in keys {
                let Some(cursor) = t.tables.iter().find(|c| c.table == table) else {
                    continue;
                };
                let mut ours = Vec::new();
                for key in keys {
                    let entry = db.directory().lookup(cursor.scope(), &key).await?;
                    if entry.as_deref() == Some(&t.from) {
                        ours.push(key);
                    }
                }
                let values: Vec<Value> = ours.iter().map(Key::to_value).collect();
                let present =
                    capture::rows_by_key(db.shard(from), &table, &cursor.key, &values).await?;
                let found: HashSet<Key> = present
                    .iter()
                    .filter_map(|row| row.value(&cursor.key).cloned())
                    .filter_map(|value| Key::from_value(value).ok())
                    .collect();
                if cursor.grouped() {
                    // A group's rows on its target are replaced as a whole.
                    let mut groups: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
                    for key in &ours {
                        groups
                            .entry(targets.of(db, key))
                            .or_default()
                            .push(key.to_value());
                    }
                    for (target, keys) in groups {
                        capture::delete_keys(db.shard(target), &table, &cursor.key, &keys).await?;
                    }
                }
                let mut upserts: BTreeMap<usize, Vec<Row>> = BTreeMap::new();
                for row in present {
                    if let Some(Ok(key)) = row.value(&cursor.key).cloned().map(Key::from_value) {
                        upserts.entry(targets.of(db, &key)).or_default().push(row);
                    }
                }
                for (target, rows) in upserts {
                    capture::upsert_rows(db.shard(target), &table, &rows).await?;
                }
                let mut gone: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
                for key in ours.iter().filter(|key| !found.contains(key)) {
                    gone.entry(targets.of(db, key))
                        .or_default()
                        .push(key.to_value());
                }
                for (target, keys) in gone {
                    capture::delete_keys(db.shard(target), &table, &cursor.key, &keys).await?;
                }
                t.caught_up += ours.len() as u64;
            }
            t.after_catch_up_pass(read, page);
        }
        Phase::Freeze => {
            fence::revoke(db.shard(from), &[fence::LIVE]).await?;
            t.log_end = Some(capture::last_seq(db.shard(from)).await?);
            // The switch walks the directory with the same cursors.
            t.tables.iter_mut().for_each(super::TableCursor::restart);
            t.phase = Phase::FinalCatchUp;
        }
        Phase::Switch => {
            // Entries, not rows: a deleted key keeps its entry, which must not name a retired
            // shard either.
            // A colocated table's entries are its scope's, repointed with the scope's own pass.
            let Some(cursor) = t.tables.iter_mut().find(|c| !c.done && !c.grouped()) else {
                capture::remove(db.shard(from), &key_columns(&t.tables)).await?;
                t.tables.iter_mut().for_each(super::TableCursor::restart);
                db.directory_cache().clear();
                t.phase = Phase::Delete;
                return Ok(());
            };
            let after = match cursor.after() {
                Some(Value::Text(after)) => Some(after),
                _ => None,
            };
            let listed = db
                .directory()
                .list(&cursor.table, after.as_deref(), page)
                .await?;
            // The copies' tombstones first, then the entries: never an entry naming a shard
            // where its key reads as absent (a lookup would call that a final miss). The drained
            // shard is frozen, so a copy shown early is current. A page cut short by a kill is
            // listed again, and its entries repointed already lose their tombstones again.
            let mut arriving: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
            let mut repoint = Vec::new();
            for (key, shard) in &listed.entries {
                let target = targets.of(db, key);
                let name = db.shard_name(target).to_owned();
                if *shard == t.from {
                    repoint.push((key, name));
                } else if *shard != name {
                    continue;
                }
                arriving.entry(target).or_default().push(key.to_value());
            }
            for (target, keys) in arriving {
                fence::forget(db.shard(target), &cursor.table, &keys).await?;
            }
            for (key, name) in repoint {
                db.directory().assign(&cursor.table, key, &name).await?;
            }
            match listed.cursor {
                Some(next) => cursor.after = Some(StoredValue::Text(next)),
                None => cursor.done = true,
            }
        }
        Phase::Delete => {
            let Some(cursor) = t.tables.iter_mut().find(|c| !c.done) else {
                t.phase = Phase::Done;
                return Ok(());
            };
            let rows = Pages::new(&cursor.table, &cursor.key, true, cursor.grouping())
                .read(db.shard(from), cursor.position().as_deref(), page)
                .await?;
            cursor.done = rows.len() < page;
            let mut moved = Vec::new();
            // Rows of one group come together: one directory read decides them all.
            let mut last: Option<(Key, bool)> = None;
            for row in rows {
                let Some(value) = cursor.advance(&row) else {
                    continue;
                };
                let Ok(key) = Key::from_value(value) else {
                    continue;
                };
                let gone = match &last {
                    Some((seen, gone)) if *seen == key => *gone,
                    _ => {
                        let entry = db.directory().lookup(cursor.scope(), &key).await?;
                        let gone = entry.is_some_and(|shard| shard != t.from);
                        last = Some((key, gone));
                        gone
                    }
                };
                if gone {
                    moved.push(row);
                }
            }
            t.deleted += super::transfer::delete_page(db.shard(from), cursor, moved).await?;
        }
        Phase::Done => {}
    }
    Ok(())
}

/// Where relocated keys go: for each key, among the serving shards other than its hash shard,
/// one picked by the key's hash; its hash shard only when no other shard serves.
pub(super) struct Targets {
    serving: Vec<usize>,
}

impl Targets {
    pub(super) fn new<B: Backend>(db: &CollegeDb<B>) -> Self {
        Targets {
            serving: db.serving_shards(),
        }
    }

    pub(super) fn of<B: Backend>(&self, db: &CollegeDb<B>, key: &Key) -> usize {
        let hash = db.hash_shard(key);
        let others: Vec<usize> = self
            .serving
            .iter()
            .copied()
            .filter(|&shard| shard != hash)
            .collect();
        if others.is_empty() {
            return hash;
        }
        // The low bits: the slot (which chose the hash shard) comes from the high ones.
        others[(key.placement_hash() % others.len() as u64) as usize]
    }
}

/// The key of `row` if its directory entry names `shard`.
async fn placed_here<B: Backend>(
    db: &CollegeDb<B>,
    table: &str,
    key_column: &str,
    row: &Row,
    shard: &str,
) -> Result<Option<Key>> {
    let Some(Ok(key)) = row.value(key_column).cloned().map(Key::from_value) else {
        return Ok(None);
    };
    let entry = db.directory().lookup(table, &key).await?;
    Ok((entry.as_deref() == Some(shard)).then_some(key))
}
