//! The ShardCoordinator: a Durable Object with SQLite storage that keeps the shard registry, the
//! round-robin counters and per-shard, per-table row counts, behind the seed's HTTP API:
//!
//! | request | body | answer |
//! | --- | --- | --- |
//! | `GET /shards` | | `["db-east", ...]` |
//! | `POST /shards` | `{"shard": "db-east"}` | `{"success": true}` |
//! | `DELETE /shards` | `{"shard": "db-east"}` | `{"success": true}` |
//! | `GET /stats` | | `[{"binding", "count", "tables": {..}, "lastUpdated"}]` |
//! | `POST /stats` | `{"deltas": [{"shard", "table", "delta"}]}` | `{"success": true}` |
//! | `PUT /stats` | `{"counts": [{"shard", "table", "rows"}]}` | `{"success": true}`; replaces the figures of the shards named |
//! | `POST /allocate` | `{"table"?, "count"?, "primaryKey"?, "strategy"?}` | `{"ticket", "count", "shard"?}` |
//! | `POST /flush` | | `{"success": true}`; refused with 403 unless the object's `COLLEGEDB_ALLOW_FLUSH` var is `"true"` |
//! | `GET /health` | | `{"status": "ok", "shards": n}` |
//!
//! [`CoordinatorClient`] is the typed client; the router uses it for round-robin tickets (reserved
//! [`TICKET_BLOCK`] at a time and kept per isolate, so the object is not on every insert's path)
//! and to send the row-count changes of its writes.
//!
//! # Statistics: batched per isolate, and how stale they may be
//!
//! One coordinator object serves every isolate, and a Durable Object request costs about as much
//! Worker CPU as the insert itself, so row-count changes are not sent per write.
//! [`CoordinatorClient::record_rows`] (what [`CollegeDb::sync_stats`](crate::CollegeDb::sync_stats) calls) only adds the changes
//! to a batch kept per isolate (a `thread_local`, like the directory cache and the tickets), and
//! the batch is sent as one `POST /stats`:
//!
//! - by a timer, [`CoordinatorClient::flush_stats_when_due`], [`StatsBatching::max_age_ms`]
//!   (default 10 s) after the batch's first change. Call it from `ctx.wait_until` after each
//!   response; it returns at once unless this request must host the isolate's one timer;
//! - at once, by the `record_rows` call that brings the batch to [`StatsBatching::max_rows`]
//!   changed rows (default 1,000), or that finds the batch older than `max_age_ms` (for callers
//!   that never start the timer);
//! - on demand, by [`CoordinatorClient::flush_stats`].
//!
//! So with the defaults an isolate makes at most one statistics call per 10 s, plus one per 1,000
//! changed rows, whatever its write rate. What the coordinator's figures may miss:
//!
//! - **Lag**: a change reaches the coordinator at most `max_age_ms` plus one round trip after
//!   the write (sooner under load, by `max_rows`). If the runtime cancels the timer (a
//!   `waitUntil` lives at most 30 s after its response), the first request of the isolate that
//!   comes 5 s after the batch fell due starts a new one, which sends at once.
//! - **Coordinator down**: a failed send puts the batch back; it is retried no sooner than
//!   `max_age_ms` later (so an outage costs one failed call per interval, not one per write).
//! - **Lost batches**: a batch lives in the isolate's memory only. If the isolate is evicted, crashes, is
//!   replaced by a deployment or exceeds a limit before its batch is sent, those changes
//!   never arrive: at most `max_rows` changed rows (and at most `max_age_ms` of writes) per
//!   isolate. Such drift persists until a recount.
//! - **Recount**: [`recount_stats`] counts the rows on the shards (`get_shard_stats`) and sets
//!   the coordinator's figures to them (`PUT /stats`), after dropping this isolate's batch
//!   (its changes are in the count). Batches pending in *other* isolates at that moment hold
//!   changes the count already includes, and add them again when they are sent: right after a
//!   recount, the figures may be high by up to one batch per live isolate, until the next recount.
//!   Writes that commit while the recount runs may be counted once too often or not at all.
//!
//! The figures are for capacity planning and rebalancing decisions; exact numbers come from the
//! shards (`get_shard_stats`), at the price of a `COUNT(*)` per table and shard.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker::{
    Delay, Env, Method, ObjectNamespace, Request, RequestInit, Response, SqlStorageValue, State,
};

use super::Cloudflare;
use crate::backend::{Coordinator, RowDelta};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::placement::hash::jump_consistent_hash;
use crate::router::CollegeDb;

/// Round-robin tickets reserved per call to the coordinator.
pub const TICKET_BLOCK: u64 = 16;

/// The object name of the coordinator within its namespace.
pub const COORDINATOR_NAME: &str = "collegedb-coordinator";

/// A timer whose deadline passed this long ago is taken for cancelled, and the next request
/// starts another (two timers at once are harmless: a batch is taken by one send only).
const TIMER_GRACE_MS: u64 = 5_000;

thread_local! {
    /// Per isolate: per table, the next ticket and the end of the reserved block.
    static TICKETS: RefCell<HashMap<String, (u64, u64)>> = RefCell::new(HashMap::new());
    /// Per isolate: the row-count changes not yet sent to the coordinator.
    static STATS: RefCell<StatsBatch> = RefCell::new(StatsBatch::default());
}

/// How an isolate batches the row-count changes it sends to the coordinator. Set it with
/// [`set_stats_batching`].
///
/// The batch is sent by the isolate's timer ([`CoordinatorClient::flush_stats_when_due`])
/// `max_age_ms` after its first change, at once by the write that brings it to `max_rows`
/// changed rows, or on demand ([`CoordinatorClient::flush_stats`]). How stale the coordinator's
/// figures may be:
///
/// - a change arrives at most `max_age_ms` plus a round trip after its write (if the runtime
///   cancels the timer, the isolate's first request 5 s after the batch fell due restarts it);
/// - while the coordinator is down, batches are kept and retried once per `max_age_ms`;
/// - an isolate evicted (or crashed, or replaced by a deployment) before its batch is sent loses
///   it: at most `max_rows` changed rows, `max_age_ms` of its writes; the drift stays until
///   [`recount_stats`];
/// - right after a recount, batches still pending in other isolates add changes the count
///   already holds: high by at most one batch per live isolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsBatching {
    /// The longest a change waits in the isolate before it is sent, in milliseconds; also the
    /// shortest wait before a failed send is retried.
    pub max_age_ms: u64,
    /// A batch holding this many changed rows (the sum of the changes' sizes) is sent at once.
    pub max_rows: u64,
}

impl StatsBatching {
    /// At most one statistics call per isolate per 10 s, plus one per 1,000 changed rows.
    pub const DEFAULT: StatsBatching = StatsBatching {
        max_age_ms: 10_000,
        max_rows: 1_000,
    };
    /// No batching: every `record_rows` call sends its changes (one coordinator call per write).
    pub const IMMEDIATE: StatsBatching = StatsBatching {
        max_age_ms: 0,
        max_rows: 0,
    };
}

impl Default for StatsBatching {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Sets how this isolate batches its row-count changes. Per isolate: call it on each request (it
/// is cheap) or once at start-up.
pub fn set_stats_batching(batching: StatsBatching) {
    STATS.with(|s| s.borrow_mut().batching = batching);
}

/// This isolate's batch of row-count changes not yet sent to the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingStats {
    /// The changes, merged per shard and table.
    pub deltas: Vec<RowDelta>,
    /// Changed rows in the batch (the sum of the changes' sizes).
    pub rows: u64,
    /// Milliseconds since the batch's first change; `None` when there is no batch.
    pub age_ms: Option<u64>,
    /// Batches this isolate has sent to the coordinator.
    pub batches_sent: u64,
}

/// This isolate's unsent row-count changes.
pub fn pending_stats() -> PendingStats {
    STATS.with(|s| s.borrow().pending(now_ms()))
}

/// Whether this isolate has a batch of changes and no running timer to send it: then hand
/// [`CoordinatorClient::flush_stats_when_due`] to `ctx.wait_until`. Lets a request skip
/// `wait_until` altogether when there is nothing to do (no I/O, no allocation).
pub fn stats_timer_needed() -> bool {
    STATS.with(|s| s.borrow().timer_needed(now_ms()))
}

/// Drops this isolate's unsent row-count changes and returns them. [`recount_stats`] and a
/// flush of every shard call it: the changes it drops are already in (or wiped from) the shards.
pub fn discard_pending_stats() -> PendingStats {
    STATS.with(|s| {
        let mut batch = s.borrow_mut();
        let pending = batch.pending(now_ms());
        batch.take();
        pending
    })
}

/// One table's row count on one shard, for `PUT /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCount {
    /// The shard's name.
    pub shard: String,
    /// The table.
    pub table: String,
    /// Its rows.
    pub rows: u64,
}

/// Recounts: drops this isolate's unsent changes, counts every table's rows on every shard and
/// sets the coordinator's figures for those shards to the counts. Costs a `COUNT(*)` per table and
/// shard and one coordinator call. See the module docs for what other isolates' batches do to
/// the figures afterwards.
pub async fn recount_stats(db: &CollegeDb<Cloudflare>) -> Result<Vec<RowCount>> {
    discard_pending_stats();
    let counts: Vec<RowCount> = db
        .get_shard_stats()
        .await?
        .into_iter()
        .flat_map(|stats| {
            let shard = stats.shard;
            stats.tables.into_iter().map(move |(table, rows)| RowCount {
                shard: shard.clone(),
                table,
                rows,
            })
        })
        .collect();
    db.coordinator().set_rows(counts.clone()).await?;
    Ok(counts)
}

fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// A batch taken out of [`StatsBatch`] to be sent.
struct TakenBatch {
    deltas: BTreeMap<(String, String), i64>,
    rows: u64,
    opened_at: u64,
}

enum TimerStep {
    Stop,
    Sleep(u64),
    Send,
}

#[derive(Default)]
struct StatsBatch {
    batching: StatsBatching,
    /// Changes by `(shard, table)`.
    deltas: BTreeMap<(String, String), i64>,
    /// The sum of the changes' sizes.
    rows: u64,
    /// When the batch's first change was added; `None`: no batch.
    opened_at: Option<u64>,
    /// No automatic send before this time (set by a failed send).
    retry_at: u64,
    /// The running timer: its token and the time it sleeps until.
    timer: Option<(u64, u64)>,
    timers_started: u64,
    batches_sent: u64,
}

impl StatsBatch {
    fn add(&mut self, deltas: Vec<RowDelta>, now: u64) {
        for delta in deltas {
            if delta.delta == 0 {
                continue;
            }
            self.rows = self.rows.saturating_add(delta.delta.unsigned_abs());
            *self.deltas.entry((delta.shard, delta.table)).or_default() += delta.delta;
            self.opened_at.get_or_insert(now);
        }
    }

    /// When the batch is due for sending; `None`: no batch.
    fn due_at(&self) -> Option<u64> {
        let opened = self.opened_at?;
        let due = if self.rows >= self.batching.max_rows {
            opened
        } else {
            opened.saturating_add(self.batching.max_age_ms)
        };
        Some(due.max(self.retry_at))
    }

    fn is_due(&self, now: u64) -> bool {
        self.due_at().is_some_and(|due| due <= now)
    }

    fn take(&mut self) -> Option<TakenBatch> {
        let opened_at = self.opened_at.take()?;
        Some(TakenBatch {
            deltas: std::mem::take(&mut self.deltas),
            rows: std::mem::take(&mut self.rows),
            opened_at,
        })
    }

    /// Puts back a batch whose send failed, and holds automatic sends back for an interval.
    fn restore(&mut self, taken: TakenBatch, now: u64) {
        for (key, delta) in taken.deltas {
            *self.deltas.entry(key).or_default() += delta;
        }
        self.rows = self.rows.saturating_add(taken.rows);
        self.opened_at = Some(
            self.opened_at
                .map_or(taken.opened_at, |o| o.min(taken.opened_at)),
        );
        self.retry_at = now.saturating_add(self.batching.max_age_ms);
    }

    fn pending(&self, now: u64) -> PendingStats {
        PendingStats {
            deltas: self
                .deltas
                .iter()
                .map(|((shard, table), delta)| RowDelta {
                    shard: shard.clone(),
                    table: table.clone(),
                    delta: *delta,
                })
                .collect(),
            rows: self.rows,
            age_ms: self.opened_at.map(|o| now.saturating_sub(o)),
            batches_sent: self.batches_sent,
        }
    }

    /// Whether there is a batch and no live timer.
    fn timer_needed(&self, now: u64) -> bool {
        self.opened_at.is_some()
            && self
                .timer
                .is_none_or(|(_, until)| now > until.saturating_add(TIMER_GRACE_MS))
    }

    /// Starts the isolate's timer if there is a batch and no live timer: returns its token.
    fn start_timer(&mut self, now: u64) -> Option<u64> {
        if !self.timer_needed(now) {
            return None;
        }
        let due = self.due_at()?;
        self.timers_started += 1;
        self.timer = Some((self.timers_started, due));
        Some(self.timers_started)
    }

    fn timer_step(&mut self, token: u64, now: u64) -> TimerStep {
        if !matches!(self.timer, Some((t, _)) if t == token) {
            return TimerStep::Stop;
        }
        match self.due_at() {
            None => {
                self.timer = None;
                TimerStep::Stop
            }
            Some(due) if due <= now => {
                self.timer = Some((token, now));
                TimerStep::Send
            }
            Some(due) => {
                self.timer = Some((token, due));
                TimerStep::Sleep(due - now)
            }
        }
    }

    fn stop_timer(&mut self, token: u64) {
        if matches!(self.timer, Some((t, _)) if t == token) {
            self.timer = None;
        }
    }
}

/// One shard's statistics as the coordinator keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorShardStats {
    /// The shard (the seed calls it the binding).
    pub binding: String,
    /// Rows over all tables.
    pub count: i64,
    /// Rows per table.
    pub tables: BTreeMap<String, i64>,
    /// Milliseconds since the epoch of the last change.
    pub last_updated: i64,
}

/// The answer of `POST /allocate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The first ticket of the reserved block.
    pub ticket: u64,
    /// How many tickets were reserved.
    pub count: u64,
    /// The registered shard for the first ticket (or key), when shards are registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocateRequest {
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    primary_key: Option<String>,
    #[serde(default)]
    strategy: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ShardBody {
    shard: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StatsBody {
    deltas: Vec<RowDelta>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CountsBody {
    counts: Vec<RowCount>,
}

/// The typed client of the ShardCoordinator.
pub struct CoordinatorClient {
    namespace: ObjectNamespace,
}

fn failed(error: impl std::fmt::Display) -> Error {
    Error::CoordinatorUnavailable(error.to_string())
}

impl CoordinatorClient {
    /// Wraps the coordinator's Durable Object namespace binding.
    pub fn new(namespace: ObjectNamespace) -> Self {
        CoordinatorClient { namespace }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T> {
        let stub = self
            .namespace
            .get_by_name(COORDINATOR_NAME)
            .map_err(failed)?;
        let mut init = RequestInit::new();
        init.with_method(method).with_body(body.map(Into::into));
        let url = format!("https://collegedb-coordinator{path}");
        let request = Request::new_with_init(&url, &init).map_err(failed)?;
        let mut response = stub.fetch_with_request(request).await.map_err(failed)?;
        if response.status_code() != 200 {
            let text = response.text().await.unwrap_or_default();
            return Err(failed(format!(
                "{path}: status {}: {text}",
                response.status_code()
            )));
        }
        response.json().await.map_err(failed)
    }

    /// `GET /shards`.
    pub async fn list_shards(&self) -> Result<Vec<String>> {
        self.call(Method::Get, "/shards", None).await
    }

    /// `POST /shards`.
    pub async fn add_shard(&self, shard: &str) -> Result<()> {
        let body = serde_json::json!({ "shard": shard }).to_string();
        self.call::<serde_json::Value>(Method::Post, "/shards", Some(body))
            .await
            .map(drop)
    }

    /// `DELETE /shards`.
    pub async fn remove_shard(&self, shard: &str) -> Result<()> {
        let body = serde_json::json!({ "shard": shard }).to_string();
        self.call::<serde_json::Value>(Method::Delete, "/shards", Some(body))
            .await
            .map(drop)
    }

    /// `GET /stats`: the coordinator's figures (see the module docs for how stale they may be).
    pub async fn stats(&self) -> Result<Vec<CoordinatorShardStats>> {
        self.call(Method::Get, "/stats", None).await
    }

    /// `PUT /stats`: replaces the figures of every shard named in `counts` (tables not listed
    /// for such a shard are dropped). [`recount_stats`] feeds it from the shards.
    pub async fn set_rows(&self, counts: Vec<RowCount>) -> Result<()> {
        let body = serde_json::to_string(&CountsBody { counts }).map_err(failed)?;
        self.call::<serde_json::Value>(Method::Put, "/stats", Some(body))
            .await
            .map(drop)
    }

    /// Sends this isolate's batch of row-count changes now, if it has one (one `POST /stats`).
    /// Returns how many `(shard, table)` changes were sent. On failure the batch is kept.
    pub async fn flush_stats(&self) -> Result<usize> {
        let Some(taken) = STATS.with(|s| s.borrow_mut().take()) else {
            return Ok(0);
        };
        let deltas: Vec<RowDelta> = taken
            .deltas
            .iter()
            .filter(|(_, delta)| **delta != 0)
            .map(|((shard, table), delta)| RowDelta {
                shard: shard.clone(),
                table: table.clone(),
                delta: *delta,
            })
            .collect();
        if deltas.is_empty() {
            return Ok(0);
        }
        let sent = deltas.len();
        let body = serde_json::to_string(&StatsBody { deltas }).map_err(failed)?;
        match self
            .call::<serde_json::Value>(Method::Post, "/stats", Some(body))
            .await
        {
            Ok(_) => {
                STATS.with(|s| s.borrow_mut().batches_sent += 1);
                Ok(sent)
            }
            Err(error) => {
                STATS.with(|s| s.borrow_mut().restore(taken, now_ms()));
                Err(error)
            }
        }
    }

    /// The isolate's statistics timer: if this isolate has a batch and no running timer, sleeps
    /// until the batch is due, sends it, and goes on while new batches open behind it; otherwise
    /// returns at once (no I/O). Call it from `ctx.wait_until` after every response, so that a
    /// batch is sent [`StatsBatching::max_age_ms`] after its first change even if no request
    /// follows.
    pub async fn flush_stats_when_due(&self) -> Result<()> {
        let Some(token) = STATS.with(|s| s.borrow_mut().start_timer(now_ms())) else {
            return Ok(());
        };
        let result = loop {
            match STATS.with(|s| s.borrow_mut().timer_step(token, now_ms())) {
                TimerStep::Stop => break Ok(()),
                TimerStep::Sleep(ms) => Delay::from(Duration::from_millis(ms)).await,
                TimerStep::Send => {
                    if let Err(error) = self.flush_stats().await {
                        break Err(error);
                    }
                }
            }
        };
        STATS.with(|s| s.borrow_mut().stop_timer(token));
        result
    }

    /// `POST /allocate` for `count` round-robin tickets of `table`.
    pub async fn allocate(&self, table: &str, count: u64) -> Result<Allocation> {
        let body = serde_json::to_string(&AllocateRequest {
            table: Some(table.to_owned()),
            count: Some(count),
            ..AllocateRequest::default()
        })
        .map_err(failed)?;
        self.call(Method::Post, "/allocate", Some(body)).await
    }

    /// `POST /flush` (development only).
    pub async fn flush(&self) -> Result<()> {
        self.call::<serde_json::Value>(Method::Post, "/flush", None)
            .await
            .map(drop)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<serde_json::Value> {
        self.call(Method::Get, "/health", None).await
    }
}

impl Coordinator for CoordinatorClient {
    async fn next_ticket(&self, table: &str) -> Result<u64> {
        let cached = TICKETS.with(|t| {
            let mut tickets = t.borrow_mut();
            match tickets.get_mut(table) {
                Some((next, end)) if *next < *end => {
                    *next += 1;
                    Some(*next - 1)
                }
                _ => None,
            }
        });
        if let Some(ticket) = cached {
            return Ok(ticket);
        }
        let allocation = self.allocate(table, TICKET_BLOCK).await?;
        TICKETS.with(|t| {
            t.borrow_mut().insert(
                table.to_owned(),
                (allocation.ticket + 1, allocation.ticket + allocation.count),
            )
        });
        Ok(allocation.ticket)
    }

    fn tracks_rows(&self) -> bool {
        true
    }

    /// Adds the changes to this isolate's batch. No I/O, unless the batch is now due (it holds
    /// [`StatsBatching::max_rows`] changed rows, or is older than [`StatsBatching::max_age_ms`]):
    /// then the batch is sent by this call.
    async fn record_rows(&self, deltas: Vec<RowDelta>) -> Result<()> {
        let due = STATS.with(|s| {
            let mut batch = s.borrow_mut();
            let now = now_ms();
            batch.add(deltas, now);
            batch.is_due(now)
        });
        if due {
            self.flush_stats().await.map(drop)
        } else {
            Ok(())
        }
    }
}

#[derive(Deserialize)]
struct NameRow {
    name: String,
}

#[derive(Deserialize)]
struct ValueRow {
    value: f64,
}

#[derive(Deserialize)]
struct StatsRow {
    shard: String,
    table_name: String,
    row_count: f64,
    updated_at: f64,
}

fn text(value: &str) -> SqlStorageValue {
    SqlStorageValue::String(value.to_owned())
}

fn success() -> worker::Result<Response> {
    Response::from_json(&serde_json::json!({ "success": true }))
}

/// Serves one coordinator request inside the coordinator's Durable Object. Call it from the
/// class's `fetch` (see [`super::serve_directory`] for the shape).
pub async fn serve_coordinator(
    state: &State,
    env: &Env,
    mut request: Request,
) -> worker::Result<Response> {
    let sql = state.storage().sql();
    sql.exec(
        "CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY NOT NULL, added_at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS stats (
             shard TEXT NOT NULL, table_name TEXT NOT NULL,
             row_count INTEGER NOT NULL, updated_at INTEGER NOT NULL,
             PRIMARY KEY (shard, table_name)
         );",
        None,
    )?;
    let now = worker::Date::now().as_millis() as i64;
    // Registration order (rowid), which hash allocation maps keys onto.
    let registered = || -> worker::Result<Vec<String>> {
        let rows: Vec<NameRow> = sql
            .exec("SELECT name FROM shards ORDER BY rowid", None)?
            .to_array()?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    };
    let path = request.path();
    match (request.method(), path.as_str()) {
        (Method::Get, "/health") => Response::from_json(&serde_json::json!({
            "status": "ok",
            "shards": registered()?.len(),
        })),
        (Method::Get, "/shards") => Response::from_json(&registered()?),
        (Method::Post, "/shards") => {
            let body: ShardBody = request.json().await?;
            sql.exec(
                "INSERT OR IGNORE INTO shards (name, added_at) VALUES (?, ?)",
                vec![text(&body.shard), SqlStorageValue::Integer(now)],
            )?;
            success()
        }
        (Method::Delete, "/shards") => {
            let body: ShardBody = request.json().await?;
            sql.exec("DELETE FROM shards WHERE name = ?", vec![text(&body.shard)])?;
            success()
        }
        (Method::Get, "/stats") => {
            let rows: Vec<StatsRow> = sql
                .exec(
                    "SELECT shard, table_name, row_count, updated_at FROM stats ORDER BY shard, table_name",
                    None,
                )?
                .to_array()?;
            let mut by_shard: BTreeMap<String, CoordinatorShardStats> = BTreeMap::new();
            for name in registered()? {
                by_shard.insert(
                    name.clone(),
                    CoordinatorShardStats {
                        binding: name,
                        count: 0,
                        tables: BTreeMap::new(),
                        last_updated: 0,
                    },
                );
            }
            for row in rows {
                let entry =
                    by_shard
                        .entry(row.shard.clone())
                        .or_insert_with(|| CoordinatorShardStats {
                            binding: row.shard.clone(),
                            count: 0,
                            tables: BTreeMap::new(),
                            last_updated: 0,
                        });
                entry.count += row.row_count as i64;
                entry.tables.insert(row.table_name, row.row_count as i64);
                entry.last_updated = entry.last_updated.max(row.updated_at as i64);
            }
            Response::from_json(&by_shard.into_values().collect::<Vec<_>>())
        }
        (Method::Post, "/stats") => {
            let body: StatsBody = request.json().await?;
            for delta in body.deltas {
                sql.exec(
                    "INSERT INTO stats (shard, table_name, row_count, updated_at) VALUES (?, ?, ?, ?)
                     ON CONFLICT (shard, table_name)
                     DO UPDATE SET row_count = row_count + excluded.row_count, updated_at = excluded.updated_at",
                    vec![
                        text(&delta.shard),
                        text(&delta.table),
                        SqlStorageValue::Integer(delta.delta),
                        SqlStorageValue::Integer(now),
                    ],
                )?;
            }
            success()
        }
        (Method::Put, "/stats") => {
            let body: CountsBody = request.json().await?;
            // No await between these statements: the object applies them as one unit.
            let shards: BTreeSet<&str> = body.counts.iter().map(|c| c.shard.as_str()).collect();
            for shard in shards {
                sql.exec("DELETE FROM stats WHERE shard = ?", vec![text(shard)])?;
            }
            for count in &body.counts {
                sql.exec(
                    "INSERT INTO stats (shard, table_name, row_count, updated_at) VALUES (?, ?, ?, ?)",
                    vec![
                        text(&count.shard),
                        text(&count.table),
                        SqlStorageValue::Integer(count.rows as i64),
                        SqlStorageValue::Integer(now),
                    ],
                )?;
            }
            success()
        }
        (Method::Post, "/allocate") => {
            let body: AllocateRequest = request.json().await.unwrap_or_default();
            let shards = registered()?;
            if let (Some(key), Some("hash")) = (&body.primary_key, body.strategy.as_deref()) {
                let shard = (!shards.is_empty()).then(|| {
                    let key = Key::Text(key.clone());
                    shards[jump_consistent_hash(key.placement_hash(), shards.len() as u32) as usize]
                        .clone()
                });
                return Response::from_json(&Allocation {
                    ticket: 0,
                    count: 0,
                    shard,
                });
            }
            if body.strategy.as_deref() == Some("random") {
                let ticket = fastrand::u64(..);
                let shard = (!shards.is_empty())
                    .then(|| shards[(ticket % shards.len() as u64) as usize].clone());
                return Response::from_json(&Allocation {
                    ticket,
                    count: 1,
                    shard,
                });
            }
            let table = body.table.unwrap_or_else(|| "default".to_owned());
            let count = body.count.unwrap_or(1).clamp(1, 1024);
            let rows: Vec<ValueRow> = sql
                .exec(
                    "INSERT INTO counters (name, value) VALUES (?, ?)
                     ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
                     RETURNING value",
                    vec![text(&table), SqlStorageValue::Integer(count as i64)],
                )?
                .to_array()?;
            let end = rows.first().map_or(count, |r| r.value as u64);
            let ticket = end - count;
            let shard = (!shards.is_empty())
                .then(|| shards[(ticket % shards.len() as u64) as usize].clone());
            Response::from_json(&Allocation {
                ticket,
                count,
                shard,
            })
        }
        (Method::Post, "/flush") => {
            let allowed = env
                .var("COLLEGEDB_ALLOW_FLUSH")
                .map(|v| v.to_string() == "true")
                .unwrap_or(false);
            if !allowed {
                return Response::error(
                    "flush is disabled: set the COLLEGEDB_ALLOW_FLUSH var to \"true\" in development only",
                    403,
                );
            }
            sql.exec(
                "DELETE FROM counters; DELETE FROM stats; DELETE FROM shards;",
                None,
            )?;
            success()
        }
        _ => Response::error(format!("no route for {:?} {path}", request.method()), 404),
    }
}
