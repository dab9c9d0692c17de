//! Growing and shrinking a live deployment: [`CollegeDb::add_shard`],
//! [`CollegeDb::drain_shard`], [`CollegeDb::resume_growth`] and [`CollegeDb::growth_status`].
//!
//! # What moves
//!
//! Hash placement sends a key to the owner of its slot ([`crate::slots`]). Adding a shard gives it
//! about `1 / (n + 1)` of the slots, taken evenly from the others; draining a shard gives its
//! slots to the rest, then moves its directory-placed rows (round-robin, random, location) to
//! the other shards (not their hash shards: see `relocate`) and points their entries there, and
//! retires it. Each operation is
//! a list of *transfers* (slots from one shard to another) run one after the other.
//!
//! # How a transfer stays correct while other handles keep writing
//!
//! There is no binlog and no transaction across databases. Three mechanisms stand in:
//!
//! * **The fence** ([`crate::fence`]): each shard lists the slots it owns, and every statement
//!   of the typed layer checks the list *in the same statement*. A statement for a slot the shard
//!   does not own changes nothing, and the router reloads the map and retries.
//! * **Change capture** (`capture`): while a shard gives rows away, triggers log the key of
//!   every write to it in `_collegedb_changes`, in the writer's own transaction.
//! * **The journal**: the operation's state, stored with the shard map (natively in
//!   `_directory.db`), written after every step. Every step is idempotent, so a process killed
//!   anywhere resumes from the last journaled step.
//!
//! A transfer of slots `S` from shard `A` to shard `B`:
//!
//! 1. **Prepare**: create `A`'s tables and indexes on `B`; copy `A`'s off-hash markers; install
//!    change capture on `A`. `B` does not own `S`, so no router writes them there.
//! 2. **Copy**: read `A`'s tables in key order, one page at a time; write the rows of `S` to `B`
//!    with `INSERT OR REPLACE` (copying twice is harmless). Rows that a directory entry places
//!    stay where their entry says. The journal keeps each table's last key (a colocated
//!    table's rows are read in pages along its primary key, see [`TableCursor`]).
//! 3. **Catch up**: replay the change log: re-read each logged key of `S` on `A` and upsert it on
//!    `B`, or delete it from `B` if `A` no longer has it. Repeat until a pass is small.
//! 4. **Freeze**: remove `S` from `A`'s fence. From this statement on, `A` refuses writes of `S`;
//!    writers reload the map, find it unchanged, and wait in short pauses.
//! 5. **Final catch-up**: replay the log up to its last entry as of the freeze; nothing of `S`
//!    can be added to it now (other slots' writes may go on, and are not waited for).
//! 6. **Switch**: copy the markers again, add `S` to `B`'s fence, store the map with `S` owned by
//!    `B` (version + 1). Waiting writers and every stale handle now land on `B`.
//! 7. **Delete** the rows of `S` from `A`, page by page, and remove change capture.
//!
//! Before step 6 every row of `S` is read and written on `A` only (the map names `A`, and `B`'s
//! fence refuses `S`); from step 6 on, on `B` only. A write acknowledged by `A` before the freeze
//! was logged in its own transaction and is on `B` by the end of step 5; after the freeze `A`
//! acknowledges none. So each acknowledged write is on the owner exactly once, and `A`'s copies
//! are unreachable leftovers until step 7 removes them. [`CollegeDb::verify_table`] counts them
//! as a move in flight, not as duplicates.
//!
//! [`CollegeDb::reassign`] moves one key the same way, with a per-key fence (tombstones) and a
//! freeze of the key's slot on one shard; its module docs (`reassign`) give the argument.
//!
//! A drained shard's directory-placed rows move the same way (`relocate`), with the fence value
//! [`crate::fence::LIVE`] in place of the slots: copy, catch up, freeze `A` for directory-routed
//! statements, final catch-up, point the entries at the new shards, delete. A handle whose cache
//! still names `A` is refused there, drops the entry and reads the store.
//!
//! # What it costs
//!
//! * **Steady state**: nothing new on the directory. Each statement of the typed layer carries
//!   one more parameter and probes `_collegedb_slots` by primary key on the shard it already
//!   runs on.
//! * **During a transfer**: each write to `A` adds one log row (the trigger). The mover reads `A`
//!   twice (copy, delete) and writes only the moving rows. Writers of `S` wait out the freeze
//!   (one catch-up pass and the switch: milliseconds natively). Nothing else waits.
//! * **Counts and scans** during a transfer read only the shards of the map, so rows copied to a
//!   shard that joins are not counted twice; a drain into an existing shard can show its copies
//!   to a scan until the switch.

pub(crate) mod capture;
mod reassign;
mod relocate;
mod transfer;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Coordinator};
use crate::error::{Error, Result};
use crate::router::CollegeDb;
use crate::slots::{ShardMap, SlotTransfer};
use crate::value::Value;

/// The journal's name in the coordinator's store.
const JOB: &str = "growth";
/// The last finished operation, kept for `status`.
const LAST: &str = "growth-last";

/// A function called after every journaled step of a growth operation.
pub type StepHook = std::sync::Arc<dyn Fn(&Job) + Send + Sync>;

/// Options of a growth operation.
#[derive(Clone)]
pub struct GrowthOptions {
    /// Rows read per page (and journaled per step). Default 1,000.
    pub page_rows: usize,
    /// Called after every journaled step, with the journal: for progress bars and logs.
    pub on_step: Option<StepHook>,
}

impl Default for GrowthOptions {
    fn default() -> Self {
        GrowthOptions {
            page_rows: 1000,
            on_step: None,
        }
    }
}

impl std::fmt::Debug for GrowthOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrowthOptions")
            .field("page_rows", &self.page_rows)
            .field("on_step", &self.on_step.is_some())
            .finish()
    }
}

impl GrowthOptions {
    /// Sets the rows read per page.
    #[must_use]
    pub fn page_rows(mut self, rows: usize) -> Self {
        self.page_rows = rows.max(1);
        self
    }

    /// Sets the function called after every journaled step.
    #[must_use]
    pub fn on_step(mut self, hook: impl Fn(&Job) + Send + Sync + 'static) -> Self {
        self.on_step = Some(std::sync::Arc::new(hook));
        self
    }
}

/// A growth operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    /// Give a shard its share of the slots.
    AddShard {
        /// The shard.
        shard: String,
    },
    /// Move everything off a shard and retire it.
    DrainShard {
        /// The shard.
        shard: String,
    },
    /// Move one key's row of one table to a shard, and record it in the directory.
    Reassign {
        /// The table.
        table: String,
        /// The key.
        key: crate::key::Key,
        /// The shard it moves to.
        shard: String,
    },
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operation::AddShard { shard } => write!(f, "add_shard {shard}"),
            Operation::DrainShard { shard } => write!(f, "drain_shard {shard}"),
            Operation::Reassign { table, key, shard } => {
                write!(f, "reassign {table}/{key} -> {shard}")
            }
        }
    }
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Schema, markers and change capture not installed yet.
    Prepare,
    /// Copying rows page by page.
    Copy,
    /// Replaying the change log while writes continue.
    CatchUp,
    /// About to refuse writes of the moving slots on the giving shard.
    Freeze,
    /// Replaying the rest of the change log; writes of the moving slots wait.
    FinalCatchUp,
    /// About to hand the slots to the receiving shard and store the map.
    Switch,
    /// Deleting the moved rows from the giving shard.
    Delete,
    /// Finished.
    Done,
}

/// A value of a key column, as the journal stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v", rename_all = "snake_case")]
enum StoredValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&Value> for StoredValue {
    fn from(value: &Value) -> Self {
        match value {
            Value::Null => StoredValue::Null,
            Value::Integer(i) => StoredValue::Integer(*i),
            Value::Real(f) => StoredValue::Real(*f),
            Value::Text(t) => StoredValue::Text(t.clone()),
            Value::Blob(b) => StoredValue::Blob(b.clone()),
        }
    }
}

impl From<&StoredValue> for Value {
    fn from(value: &StoredValue) -> Self {
        match value {
            StoredValue::Null => Value::Null,
            StoredValue::Integer(i) => Value::Integer(*i),
            StoredValue::Real(f) => Value::Real(*f),
            StoredValue::Text(t) => Value::Text(t.clone()),
            StoredValue::Blob(b) => Value::Blob(b.clone()),
        }
    }
}

impl Eq for StoredValue {}

/// One table's progress through a pass over the giving shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCursor {
    /// The table.
    pub table: String,
    /// Its primary-key column.
    pub key: String,
    /// Whether some shard carries the table's off-hash marker: its rows may be placed by
    /// directory entries, which the mover must then consult.
    pub marked: bool,
    after: Option<StoredValue>,
    /// Whether the pass reached the table's end.
    pub done: bool,
    /// For a colocated table (see [`crate::colocate`]): the table whose keys place its rows.
    /// `key` is then the column holding that table's key, shared by many rows, and the pass
    /// moves the rows of one value of it together (see `within`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// For a colocated table whose primary key is `key` then these columns (NOT NULL): they
    /// order the rows of one group, so that the pass reads and deletes pages of rows, inside a
    /// large group too. Empty otherwise (or in a journal that predates them): the pass then
    /// takes whole groups, a page of keys at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub within: Vec<String>,
    /// When the pass pages by rows (`within`): the primary key of the last row read. `after`
    /// stays empty then, so that a build that predates row pages and resumes the journal starts
    /// the pass over (harmless) rather than skip the rest of a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after_row: Option<Vec<StoredValue>>,
}

impl TableCursor {
    /// The directory scope of the table's keys: its own name, or its colocation scope.
    pub(crate) fn scope(&self) -> &str {
        self.scope.as_deref().unwrap_or(&self.table)
    }

    /// Whether many rows share one value of `key` (a colocated table).
    pub(crate) fn grouped(&self) -> bool {
        self.scope.is_some()
    }

    /// How a pass pages the table: `None` for one row per key; for a colocated table, the
    /// columns ordering the rows of a group (see `within`).
    pub(crate) fn grouping(&self) -> Option<&[String]> {
        self.grouped().then_some(self.within.as_slice())
    }

    fn after(&self) -> Option<Value> {
        self.after.as_ref().map(Value::from)
    }

    /// Whether the pass pages the table by rows inside groups (see `within`).
    pub(crate) fn pages_rows(&self) -> bool {
        self.grouped() && !self.within.is_empty()
    }

    /// Where a pass continues: the key of the last row read, or when it pages by rows, that
    /// row's primary key (`key`, then `within`).
    fn position(&self) -> Option<Vec<Value>> {
        if self.pages_rows() {
            // No row position (a fresh pass, or a journal of a build that kept only the key):
            // from the start, which is harmless for a copy and for a delete.
            return Some(self.after_row.as_ref()?.iter().map(Value::from).collect());
        }
        Some(vec![self.after()?])
    }

    /// Moves the cursor past `row`: a whole row, or the columns of a keys-only page. Returns
    /// the row's key.
    fn advance(&mut self, row: &crate::backend::Row) -> Option<Value> {
        let key = row.value(&self.key)?.clone();
        self.after_row = if self.pages_rows() {
            std::iter::once(Some(StoredValue::from(&key)))
                .chain(
                    self.within
                        .iter()
                        .map(|column| row.value(column).map(StoredValue::from)),
                )
                .collect()
        } else {
            None
        };
        self.after = (!self.pages_rows()).then(|| StoredValue::from(&key));
        Some(key)
    }

    fn restart(&mut self) {
        self.after = None;
        self.after_row = None;
        self.done = false;
    }
}

/// Slot lists in the journal as `[first, last]` ranges: the journal is written after every step.
mod slot_ranges {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(slots: &[u16], serializer: S) -> Result<S::Ok, S::Error> {
        let mut ranges: Vec<[u16; 2]> = Vec::new();
        for &slot in slots {
            match ranges.last_mut() {
                Some(last) if last[1].checked_add(1) == Some(slot) => last[1] = slot,
                _ => ranges.push([slot, slot]),
            }
        }
        ranges.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u16>, D::Error> {
        let ranges = Vec::<[u16; 2]>::deserialize(deserializer)?;
        Ok(ranges.into_iter().flat_map(|[a, b]| a..=b).collect())
    }
}

/// One transfer of slots between two shards, with its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The giving shard.
    pub from: String,
    /// The receiving shard.
    pub to: String,
    /// The slots, ascending. Empty for the relocation of a drained shard's directory-placed rows
    /// (whose `to` is empty too) and for a reassigned key.
    #[serde(with = "slot_ranges")]
    pub slots: Vec<u16>,
    /// Where it is.
    pub phase: Phase,
    /// The tables of the giving shard.
    pub tables: Vec<TableCursor>,
    /// The last change-log entry applied.
    pub log_after: i64,
    /// The log's last entry once the freeze had committed. No later entry can be a moving
    /// row's (the freeze refuses their writes), so the final catch-up ends there, however busy
    /// the shard's other keys keep the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_end: Option<i64>,
    /// Catch-up passes so far.
    pub passes: u32,
    /// Rows written to the receiving shard by the copy.
    pub copied: u64,
    /// Logged changes applied by catch-up.
    pub caught_up: u64,
    /// Rows deleted from the giving shard.
    pub deleted: u64,
    /// An estimate of the rows to move, from row counts when the transfer started.
    pub estimate: u64,
    /// The fence values a reassignment's freeze revokes on the giving shard, decided when it is
    /// prepared and given back after its delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<i64>,
    /// The same on the receiving shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen_receiver: Vec<i64>,
}

impl Transfer {
    fn new(plan: SlotTransfer) -> Self {
        Transfer {
            from: plan.from,
            to: plan.to,
            slots: plan.slots,
            phase: Phase::Prepare,
            tables: Vec::new(),
            log_after: 0,
            log_end: None,
            passes: 0,
            copied: 0,
            caught_up: 0,
            deleted: 0,
            estimate: 0,
            frozen: Vec::new(),
            frozen_receiver: Vec::new(),
        }
    }

    /// Whether this transfer moves the directory-placed rows of a drained shard (no slots, no
    /// single receiving shard).
    pub fn is_relocation(&self) -> bool {
        self.slots.is_empty() && self.to.is_empty()
    }

    /// Whether this transfer moves one reassigned key (no slots, one receiving shard).
    pub fn is_reassignment(&self) -> bool {
        self.slots.is_empty() && !self.to.is_empty()
    }

    /// After a catch-up pass that read `read` log entries of at most `page`: a small pass (or
    /// the 50th) lets the transfer freeze; after the freeze, reaching the log's end as of the
    /// freeze (`log_end`), or a short read, lets the switch follow.
    fn after_catch_up_pass(&mut self, read: usize, page: usize) {
        /// A catch-up pass smaller than `page / CATCH_UP_SMALL` lets the transfer freeze.
        const CATCH_UP_SMALL: usize = 10;
        /// Catch-up passes after which the transfer freezes however busy the shard is.
        const CATCH_UP_PASSES: u32 = 50;
        self.passes += 1;
        if self.phase == Phase::CatchUp {
            if read < page / CATCH_UP_SMALL || self.passes >= CATCH_UP_PASSES {
                self.phase = Phase::Freeze;
            }
        } else if read < page || self.log_end.is_some_and(|end| self.log_after >= end) {
            self.phase = Phase::Switch;
        }
    }
}

/// The journal of a growth operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// What it does.
    pub operation: Operation,
    /// The map version it started from.
    pub from_version: u64,
    /// Its transfers, in order.
    pub transfers: Vec<Transfer>,
    /// The transfer in progress (`transfers.len()` when all are done).
    pub current: usize,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it finished, if it has.
    pub finished_ms: Option<u64>,
    /// Rows that could not be moved: their key is neither INTEGER nor TEXT, so no slot routes
    /// them. They stay where they are and are counted here, once per shard.
    pub unroutable: u64,
    /// The map version the operation produced, once finished.
    #[serde(default)]
    pub to_version: Option<u64>,
    /// The runner holding the operation, and until when (ms since the epoch): a second runner
    /// is refused while the lease lasts, and a runner that finds its lease taken stops.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Tables skipped because they have no single-column primary key.
    pub skipped_tables: Vec<String>,
}

impl Job {
    /// Whether the current transfer is the first of the operation from its giving shard: every
    /// transfer from a shard reads all of it, so counts of the shard's own rows are taken once.
    fn first_transfer_from_its_shard(&self) -> bool {
        let from = &self.transfers[self.current].from;
        !self.transfers[..self.current]
            .iter()
            .any(|other| &other.from == from)
    }

    /// Rows copied so far, over every transfer.
    pub fn rows_copied(&self) -> u64 {
        self.transfers.iter().map(|t| t.copied).sum()
    }

    /// Rows deleted from giving shards so far.
    pub fn rows_deleted(&self) -> u64 {
        self.transfers.iter().map(|t| t.deleted).sum()
    }

    /// The estimated rows to move, over every transfer prepared so far.
    pub fn rows_estimated(&self) -> u64 {
        self.transfers.iter().map(|t| t.estimate).sum()
    }

    /// Whether it finished.
    pub fn is_finished(&self) -> bool {
        self.finished_ms.is_some()
    }

    /// Rows copied per second since it started.
    pub fn rate(&self, now_ms: u64) -> f64 {
        let end = self.finished_ms.unwrap_or(now_ms);
        let seconds = end.saturating_sub(self.started_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            0.0
        } else {
            self.rows_copied() as f64 / seconds
        }
    }

    /// Seconds left at the current rate (copy and delete passes both count), if it can tell.
    pub fn eta_seconds(&self, now_ms: u64) -> Option<f64> {
        let rate = self.rate(now_ms);
        let estimate = self.rows_estimated();
        if self.is_finished() {
            return Some(0.0);
        }
        if rate <= 0.0 || estimate == 0 {
            return None;
        }
        // Each moved row is copied once and deleted once, at about the same speed.
        let left = (2 * estimate).saturating_sub(self.rows_copied() + self.rows_deleted());
        Some(left as f64 / (2.0 * rate))
    }
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (from map version {}): transfer {} of {}",
            self.operation,
            self.from_version,
            (self.current + 1).min(self.transfers.len()),
            self.transfers.len()
        )?;
        if let Some(t) = self.transfers.get(self.current) {
            let what = if let Operation::Reassign { table, key, .. } = &self.operation {
                format!("key {key} of {table}")
            } else if t.is_relocation() {
                "directory-placed rows".to_owned()
            } else {
                format!("{} slots", t.slots.len())
            };
            write!(f, " ({what} {} -> {}, {:?})", t.from, t.to, t.phase)?;
        }
        write!(
            f,
            "; rows copied {}, deleted {}, estimated {}",
            self.rows_copied(),
            self.rows_deleted(),
            self.rows_estimated()
        )
    }
}

/// Which runner holds a growth operation, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// A random id of the runner.
    pub runner: u64,
    /// When the lease ends unless renewed, in milliseconds since the Unix epoch.
    pub until_ms: u64,
}

/// How long a runner's lease lasts after its last journaled step.
pub const LEASE_MS: u64 = 30_000;

/// What [`CollegeDb::growth_status`] reports.
#[derive(Debug, Clone)]
pub struct GrowthStatus {
    /// The stored shard map.
    pub map: ShardMap,
    /// The operation in progress, if any.
    pub running: Option<Job>,
    /// The last finished operation, if any.
    pub last: Option<Job>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys_now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

#[cfg(target_arch = "wasm32")]
fn js_sys_now() -> u64 {
    #[cfg(feature = "cloudflare")]
    {
        worker::Date::now().as_millis()
    }
    #[cfg(not(feature = "cloudflare"))]
    {
        0
    }
}

impl<B: Backend> CollegeDb<B> {
    /// Adds `shard` (configured, standby) to a live deployment: moves about `1 / (n + 1)` of the
    /// hash-placed rows onto it, taken evenly from every shard, while reads and writes go on.
    /// See the [module docs](crate::growth) for how, and what it costs.
    ///
    /// Resumes the operation if an earlier run was interrupted; a second run of a finished one
    /// changes nothing.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config, Sharded};
    /// #[derive(Sharded)]
    /// #[sharded(table = "users")]
    /// struct User { #[sharded(key)] id: i64, name: String }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c"]), dir.path())?;
    /// User::create_table(&db).await?;
    /// for id in 0..400 {
    ///     User::insert(&db, &User { id, name: format!("user {id}") }).await?;
    /// }
    /// drop(db);
    /// // Configure the new shard beside the others, then give it its share.
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c", "d"]), dir.path())?;
    /// let report = db.add_shard("d").await?;
    /// assert_eq!(report.transfers.len(), 3);
    /// assert!(report.rows_copied() > 60, "about a quarter of 400 rows");
    /// assert_eq!(User::count(&db).await?, 400);
    /// assert!(db.verify_table("users", "id").await?.is_clean());
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub async fn add_shard(&self, shard: &str) -> Result<Job> {
        self.add_shard_with(shard, &GrowthOptions::default()).await
    }

    /// [`CollegeDb::add_shard`] with options (page size, progress hook).
    pub async fn add_shard_with(&self, shard: &str, options: &GrowthOptions) -> Result<Job> {
        self.shard_by_name(shard)?;
        let operation = Operation::AddShard {
            shard: shard.to_owned(),
        };
        self.start_or_resume(operation, options).await
    }

    /// Moves every row off `shard` (any shard, not only the last) and retires it from the map:
    /// its slots go to the other shards evenly, then its directory-placed rows follow to the
    /// other shards. Afterwards it can be removed from the configuration. Resumable and
    /// idempotent like [`CollegeDb::add_shard`].
    pub async fn drain_shard(&self, shard: &str) -> Result<Job> {
        self.drain_shard_with(shard, &GrowthOptions::default())
            .await
    }

    /// [`CollegeDb::drain_shard`] with options (page size, progress hook).
    pub async fn drain_shard_with(&self, shard: &str, options: &GrowthOptions) -> Result<Job> {
        self.shard_by_name(shard)?;
        let operation = Operation::DrainShard {
            shard: shard.to_owned(),
        };
        self.start_or_resume(operation, options).await
    }

    /// Finishes an interrupted growth operation, if there is one. Call it when the runner that
    /// held the operation is gone (killed, crashed): it takes the operation over even while that
    /// runner's lease lasts ([`LEASE_MS`] after its last step), and a runner still alive stops at
    /// its next step. [`CollegeDb::add_shard`] and [`CollegeDb::drain_shard`] run again resume
    /// too, but wait for the lease to end.
    pub async fn resume_growth(&self, options: &GrowthOptions) -> Result<Option<Job>> {
        self.run_steps(None, true, options, usize::MAX).await
    }

    /// The stored map, the operation in progress and the last finished one.
    pub async fn growth_status(&self) -> Result<GrowthStatus> {
        self.refresh_map().await?;
        Ok(GrowthStatus {
            map: (*self.shard_map()).clone(),
            running: self.load_job(JOB).await?,
            last: self.load_job(LAST).await?,
        })
    }

    /// The growth operation journaled now, if any (one read of the coordinator's store).
    pub(crate) async fn growth_in_progress(&self) -> Result<Option<Operation>> {
        Ok(self.load_job(JOB).await?.map(|job| job.operation))
    }

    async fn load_job(&self, name: &str) -> Result<Option<Job>> {
        match self.coordinator().load_job(name).await? {
            Some(json) => parse_job(name, &json).map(Some),
            None => Ok(None),
        }
    }

    /// Fails if another runner took the operation over (`resume_growth` while this one stalled).
    async fn check_lease(&self, job: &Job) -> Result<()> {
        let Some(ours) = &job.lease else {
            return Ok(());
        };
        match self.load_job(JOB).await? {
            Some(stored)
                if stored
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.runner != ours.runner) =>
            {
                Err(lease_taken(&stored))
            }
            Some(_) => Ok(()),
            None => Err(Error::config(format!(
                "another runner finished the growth operation ({}) while this one was stalled",
                job.operation
            ))),
        }
    }

    /// Clears this runner's lease on the journal it wrote last (`journal`; not on the job in
    /// memory, which a failed step may have advanced past what it did), unless another runner
    /// wrote it since. Best effort: a failure leaves the lease to lapse.
    async fn release_lease(&self, journal: &str) {
        let Ok(mut job) = parse_job(JOB, journal) else {
            return;
        };
        job.lease = None;
        let json = serde_json::to_string(&job).expect("a job serializes");
        let _ = self
            .coordinator()
            .swap_job(JOB, Some(journal), Some(&json))
            .await;
    }

    /// Journals `operation` without running any of it, for runners that advance it in bounded
    /// steps ([`CollegeDb::advance_growth`]; on Cloudflare, from a Durable Object alarm). Returns
    /// the journal; if the same operation is already journaled, returns it as it stands, and if
    /// there is nothing to do, a finished job that was not journaled.
    pub async fn start_growth(&self, operation: Operation) -> Result<Job> {
        if let Some(job) = self.load_job(JOB).await? {
            if job.operation != operation {
                return Err(Error::config(format!(
                    "another growth operation is in progress ({}): finish it first with `resume_growth` (`collegedb resume`)",
                    job.operation
                )));
            }
            return Ok(job);
        }
        self.refresh_map().await?;
        let map = self.shard_map();
        let plans = match &operation {
            Operation::AddShard { shard } if map.contains(shard) => Vec::new(),
            Operation::AddShard { shard } => map.plan_add(shard)?,
            Operation::DrainShard { shard } if !map.contains(shard) => Vec::new(),
            Operation::DrainShard { shard } => map.plan_drain(shard)?,
            Operation::Reassign { .. } => Vec::new(),
        };
        let mut transfers: Vec<Transfer> = plans.into_iter().map(Transfer::new).collect();
        if let Operation::Reassign { table, key, shard } = &operation {
            transfers.extend(reassign::plan(self, table, key, shard).await?);
        }
        if let Operation::DrainShard { shard } = &operation {
            if !transfers.is_empty() {
                transfers.push(Transfer::new(SlotTransfer {
                    from: shard.clone(),
                    to: String::new(),
                    slots: Vec::new(),
                }));
            }
        }
        let mut job = Job {
            operation,
            from_version: map.version(),
            transfers,
            current: 0,
            started_ms: now_ms(),
            finished_ms: None,
            unroutable: 0,
            to_version: None,
            lease: None,
            skipped_tables: Vec::new(),
        };
        if job.transfers.is_empty() {
            // Already done: a second run changes nothing.
            job.finished_ms = Some(job.started_ms);
            return Ok(job);
        }
        if !matches!(job.operation, Operation::Reassign { .. }) {
            for transfer in &mut job.transfers {
                transfer.estimate = self.estimate(&map, transfer).await?;
            }
        }
        let json = serde_json::to_string(&job).expect("a job serializes");
        if !self.coordinator().swap_job(JOB, None, Some(&json)).await? {
            // Another caller journaled an operation since this one looked.
            return match self.load_job(JOB).await? {
                Some(other) if other.operation == job.operation => Ok(other),
                Some(other) => Err(Error::config(format!(
                    "another growth operation is in progress ({}): finish it first with `resume_growth` (`collegedb resume`)",
                    other.operation
                ))),
                None => self.finished_elsewhere(&job.operation).await,
            };
        }
        Ok(job)
    }

    /// The rows a transfer will move: the giving shard's rows times the share of its slots that
    /// moves (all its rows for a drain's relocation, an upper bound).
    async fn estimate(&self, map: &ShardMap, transfer: &Transfer) -> Result<u64> {
        if transfer.is_relocation() {
            // Counted when it starts, once the slot transfers have emptied the shard of the rest.
            return Ok(0);
        }
        let from = self.shard(self.shard_by_name(&transfer.from)?);
        let mut rows = 0;
        for table in crate::raw::user_tables(from).await? {
            rows += capture::count(from, &table).await?;
        }
        let owned = map.slots_of(&transfer.from).len().max(1) as u64;
        Ok(rows * transfer.slots.len() as u64 / owned)
    }

    /// Runs at most `max_steps` journaled steps of the operation in progress and returns its
    /// journal (finished when it is done), or `None` when no operation is in progress. Each
    /// step is one page of rows or one phase change, within D1's per-query limits, so a runner
    /// with a budget (a Worker invocation's 1,000 subrequests) calls this repeatedly.
    pub async fn advance_growth(
        &self,
        options: &GrowthOptions,
        max_steps: usize,
    ) -> Result<Option<Job>> {
        self.run_steps(None, false, options, max_steps).await
    }

    async fn start_or_resume(&self, operation: Operation, options: &GrowthOptions) -> Result<Job> {
        let job = self.start_growth(operation).await?;
        if job.is_finished() {
            return Ok(job);
        }
        match self
            .run_steps(Some(&job.operation), false, options, usize::MAX)
            .await?
        {
            Some(job) => Ok(job),
            None => self.finished_elsewhere(&job.operation).await,
        }
    }

    /// The operation finished while this runner was not looking: its record, if it is the last.
    async fn finished_elsewhere(&self, operation: &Operation) -> Result<Job> {
        match self.load_job(LAST).await? {
            Some(last) if last.operation == *operation => Ok(last),
            _ => Err(Error::config(format!(
                "another runner finished the growth operation ({operation}) meanwhile: check `status`"
            ))),
        }
    }

    /// Takes the journaled operation (`operation`, if given, must be the one journaled; `None`
    /// when there is none), with a lease (`takeover`: even one another runner holds), and runs
    /// at most `max_steps` steps of it. The journal is read and written with compare-and-set
    /// ([`Coordinator::swap_job`]), so two runners never both step an operation: the one whose
    /// write finds the journal changed stops.
    async fn run_steps(
        &self,
        operation: Option<&Operation>,
        takeover: bool,
        options: &GrowthOptions,
        max_steps: usize,
    ) -> Result<Option<Job>> {
        let Some(mut stored) = self.coordinator().load_job(JOB).await? else {
            return Ok(None);
        };
        let mut job: Job = parse_job(JOB, &stored)?;
        if operation.is_some_and(|op| *op != job.operation) {
            return Err(Error::config(format!(
                "another growth operation is in progress ({}): finish it first with `resume_growth` (`collegedb resume`)",
                job.operation
            )));
        }
        let now = now_ms();
        if let Some(lease) = &job.lease {
            if lease.until_ms > now && !takeover {
                return Err(lease_taken(&job));
            }
        }
        job.lease = Some(Lease {
            runner: fastrand::u64(1..),
            until_ms: now + LEASE_MS,
        });
        let mut journal = serde_json::to_string(&job).expect("a job serializes");
        if !self
            .coordinator()
            .swap_job(JOB, Some(&stored), Some(&journal))
            .await?
        {
            return Err(self.taken_over(&job).await);
        }
        stored.clone_from(&journal);
        let mut steps = 0;
        while job.current < job.transfers.len() {
            if steps == max_steps {
                // Hand the lease back, so that the next bounded run may continue at once.
                job.lease = None;
                self.swap_journal(&mut journal, &job, &GrowthOptions::default())
                    .await?;
                return Ok(Some(job));
            }
            steps += 1;
            // Before every step, not only at the save after it: a runner that was taken over
            // does no more work.
            self.check_lease(&job).await?;
            if let Some(lease) = &mut job.lease {
                lease.until_ms = now_ms() + LEASE_MS;
            }
            let stepped = if matches!(job.operation, Operation::Reassign { .. }) {
                reassign::step(self, &mut job).await
            } else if job.transfers[job.current].is_relocation() {
                relocate::step(self, &mut job, options).await
            } else {
                transfer::step(self, &mut job, options).await
            };
            if let Err(error) = stepped {
                // A failed step (a transient database error, say) hands the lease back, so that
                // the next attempt need not wait for it to lapse.
                self.release_lease(&journal).await;
                return Err(error);
            }
            if job.transfers[job.current].phase == Phase::Done {
                job.current += 1;
            }
            self.swap_journal(&mut journal, &job, options).await?;
        }
        job.finished_ms = Some(now_ms());
        job.lease = None;
        job.to_version = Some(self.shard_map().version());
        if !self
            .coordinator()
            .swap_job(JOB, Some(&journal), None)
            .await?
        {
            return Err(self.taken_over(&job).await);
        }
        let json = serde_json::to_string(&job).expect("a job serializes");
        self.coordinator().store_job(LAST, Some(&json)).await?;
        if let Some(hook) = &options.on_step {
            hook(&job);
        }
        Ok(Some(job))
    }

    /// Writes `job` over the journal this runner wrote last (`journal`, updated), then calls the
    /// step hook; fails if another runner wrote the journal meanwhile.
    async fn swap_journal(
        &self,
        journal: &mut String,
        job: &Job,
        options: &GrowthOptions,
    ) -> Result<()> {
        let next = serde_json::to_string(job).expect("a job serializes");
        if !self
            .coordinator()
            .swap_job(JOB, Some(journal), Some(&next))
            .await?
        {
            return Err(self.taken_over(job).await);
        }
        *journal = next;
        if let Some(hook) = &options.on_step {
            hook(job);
        }
        Ok(())
    }

    /// The error of a runner whose journal write found another runner's.
    async fn taken_over(&self, job: &Job) -> Error {
        match self.load_job(JOB).await {
            Ok(Some(other)) => lease_taken(&other),
            _ => Error::config(format!(
                "another runner finished the growth operation ({}) meanwhile: check `status`",
                job.operation
            )),
        }
    }
}

fn parse_job(name: &str, json: &str) -> Result<Job> {
    serde_json::from_str(json)
        .map_err(|e| Error::DirectoryInconsistent(format!("the growth journal `{name}`: {e}")))
}

fn lease_taken(job: &Job) -> Error {
    let seconds = job
        .lease
        .as_ref()
        .map_or(0, |l| l.until_ms.saturating_sub(now_ms()) / 1000);
    Error::config(format!(
        "another runner holds the growth operation ({}); its lease ends in {seconds} s unless it makes progress: wait, or check `status`",
        job.operation
    ))
}
