//! One transfer of slots from one shard to another, advanced one journaled step at a time (see
//! the [module docs](super) for the protocol and why it is correct).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::capture::{self, Change, Pages};
use super::{GrowthOptions, Job, Phase, StoredValue, TableCursor, Transfer};
use crate::backend::{Backend, Coordinator, Row, ShardConn};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::fence;
use crate::key::Key;
use crate::router::CollegeDb;
use crate::slots::slot_of;
use crate::value::Value;

/// Advances the job's current transfer by one step.
pub(super) async fn step<B: Backend>(
    db: &CollegeDb<B>,
    job: &mut Job,
    options: &GrowthOptions,
) -> Result<()> {
    let page = options.page_rows.max(1);
    let t = &mut job.transfers[job.current];
    let (from, to) = (db.shard_by_name(&t.from)?, db.shard_by_name(&t.to)?);
    let slots: HashSet<u16> = t.slots.iter().copied().collect();
    match t.phase {
        Phase::Prepare => {
            fence::ensure(db, from).await?;
            fence::ensure(db, to).await?;
            fence::grant(db.shard(to), &[fence::LIVE]).await?;
            capture::copy_schema(db.shard(from), db.shard(to)).await?;
            let (tables, skipped) = tables_of(db, from).await?;
            for table in skipped {
                if !job.skipped_tables.contains(&table) {
                    job.skipped_tables.push(table);
                }
            }
            crate::marker::copy(db.shard(from), db.shard(to)).await?;
            crate::colocate::copy(db.shard(from), db.shard(to)).await?;
            capture::install(db.shard(from), &key_columns(&tables)).await?;
            // Rows no slot routes stay; count them once per shard (a filtered copy skips them).
            if job.first_transfer_from_its_shard() {
                for cursor in &tables {
                    let shard = db.shard(from);
                    let unroutable = capture::count_unroutable(shard, &cursor.table, &cursor.key);
                    job.unroutable += unroutable.await?.unwrap_or(0);
                }
            }
            let t = &mut job.transfers[job.current];
            t.tables = tables;
            t.phase = Phase::Copy;
        }
        Phase::Copy => {
            let Some(cursor) = t.tables.iter_mut().find(|c| !c.done) else {
                t.phase = Phase::CatchUp;
                return Ok(());
            };
            let shard = db.shard(from);
            let grouping = cursor.grouping();
            let rows =
                Pages::of_slots(shard, &cursor.table, &cursor.key, false, &t.slots, grouping)
                    .read(shard, cursor.position().as_deref(), page)
                    .await?;
            cursor.done = rows.len() < page;
            let (moving, unroutable) = select_moving(db, cursor, rows, &slots).await?;
            capture::upsert_rows(db.shard(to), &cursor.table, &moving).await?;
            t.copied += moving.len() as u64;
            if job.first_transfer_from_its_shard() {
                job.unroutable += unroutable;
            }
        }
        Phase::CatchUp | Phase::FinalCatchUp => {
            let changes = capture::read(db.shard(from), t.log_after, page).await?;
            let read = changes.len();
            let applied = apply(db, t, from, to, &slots, changes).await?;
            t.caught_up += applied;
            // After the freeze, a short read is the log's end: every write of the moving slots
            // committed before the freeze is applied, and none can follow it.
            t.after_catch_up_pass(read, page);
        }
        Phase::Freeze => {
            let fences: Vec<i64> = t.slots.iter().map(|&s| i64::from(s)).collect();
            fence::revoke(db.shard(from), &fences).await?;
            t.log_end = Some(capture::last_seq(db.shard(from)).await?);
            t.phase = Phase::FinalCatchUp;
        }
        Phase::Switch => {
            crate::marker::copy(db.shard(from), db.shard(to)).await?;
            copy_tombstones(db, from, to, &t.slots).await?;
            let fences: Vec<i64> = t.slots.iter().map(|&s| i64::from(s)).collect();
            fence::grant(db.shard(to), &fences).await?;
            hand_over(db, &t.slots, &t.to).await?;
            capture::remove(db.shard(from), &key_columns(&t.tables)).await?;
            t.tables.iter_mut().for_each(TableCursor::restart);
            t.phase = Phase::Delete;
        }
        Phase::Delete => {
            let Some(cursor) = t.tables.iter_mut().find(|c| !c.done) else {
                t.phase = Phase::Done;
                return Ok(());
            };
            let shard = db.shard(from);
            if shard.computes_slots() && !cursor.marked && cursor.pages_rows() {
                // Natively, a colocated table: one statement per page of rows.
                let table = (
                    cursor.table.as_str(),
                    cursor.key.as_str(),
                    &cursor.within[..],
                );
                let after = cursor.position();
                let (deleted, last) =
                    capture::delete_rows_of_slots(shard, table, &t.slots, after.as_deref(), page)
                        .await?;
                cursor.done = deleted < page;
                if let Some(last) = last {
                    cursor.after_row = Some(last.iter().map(StoredValue::from).collect());
                }
                t.deleted += deleted as u64;
                return Ok(());
            }
            if shard.computes_slots() && !cursor.marked {
                // Natively: one statement per page, no key leaves SQLite.
                let table = (cursor.table.as_str(), cursor.key.as_str());
                let after = cursor.after();
                let (deleted, last) =
                    capture::delete_page_of_slots(shard, table, &t.slots, after.as_ref(), page)
                        .await?;
                cursor.done = deleted < page;
                if let Some(last) = last {
                    cursor.after = Some(StoredValue::from(&last));
                }
                t.deleted += deleted as u64;
                return Ok(());
            }
            let grouping = cursor.grouping();
            let rows = Pages::of_slots(shard, &cursor.table, &cursor.key, true, &t.slots, grouping)
                .read(shard, cursor.position().as_deref(), page)
                .await?;
            cursor.done = rows.len() < page;
            let (moved, _) = select_moving(db, cursor, rows, &slots).await?;
            t.deleted += delete_page(db.shard(from), cursor, moved).await?;
        }
        Phase::Done => {}
    }
    Ok(())
}

/// The tables of shard `index` that rows can be routed by, as fresh cursors: colocated tables
/// (by their route column, see [`crate::colocate`]) and tables with a single-column primary key;
/// and the names of the others (skipped).
pub(super) async fn tables_of<B: Backend>(
    db: &CollegeDb<B>,
    index: usize,
) -> Result<(Vec<TableCursor>, Vec<String>)> {
    let (mut tables, mut skipped) = (Vec::new(), Vec::new());
    let colocated = crate::colocate::all(db).await?;
    for name in crate::raw::user_tables(db.shard(index)).await? {
        let (key, scope) = match colocated.get(&name) {
            Some(c) => (Some(c.route.clone()), Some(c.scope.clone())),
            None => (
                crate::verify::key_column(db.shard(index), &name).await?,
                None,
            ),
        };
        match key {
            Some(key) => {
                let within = match scope {
                    Some(_) => within_groups(db.shard(index), &name, &key).await?,
                    None => Vec::new(),
                };
                tables.push(TableCursor {
                    marked: crate::marker::any(db, scope.as_deref().unwrap_or(&name)).await?,
                    table: name,
                    key,
                    after: None,
                    done: false,
                    scope,
                    within,
                    after_row: None,
                })
            }
            None => skipped.push(name),
        }
    }
    Ok((tables, skipped))
}

/// The columns that order the rows of one group of colocated `table` (routed by `route`): the
/// rest of its primary key, when that key starts with `route` (its index serves the order) and
/// the rest is NOT NULL (a NULL would stop a row-value comparison short) and declared INTEGER or
/// TEXT (a journal keeps such values as they are, a REAL's may not be). Empty otherwise: moves
/// then take whole groups.
pub(super) async fn within_groups<S: ShardConn>(
    shard: &S,
    table: &str,
    route: &str,
) -> Result<Vec<String>> {
    let info = shard
        .query(
            &format!("PRAGMA table_info({})", crate::raw::quote_ident(table)),
            &[],
        )
        .await?;
    let mut key: Vec<(i64, String, bool)> = Vec::new();
    for row in &info {
        if let Some(Value::Integer(pk)) = row.value("pk") {
            if *pk > 0 {
                let not_null = matches!(row.value("notnull"), Some(Value::Integer(n)) if *n != 0);
                let declared = match row.value("type") {
                    Some(Value::Text(t)) => t.to_ascii_uppercase(),
                    _ => String::new(),
                };
                let exact = ["INT", "TEXT", "CHAR", "CLOB"]
                    .iter()
                    .any(|t| declared.contains(t));
                key.push((*pk, row.get::<String>("name")?, not_null && exact));
            }
        }
    }
    key.sort();
    match key.split_first() {
        Some(((_, first, _), rest))
            if first == route && !rest.is_empty() && rest.iter().all(|(_, _, ok)| *ok) =>
        {
            Ok(rest.iter().map(|(_, column, _)| column.clone()).collect())
        }
        _ => Ok(Vec::new()),
    }
}

/// Deletes the rows of a keys-only page (see [`Pages`]) from `shard`: by key, or by primary
/// key when the cursor pages a colocated table by rows.
pub(super) async fn delete_page<S: ShardConn>(
    shard: &S,
    cursor: &TableCursor,
    rows: Vec<Row>,
) -> Result<u64> {
    if cursor.pages_rows() {
        let table = (
            cursor.table.as_str(),
            cursor.key.as_str(),
            &cursor.within[..],
        );
        let keys: Vec<Vec<Value>> = rows.into_iter().map(Row::into_values).collect();
        return capture::delete_rows(shard, table, &keys).await;
    }
    let keys: Vec<Value> = rows
        .into_iter()
        .filter_map(|row| row.into_values().into_iter().next())
        .collect();
    capture::delete_keys(shard, &cursor.table, &cursor.key, &keys).await
}

pub(super) fn key_columns(tables: &[TableCursor]) -> Vec<(String, String)> {
    tables
        .iter()
        .map(|c| (c.table.clone(), c.key.clone()))
        .collect()
}

/// Of a page of `cursor`'s table (whole rows or keys only, key first for keys only), the rows
/// whose key is in `slots` and not placed by a directory entry; advances the cursor past the
/// page. Also returns how many rows had a key no slot can route.
async fn select_moving<B: Backend>(
    db: &CollegeDb<B>,
    cursor: &mut TableCursor,
    rows: Vec<Row>,
    slots: &HashSet<u16>,
) -> Result<(Vec<Row>, u64)> {
    let mut moving = Vec::with_capacity(rows.len() / 2);
    let mut unroutable = 0;
    // Rows of one group come together: one directory read decides them all.
    let mut last: Option<(Key, bool)> = None;
    for row in rows {
        let Some(value) = cursor.advance(&row) else {
            continue;
        };
        let Ok(key) = Key::from_value(value) else {
            unroutable += 1;
            continue;
        };
        let moves = match &last {
            Some((seen, moves)) if *seen == key => *moves,
            _ => {
                let moves = slots.contains(&slot_of(&key))
                    && !(cursor.marked
                        && db.directory().lookup(cursor.scope(), &key).await?.is_some());
                last = Some((key, moves));
                moves
            }
        };
        if moves {
            moving.push(row);
        }
    }
    Ok((moving, unroutable))
}

/// Applies logged changes of the moving slots: each changed key is re-read on `from` and written
/// to `to`, or deleted from `to` when `from` no longer has it. Returns the keys applied.
async fn apply<B: Backend>(
    db: &CollegeDb<B>,
    t: &mut Transfer,
    from: usize,
    to: usize,
    slots: &HashSet<u16>,
    changes: Vec<Change>,
) -> Result<u64> {
    let mut keys: BTreeMap<String, BTreeSet<Key>> = BTreeMap::new();
    for change in changes {
        t.log_after = t.log_after.max(change.seq);
        let Some(cursor) = t.tables.iter().find(|c| c.table == change.table) else {
            continue;
        };
        let Ok(key) = Key::from_value(change.key) else {
            continue;
        };
        if !slots.contains(&slot_of(&key)) {
            continue;
        }
        if cursor.marked && db.directory().lookup(cursor.scope(), &key).await?.is_some() {
            continue;
        }
        keys.entry(change.table).or_default().insert(key);
    }
    let mut applied = 0;
    for (table, keys) in keys {
        let cursor = t.tables.iter().find(|c| c.table == table).expect("listed");
        let values: Vec<Value> = keys.iter().map(Key::to_value).collect();
        let present = capture::rows_by_key(db.shard(from), &table, &cursor.key, &values).await?;
        let found: HashSet<Key> = present
            .iter()
            .filter_map(|row| row.value(&cursor.key).cloned())
            .filter_map(|value| Key::from_value(value).ok())
            .collect();
        let gone: Vec<Value> = keys
            .iter()
            .filter(|key| !found.contains(key))
            .map(Key::to_value)
            .collect();
        if cursor.grouped() {
            // A group's rows on `to` are replaced as a whole: some of them may be gone.
            capture::delete_keys(db.shard(to), &table, &cursor.key, &values).await?;
        } else {
            capture::delete_keys(db.shard(to), &table, &cursor.key, &gone).await?;
        }
        capture::upsert_rows(db.shard(to), &table, &present).await?;
        applied += keys.len() as u64;
    }
    Ok(applied)
}

/// Copies the tombstones of keys in `slots` (keys reassigned away from their hash shard, see
/// [`crate::fence`]) to the shard receiving the slots, before it admits them; except for keys
/// whose directory entry names that very shard (they live there: a tombstone would refuse them).
async fn copy_tombstones<B: Backend>(
    db: &CollegeDb<B>,
    from: usize,
    to: usize,
    slots: &[u16],
) -> Result<()> {
    let moving: HashSet<u16> = slots.iter().copied().collect();
    let receiver = db.shard_name(to);
    let mut by_table: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (table, key) in fence::tombstones(db.shard(from)).await? {
        let Ok(parsed) = Key::from_value(key.clone()) else {
            continue;
        };
        if moving.contains(&slot_of(&parsed))
            && db.directory().lookup(&table, &parsed).await?.as_deref() != Some(receiver)
        {
            by_table.entry(table).or_default().push(key);
        }
    }
    for (table, keys) in by_table {
        fence::bury(db.shard(to), &table, &keys).await?;
    }
    Ok(())
}

/// Stores the map with `slots` owned by `to`, unless it already is (a resumed switch), and
/// routes this handle by it.
async fn hand_over<B: Backend>(db: &CollegeDb<B>, slots: &[u16], to: &str) -> Result<()> {
    for _ in 0..8 {
        db.refresh_map().await?;
        let map = db.shard_map();
        if slots.iter().all(|&slot| map.owner(slot) == to) {
            return Ok(());
        }
        let next = map.with_owner(slots, to);
        if db.coordinator().store_map(&next).await? {
            db.adopt_map(next)?;
            return Ok(());
        }
    }
    Err(Error::DirectoryInconsistent(
        "the shard map kept changing while a move stored it: is another process running a growth operation?".into(),
    ))
}
