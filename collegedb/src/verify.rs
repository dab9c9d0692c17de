//! `verify`: an fsck of placement. It walks every shard and the directory and reports every row
//! that the router would not find where it is, so that a deployment (and every test of moves and
//! growth) can check that no row is lost or duplicated.
//!
//! For one table it reports:
//!
//! * **misplaced** rows: on a shard other than their owner (the shard named by the key's
//!   directory entry, else its hash shard). Reads of such a key find nothing, or another copy;
//! * **duplicated** keys: rows of one key on two or more shards;
//! * **unmarked** keys: a directory entry names a shard other than the key's hash shard, and the
//!   hash shard lacks the table's off-hash marker (see [`crate::marker`]), so hash-first reads of
//!   the key stop at the hash shard and miss it;
//! * directory entries whose shard has no row: normal after a delete (a deleted key keeps its
//!   entry), so they are counted, not failures.
//!
//! Rows are read in key-ordered pages of [`PAGE`] keys; the keys seen (not the rows) and the
//! table's directory entries are held in memory while it runs.

use std::collections::{HashMap, HashSet};

use crate::backend::{Backend, ShardConn};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::raw::quote_ident;
use crate::router::CollegeDb;
use crate::value::Value;

/// Keys read per query.
pub const PAGE: usize = 1000;

/// What [`CollegeDb::verify_table`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The table.
    pub table: String,
    /// Rows whose key no slot can route (NULL, or neither INTEGER nor TEXT): left where they
    /// are by every move, and not counted in `rows`.
    pub unroutable: u64,
    /// Rows over every shard; for a colocated table (see [`crate::colocate`]), keys: each is
    /// a group of rows with one parent key.
    pub rows: u64,
    /// Directory entries of the table.
    pub entries: u64,
    /// `(key, shard holding the row, owner shard)` for rows not on their owner.
    pub misplaced: Vec<(Key, String, String)>,
    /// `(key, shards holding a row)` for keys on more than one shard.
    pub duplicated: Vec<(Key, Vec<String>)>,
    /// `(key, hash shard)` for keys whose entry names another shard while the hash shard lacks
    /// the off-hash marker.
    pub unmarked: Vec<(Key, String)>,
    /// `(key, shard)` for tombstones (see [`crate::fence`]) on the very shard that places the
    /// key: inserts of it there would be refused.
    pub blocked: Vec<(Key, String)>,
    /// Shards whose fence disagrees with the stored map while no growth operation runs: a
    /// serving shard that does not admit one of its slots, or "live"; a shard outside the map
    /// that admits some (see [`crate::fence`]). Statements there would wait, or be let through.
    pub fence: Vec<String>,
    /// Directory entries whose shard has no row of the key (left by deletes; not a failure).
    pub entries_without_rows: u64,
    /// Keys with a second copy left by a move in flight (see [`crate::growth`]): on the giving
    /// and the receiving shard of a transfer of their slot. Not a failure: the router reads and
    /// writes only the owner's copy, and the move deletes the other.
    pub in_flight: u64,
}

impl VerifyReport {
    /// Whether every row is where the router finds it, exactly once.
    pub fn is_clean(&self) -> bool {
        self.misplaced.is_empty()
            && self.duplicated.is_empty()
            && self.unmarked.is_empty()
            && self.blocked.is_empty()
            && self.fence.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} rows, {} directory entries ({} without a row)",
            self.table, self.rows, self.entries, self.entries_without_rows
        )?;
        if self.in_flight > 0 {
            writeln!(
                f,
                "  {} keys have a second copy left by the move in flight",
                self.in_flight
            )?;
        }
        if self.unroutable > 0 {
            writeln!(
                f,
                "  {} rows have a key no slot routes (NULL, or neither INTEGER nor TEXT): they stay where they are",
                self.unroutable
            )?;
        }
        for (key, on, owner) in &self.misplaced {
            writeln!(f, "  misplaced: {key} is on {on}, its owner is {owner}")?;
        }
        for (key, shards) in &self.duplicated {
            writeln!(f, "  duplicated: {key} is on {}", shards.join(", "))?;
        }
        for (key, shard) in &self.unmarked {
            writeln!(
                f,
                "  unmarked: {key} is placed off its hash shard {shard}, which lacks the marker"
            )?;
        }
        for problem in &self.fence {
            writeln!(f, "  fence: {problem}")?;
        }
        for (key, shard) in &self.blocked {
            writeln!(
                f,
                "  blocked: {key} has a tombstone on {shard}, where it is placed: inserts of it there are refused"
            )?;
        }
        write!(
            f,
            "  {}",
            if self.is_clean() {
                "clean"
            } else {
                "NOT CLEAN"
            }
        )
    }
}

/// A transfer in flight, as `verify` needs it: which copies are its leftovers.
pub(crate) struct InFlight {
    from: usize,
    to: Option<usize>,
    slots: std::collections::HashSet<u16>,
    /// The key of a reassignment, which moves nothing else.
    key: Option<Key>,
}

impl InFlight {
    /// Whether `key` (directory-placed or not) owned by `owner` may have a second copy on
    /// `other` because of this transfer.
    fn covers(&self, key: &Key, placed: bool, owner: usize, other: usize) -> bool {
        let pair = |a: usize, b: usize| {
            (a == self.from && Some(b) == self.to) || (b == self.from && Some(a) == self.to)
        };
        let slot = crate::slots::slot_of(key);
        if let Some(moving) = &self.key {
            moving == key && pair(owner, other)
        } else if self.slots.is_empty() {
            // A drain's relocation: directory-placed rows go from the drained shard anywhere.
            placed && (owner == self.from || other == self.from)
        } else {
            !placed && self.slots.contains(&slot) && pair(owner, other)
        }
    }
}

impl<B: Backend> CollegeDb<B> {
    /// Every shard's fence against the stored map (meaningful while no operation runs).
    async fn fence_problems(&self) -> Result<Vec<String>> {
        let map = self.shard_map();
        let mut problems = Vec::new();
        for (index, shard) in self.shards().into_iter().enumerate() {
            let name = self.shard_name(index);
            let listed = match crate::fence::list(shard).await {
                Err(error) if crate::fence::missing(&error) => continue,
                result => result?,
            };
            let owned = map.slots_of(name);
            let live = crate::fence::admits(self, index, crate::fence::LIVE).await?;
            if owned.is_empty() {
                if !listed.is_empty() || live {
                    problems.push(format!(
                        "{name} is not in the shard map, yet its fence admits {} slots{}",
                        listed.len(),
                        if live {
                            " and directory-placed rows"
                        } else {
                            ""
                        }
                    ));
                }
                continue;
            }
            let (owned_set, listed_set): (HashSet<u16>, HashSet<u16>) = (
                owned.iter().copied().collect(),
                listed.iter().copied().collect(),
            );
            let missing = owned_set.difference(&listed_set).count();
            let extra = listed_set.difference(&owned_set).count();
            if missing > 0 || extra > 0 || !live {
                problems.push(format!(
                    "{name}'s fence lacks {missing} of its {} slots{}, and admits {extra} it does not own: resume the interrupted operation (`collegedb resume`)",
                    owned.len(),
                    if live { "" } else { " and directory-placed rows" }
                ));
            }
        }
        Ok(problems)
    }

    /// The transfers of the growth operation in flight that may leave second copies.
    async fn moves_in_flight(&self) -> Result<Vec<InFlight>> {
        let Some(job) = self.growth_status().await?.running else {
            return Ok(Vec::new());
        };
        let mut moving = Vec::new();
        for transfer in job.transfers.iter().skip(job.current).take(1) {
            use crate::growth::Phase;
            if matches!(transfer.phase, Phase::Prepare | Phase::Done) {
                continue;
            }
            let key = match &job.operation {
                crate::growth::Operation::Reassign { key, .. } => Some(key.clone()),
                _ => None,
            };
            moving.push(InFlight {
                from: self.shard_by_name(&transfer.from)?,
                to: self.shard_by_name(&transfer.to).ok(),
                slots: transfer.slots.iter().copied().collect(),
                key,
            });
        }
        Ok(moving)
    }
}

/// Reads one shard's keys of a table in key order, [`PAGE`] at a time, without loading rows.
pub(crate) struct KeyPages {
    first: String,
    after: String,
    last: Option<Value>,
    done: bool,
}

impl KeyPages {
    /// Pages over `key_column` of `table`; over its distinct values if `distinct` (a colocated
    /// table, where many rows share a key).
    pub(crate) fn new(table: &str, key_column: &str, distinct: bool) -> Self {
        let (table, key) = (quote_ident(table), quote_ident(key_column));
        let column = if distinct {
            format!("DISTINCT {key}")
        } else {
            key.clone()
        };
        KeyPages {
            first: format!("SELECT {column} FROM {table} ORDER BY {key} LIMIT ? + 0"),
            after: format!(
                "SELECT {column} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ? + 0"
            ),
            last: None,
            done: false,
        }
    }

    /// The next page of keys on `shard` (empty once every key was read); call [`KeyPages::restart`]
    /// before moving to another shard.
    pub(crate) async fn next<S: ShardConn>(&mut self, shard: &S) -> Result<Vec<Value>> {
        if self.done {
            return Ok(Vec::new());
        }
        let limit = Value::Integer(PAGE as i64);
        let rows = match self.last.take() {
            None => shard.query(&self.first, &[limit]).await?,
            Some(key) => shard.query(&self.after, &[key, limit]).await?,
        };
        self.done = rows.len() < PAGE;
        let keys: Vec<Value> = rows
            .into_iter()
            .map(|row| row.into_values().into_iter().next().unwrap_or(Value::Null))
            .collect();
        self.last = keys.last().cloned();
        Ok(keys)
    }

    /// Starts again from the first key (for the next shard).
    pub(crate) fn restart(&mut self) {
        (self.last, self.done) = (None, false);
    }
}

/// The single-column primary key of `table` on `shard`, read with `PRAGMA table_info`; `None`
/// for a composite key or none at all.
pub(crate) async fn key_column<S: ShardConn>(shard: &S, table: &str) -> Result<Option<String>> {
    let info = shard
        .query(&format!("PRAGMA table_info({})", quote_ident(table)), &[])
        .await?;
    let keys: Vec<String> = info
        .iter()
        .filter(|row| matches!(row.value("pk"), Some(Value::Integer(n)) if *n > 0))
        .map(|row| row.get::<String>("name"))
        .collect::<Result<_>>()?;
    Ok((keys.len() == 1).then(|| keys[0].clone()))
}

/// A table found on the shards, and its primary-key column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// Its single-column primary key; `None` for a composite key or none at all.
    pub key_column: Option<String>,
}

impl<B: Backend> CollegeDb<B> {
    /// The user tables on any shard (not collegedb's own), with their primary-key columns, read
    /// with `PRAGMA table_info`.
    pub async fn describe_tables(&self) -> Result<Vec<TableInfo>> {
        let mut tables: std::collections::BTreeMap<String, Option<String>> = Default::default();
        for shard in self.shards() {
            for name in crate::raw::user_tables(shard).await? {
                if tables.contains_key(&name) {
                    continue;
                }
                let key_column = key_column(shard, &name).await?;
                tables.insert(name, key_column);
            }
        }
        Ok(tables
            .into_iter()
            .map(|(name, key_column)| TableInfo { name, key_column })
            .collect())
    }

    /// Checks where every row of `table` (keyed by `key_column`) lives against where the router
    /// looks for it; see the [module docs](crate::verify). Read-only.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config, Sharded};
    /// #[derive(Sharded)]
    /// #[sharded(table = "users", strategy = "round-robin")]
    /// struct User { #[sharded(key)] id: String, name: String }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b"]), dir.path())?;
    /// User::create_table(&db).await?;
    /// User::insert(&db, &User { id: "u1".into(), name: "Ada".into() }).await?;
    /// let report = db.verify_table("users", "id").await?;
    /// assert!(report.is_clean(), "{report}");
    /// assert_eq!((report.rows, report.entries), (1, 1));
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub async fn verify_table(&self, table: &str, key_column: &str) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            table: table.to_owned(),
            ..VerifyReport::default()
        };
        self.refresh_map().await?;
        let moving = self.moves_in_flight().await?;
        // A colocated table is checked by its route column against its scope's entries (see
        // `crate::colocate`): each of its keys is a group of rows.
        let colocation = self.colocation(table).await?;
        let (scope, key_column, grouped) = match &colocation {
            Some(c) => (c.scope.as_str(), c.route.as_str(), true),
            None => (table, key_column, false),
        };
        // The table's directory entries, page by page.
        let mut entries: HashMap<Key, usize> = HashMap::new();
        let mut cursor = None;
        loop {
            let page = self
                .directory()
                .list(scope, cursor.as_deref(), PAGE)
                .await?;
            for (key, shard) in page.entries {
                let index = self.shard_by_name(&shard).map_err(|_| {
                    Error::DirectoryInconsistent(format!(
                        "the directory names shard `{shard}` for a key of `{table}`, which is not configured"
                    ))
                })?;
                entries.insert(key, index);
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        report.entries = entries.len() as u64;

        // Every shard's keys, in key order, a page at a time.
        let mut holders: HashMap<Key, Vec<usize>> = HashMap::new();
        let mut pages = KeyPages::new(table, key_column, grouped);
        for (index, shard) in self.shards().into_iter().enumerate() {
            pages.restart();
            loop {
                let keys = match pages.next(shard).await {
                    // A standby shard that never received the table holds none of its rows.
                    Err(Error::QueryFailed { message, .. })
                        if message.contains("no such table") =>
                    {
                        break;
                    }
                    result => result?,
                };
                if keys.is_empty() {
                    break;
                }
                for value in keys {
                    // A key no slot can route (NULL, or not INTEGER or TEXT) stays where it
                    // is: counted, not placed.
                    let Ok(key) = Key::from_value(value) else {
                        report.unroutable += 1;
                        continue;
                    };
                    holders.entry(key).or_default().push(index);
                    report.rows += 1;
                }
            }
        }

        for (key, shards) in &holders {
            let hash = self.hash_shard(key);
            let owner = entries.get(key).copied().unwrap_or(hash);
            if shards.len() == 2 && shards.contains(&owner) {
                let other = shards.iter().copied().find(|&s| s != owner).expect("two");
                let placed = entries.contains_key(key);
                if moving.iter().any(|m| m.covers(key, placed, owner, other)) {
                    report.in_flight += 1;
                    continue;
                }
            }
            if shards.len() > 1 {
                let names = shards
                    .iter()
                    .map(|&s| self.shard_name(s).to_owned())
                    .collect();
                report.duplicated.push((key.clone(), names));
            }
            for &on in shards.iter().filter(|&&on| on != owner) {
                let (on, owner) = (self.shard_name(on), self.shard_name(owner));
                report
                    .misplaced
                    .push((key.clone(), on.to_owned(), owner.to_owned()));
            }
            if owner != hash && !self.may_be_elsewhere(scope, hash).await? {
                let name = self.shard_name(hash).to_owned();
                report.unmarked.push((key.clone(), name));
            }
        }
        // Tombstones where the key is placed (none is, mid-reassignment of that key).
        let reassigning: Vec<&Key> = moving.iter().filter_map(|m| m.key.as_ref()).collect();
        for (index, shard) in self.shards().into_iter().enumerate() {
            let tombstones = match crate::fence::tombstones(shard).await {
                Err(error) if crate::fence::missing(&error) => continue,
                result => result?,
            };
            for (tombstoned, value) in tombstones {
                let Ok(key) = Key::from_value(value) else {
                    continue;
                };
                let owner = entries
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| self.hash_shard(&key));
                if tombstoned == scope && owner == index && !reassigning.contains(&&key) {
                    report
                        .blocked
                        .push((key, self.shard_name(index).to_owned()));
                }
            }
        }
        if self.growth_status().await?.running.is_none() {
            report.fence = self.fence_problems().await?;
        }
        report.entries_without_rows = entries
            .iter()
            .filter(|(key, shard)| !holders.get(*key).is_some_and(|on| on.contains(shard)))
            .count() as u64;
        report.misplaced.sort();
        report.duplicated.sort();
        report.unmarked.sort();
        report.blocked.sort();
        Ok(report)
    }
}
