//! Per-shard counters and latency histograms of the calls the router sends to shards, and a
//! `tracing` span around each of them.
//!
//! Every statement the router sends to a shard on behalf of a routed operation (the typed CRUD
//! calls, bulk writes, scans, typed queries and raw routed SQL) is counted against that shard:
//! calls, rows returned or changed, errors by [stable code](crate::Error::code), and its latency
//! in a fixed log-scale histogram. Recording costs two clock reads and a few relaxed atomic
//! additions; errors, which are rare, take a lock. A shard's refusal of a statement routed by an
//! old shard map (see [`crate::fence`]) is a re-route, not an error. Administrative work (growth moves,
//! migrations, statistics, health probes) is not counted.
//!
//! [`CollegeDb::metrics`] returns a [`MetricsSnapshot`] (serde, for JSON endpoints). The counters
//! live as long as the handle and its clones: natively, one process; on Workers, one isolate
//! (`backend::cloudflare::open` shares them across the requests an isolate serves, so they are
//! per isolate, not per deployment).
//!
//! Each call also runs inside a `collegedb.shard` span at `DEBUG` level with the fields `shard`,
//! `op` (`query`, `execute` or `batch`), and, when it ends, `rows`, `latency_us` and `error` (its
//! code). Without a `tracing` subscriber the span costs a check of a static flag.
//!
//! On `wasm32`, latencies come from `Date.now()`: whole milliseconds, and in Workers the clock
//! only advances across I/O, which is what a shard call is.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::backend::{Backend, Row};
use crate::error::{Error, Result};
use crate::router::CollegeDb;

/// Histogram buckets: bucket `i` counts latencies below `2^i` microseconds (and at least
/// `2^(i-1)`); the last one counts everything longer, from about 67 s.
pub const LATENCY_BUCKETS: usize = 27;

/// What kind of statement a shard call ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Query,
    Execute,
    Batch,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Query => "query",
            Op::Execute => "execute",
            Op::Batch => "batch",
        }
    }
}

/// Results whose rows a call counts: rows returned, or rows changed.
pub(crate) trait Counted {
    fn rows(&self) -> u64;
}

impl Counted for Vec<Row> {
    fn rows(&self) -> u64 {
        self.len() as u64
    }
}

impl Counted for u64 {
    fn rows(&self) -> u64 {
        *self
    }
}

impl Counted for Vec<u64> {
    fn rows(&self) -> u64 {
        self.iter().sum()
    }
}

impl<T: Counted, E> Counted for std::result::Result<T, E> {
    fn rows(&self) -> u64 {
        self.as_ref().map_or(0, Counted::rows)
    }
}

/// The counters of every shard of a handle (and its clones).
#[derive(Debug)]
pub struct Metrics {
    shards: Vec<ShardMetrics>,
    since_ms: u64,
}

#[derive(Debug)]
struct ShardMetrics {
    name: String,
    rows: AtomicU64,
    total_us: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS],
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Empty counters for these shards, in configuration order.
    pub fn new<S: Into<String>>(shards: impl IntoIterator<Item = S>) -> Self {
        Metrics {
            shards: shards
                .into_iter()
                .map(|name| ShardMetrics {
                    name: name.into(),
                    rows: AtomicU64::new(0),
                    total_us: AtomicU64::new(0),
                    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                    errors: Mutex::new(BTreeMap::new()),
                })
                .collect(),
            since_ms: crate::growth::now_ms(),
        }
    }

    /// The shard names these counters are for, in order.
    pub fn shard_names(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.name.as_str())
    }

    #[inline]
    fn record(&self, shard: usize, micros: u64, rows: u64, error: Option<&'static str>) {
        let Some(m) = self.shards.get(shard) else {
            return;
        };
        m.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        m.total_us.fetch_add(micros, Ordering::Relaxed);
        if rows > 0 {
            m.rows.fetch_add(rows, Ordering::Relaxed);
        }
        if let Some(code) = error {
            *m.errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(code)
                .or_default() += 1;
        }
    }

    /// A copy of every counter as of now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            since_ms: self.since_ms,
            taken_ms: crate::growth::now_ms(),
            shards: self
                .shards
                .iter()
                .map(|m| {
                    let buckets: Vec<u64> = m
                        .buckets
                        .iter()
                        .map(|b| b.load(Ordering::Relaxed))
                        .collect();
                    let errors_by_code: BTreeMap<String, u64> = m
                        .errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .map(|(code, n)| ((*code).to_owned(), *n))
                        .collect();
                    ShardMetricsSnapshot {
                        shard: m.name.clone(),
                        calls: buckets.iter().sum(),
                        errors: errors_by_code.values().sum(),
                        errors_by_code,
                        rows: m.rows.load(Ordering::Relaxed),
                        latency: Latency {
                            total_us: m.total_us.load(Ordering::Relaxed),
                            buckets,
                        },
                    }
                })
                .collect(),
        }
    }
}

/// The code a failed call is counted under: the error's own, except that a unique-key violation
/// counts as `DUPLICATE_KEY`, as the typed layer reports it, not as a failed query.
fn code_of(error: &Error) -> &'static str {
    match error {
        Error::QueryFailed { message, .. } if message.contains("UNIQUE constraint failed") => {
            "DUPLICATE_KEY"
        }
        other => other.code(),
    }
}

/// The histogram bucket of a latency in microseconds.
#[inline]
fn bucket_of(micros: u64) -> usize {
    ((u64::BITS - micros.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound, in microseconds, of histogram bucket `index` (`None`: the last, unbounded).
pub fn bucket_upper_us(index: usize) -> Option<u64> {
    (index < LATENCY_BUCKETS - 1).then(|| 1u64 << index)
}

/// Every shard's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// When counting started (the handle was built), in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// When this snapshot was taken.
    pub taken_ms: u64,
    /// One entry per configured shard, in configuration order.
    pub shards: Vec<ShardMetricsSnapshot>,
}

impl MetricsSnapshot {
    /// The counters of one shard, by name.
    pub fn shard(&self, name: &str) -> Option<&ShardMetricsSnapshot> {
        self.shards.iter().find(|s| s.shard == name)
    }
}

/// One shard's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMetricsSnapshot {
    /// The shard's name.
    pub shard: String,
    /// Statements sent (each statement of a retry counts).
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Failed calls by error code (`QUERY_FAILED`, `SHARD_BUSY`, ...).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Rows returned by queries plus rows changed by writes.
    pub rows: u64,
    /// The calls' latencies.
    pub latency: Latency,
}

impl ShardMetricsSnapshot {
    /// Failed calls per call (0 without calls).
    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

/// A latency histogram with fixed log-scale buckets (see [`LATENCY_BUCKETS`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// The sum of every call's latency, in microseconds.
    pub total_us: u64,
    /// Calls per bucket: bucket `i` holds latencies below `2^i` microseconds (see
    /// [`bucket_upper_us`]).
    pub buckets: Vec<u64>,
}

impl Latency {
    /// The mean latency in microseconds (`None` without calls).
    pub fn mean_us(&self) -> Option<f64> {
        let calls: u64 = self.buckets.iter().sum();
        (calls > 0).then(|| self.total_us as f64 / calls as f64)
    }

    /// An upper bound of the `q` quantile (0 to 1) in microseconds: the bound of the bucket it
    /// falls in (the last bucket reports its lower bound). `None` without calls.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let calls: u64 = self.buckets.iter().sum();
        if calls == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * calls as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_us(index).unwrap_or(1 << (LATENCY_BUCKETS - 2)));
            }
        }
        None
    }
}

/// A point in time for measuring a call's latency.
#[derive(Clone, Copy)]
pub(crate) struct Stamp {
    #[cfg(not(target_arch = "wasm32"))]
    at: std::time::Instant,
    #[cfg(target_arch = "wasm32")]
    at_ms: u64,
}

impl Stamp {
    #[inline]
    pub(crate) fn now() -> Self {
        Stamp {
            #[cfg(not(target_arch = "wasm32"))]
            at: std::time::Instant::now(),
            #[cfg(target_arch = "wasm32")]
            at_ms: crate::growth::now_ms(),
        }
    }

    #[inline]
    pub(crate) fn elapsed_us(self) -> u64 {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.at.elapsed().as_micros() as u64
        }
        #[cfg(target_arch = "wasm32")]
        {
            crate::growth::now_ms().saturating_sub(self.at_ms) * 1000
        }
    }
}

impl<B: Backend> CollegeDb<B> {
    /// The per-shard counters of the calls this handle (and its clones) routed to shards.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b"]), dir.path())?;
    /// db.all_shard("a", "SELECT 1", &[]).await?;
    /// assert!(db.all_shard("b", "SELECT nonsense", &[]).await.is_err());
    /// let metrics = db.metrics();
    /// let (a, b) = (metrics.shard("a").unwrap(), metrics.shard("b").unwrap());
    /// assert_eq!((a.calls, a.rows, a.errors), (1, 1, 0));
    /// assert_eq!((b.calls, b.errors), (1, 1));
    /// assert_eq!(b.errors_by_code["QUERY_FAILED"], 1);
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics_registry().snapshot()
    }

    /// Runs `call`, a statement on shard `index`, inside a `collegedb.shard` span, and counts it.
    #[inline]
    pub(crate) async fn metered<T: Counted>(
        &self,
        index: usize,
        op: Op,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let span = tracing::debug_span!(
            "collegedb.shard",
            shard = self.shard_name(index),
            op = op.name(),
            rows = tracing::field::Empty,
            latency_us = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let started = Stamp::now();
        let result = call.instrument(span.clone()).await;
        let micros = started.elapsed_us();
        let rows = result.rows();
        let code = match &result {
            Err(error) if !crate::fence::reroutes(error) => Some(code_of(error)),
            _ => None,
        };
        self.metrics_registry().record(index, micros, rows, code);
        if !span.is_disabled() {
            span.record("rows", rows);
            span.record("latency_us", micros);
            if let Some(code) = code {
                span.record("error", code);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 3);
        assert_eq!(bucket_of(1023), 10);
        assert_eq!(bucket_of(1024), 11);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        // Each latency is below its bucket's bound and at least the previous bound.
        for micros in [1u64, 5, 99, 4096, 1_000_000] {
            let b = bucket_of(micros);
            assert!(micros < bucket_upper_us(b).unwrap());
            assert!(micros >= bucket_upper_us(b - 1).unwrap());
        }
    }

    #[test]
    fn snapshot_counts_calls_rows_errors_and_quantiles() {
        let metrics = Metrics::new(["a", "b"]);
        for _ in 0..90 {
            metrics.record(0, 10, 1, None);
        }
        for _ in 0..10 {
            metrics.record(0, 5000, 0, Some("SHARD_BUSY"));
        }
        metrics.record(7, 1, 1, None); // out of range: ignored
        let snapshot = metrics.snapshot();
        let a = snapshot.shard("a").unwrap();
        assert_eq!((a.calls, a.rows, a.errors), (100, 90, 10));
        assert_eq!(a.errors_by_code["SHARD_BUSY"], 10);
        assert!((a.error_rate() - 0.1).abs() < 1e-9);
        assert_eq!(a.latency.quantile_us(0.5), Some(16));
        assert_eq!(a.latency.quantile_us(0.99), Some(8192));
        assert_eq!(a.latency.mean_us(), Some(509.0));
        let b = snapshot.shard("b").unwrap();
        assert_eq!((b.calls, b.latency.quantile_us(0.5)), (0, None));
        assert_eq!(b.error_rate(), 0.0);
    }
}
