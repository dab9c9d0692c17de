//! Row-count statistics, batched per isolate before they reach the coordinator.
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
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Cloudflare;
use crate::backend::RowDelta;
use crate::error::Result;
use crate::router::CollegeDb;

/// A timer whose deadline passed this long ago is taken for cancelled, and the next request
/// starts another (two timers at once are harmless: a batch is taken by one send only).
const TIMER_GRACE_MS: u64 = 5_000;

thread_local! {
    /// Per isolate: the row-count changes not yet sent to the coordinator.
    pub(super) static STATS: RefCell<StatsBatch> = RefCell::new(StatsBatch::default());
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

pub(super) fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// A batch taken out of [`StatsBatch`] to be sent.
pub(super) struct TakenBatch {
    pub(super) deltas: BTreeMap<(String, String), i64>,
    rows: u64,
    opened_at: u64,
}

pub(super) enum TimerStep {
    Stop,
    Sleep(u64),
    Send,
}

#[derive(Default)]
pub(super) struct StatsBatch {
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
    pub(super) batches_sent: u64,
}

impl StatsBatch {
    pub(super) fn add(&mut self, deltas: Vec<RowDelta>, now: u64) {
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
    pub(super) fn due_at(&self) -> Option<u64> {
        let opened = self.opened_at?;
        let due = if self.rows >= self.batching.max_rows {
            opened
        } else {
            opened.saturating_add(self.batching.max_age_ms)
        };
        Some(due.max(self.retry_at))
    }

    pub(super) fn is_due(&self, now: u64) -> bool {
        self.due_at().is_some_and(|due| due <= now)
    }

    pub(super) fn take(&mut self) -> Option<TakenBatch> {
        let opened_at = self.opened_at.take()?;
        Some(TakenBatch {
            deltas: std::mem::take(&mut self.deltas),
            rows: std::mem::take(&mut self.rows),
            opened_at,
        })
    }

    /// Puts back a batch whose send failed, and holds automatic sends back for an interval.
    pub(super) fn restore(&mut self, taken: TakenBatch, now: u64) {
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

    pub(super) fn pending(&self, now: u64) -> PendingStats {
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
    pub(super) fn timer_needed(&self, now: u64) -> bool {
        self.opened_at.is_some()
            && self
                .timer
                .is_none_or(|(_, until)| now > until.saturating_add(TIMER_GRACE_MS))
    }

    /// Starts the isolate's timer if there is a batch and no live timer: returns its token.
    pub(super) fn start_timer(&mut self, now: u64) -> Option<u64> {
        if !self.timer_needed(now) {
            return None;
        }
        let due = self.due_at()?;
        self.timers_started += 1;
        self.timer = Some((self.timers_started, due));
        Some(self.timers_started)
    }

    pub(super) fn timer_step(&mut self, token: u64, now: u64) -> TimerStep {
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

    pub(super) fn stop_timer(&mut self, token: u64) {
        if matches!(self.timer, Some((t, _)) if t == token) {
            self.timer = None;
        }
    }
}
