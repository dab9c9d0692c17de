//! The dashboard: what it shows ([`DashboardData`], gathered by [`collect`]) and the page that
//! shows it ([`render_page`]).
//!
//! The page is one self-contained HTML document (inline CSS and JavaScript, no external
//! assets). It carries the data it was rendered with, and polls a JSON endpoint (the same
//! [`DashboardData`], serialized) every two seconds, so it follows writes as they happen. It
//! shows every configured shard with its rows, bytes and fill against D1's 10 GB
//! ([`D1_MAX_BYTES`]), its health probe and its routed calls (error rate, latency); the directory
//! and the coordinator; the growth operation in progress and the last one; each shard's schema
//! migration version; blocks; and errors by code.
//!
//! Every string reaches the page as text (the script sets `textContent`, never HTML, and the
//! embedded JSON has `<`, `>` and `&` escaped), so hostile table or shard names show as they are.
//!
//! Where it is served: `collegedb dashboard <folder>` natively, and the Worker example's
//! `/admin/dashboard`. Its metrics are those of the serving process (natively) or isolate (on
//! Workers): see [`crate::metrics`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ShardConn};
use crate::directory::Directory;
use crate::error::Result;
use crate::growth::Job;
use crate::health::Health;
use crate::metrics::MetricsSnapshot;
use crate::router::CollegeDb;
use crate::value::Value;

/// D1's size limit per database: 10 GB, which cannot be raised.
pub const D1_MAX_BYTES: u64 = 10_000_000_000;

/// How long [`collect`] waits for each part (health probes, one shard's counts, the directory,
/// the growth journal, the migration records) before reporting it as not answering.
pub const PART_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the dashboard shows, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardData {
    /// The page's title.
    pub title: String,
    /// When this was gathered, in milliseconds since the Unix epoch.
    pub generated_ms: u64,
    /// Whose calls the metrics count, such as "this process" or "this Worker isolate".
    pub metrics_scope: String,
    /// The version of the shard map in use.
    pub map_version: u64,
    /// Every configured shard, in configuration order.
    pub shards: Vec<ShardPanel>,
    /// Directory entries (keys placed off their hash shard, or moved), or why not known.
    pub directory_entries: std::result::Result<u64, String>,
    /// The probes of every shard, the directory and the coordinator.
    pub health: Health,
    /// Moves: the growth operation in progress and the last one finished.
    pub moves: Moves,
    /// Each shard's schema migration version.
    pub migrations: Migrations,
    /// Blocks (local write-buffer databases in front of shards) and their sync lag.
    pub blocks: Blocks,
    /// Routed calls per shard.
    pub metrics: MetricsSnapshot,
}

/// One shard on the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPanel {
    /// The shard's name.
    pub name: String,
    /// Slots it owns in the shard map; 0 for a standby or drained shard.
    pub slots: usize,
    /// Rows per user table, counted on the shard.
    pub tables: BTreeMap<String, u64>,
    /// Rows over its user tables.
    pub rows: u64,
    /// The database's size in bytes.
    pub size_bytes: u64,
    /// `size_bytes` against [`D1_MAX_BYTES`], from 0 to 1.
    pub fill: f64,
    /// Why the counts are missing, if they are.
    pub error: Option<String>,
}

/// A growth operation, summarized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveSummary {
    /// `add-shard s`, `drain-shard s` or `reassign table key shard`.
    pub operation: String,
    /// The current transfer's phase (`done` when finished).
    pub phase: String,
    /// The current transfer, counted from 1, and how many there are.
    pub transfer: (usize, usize),
    /// Rows copied so far.
    pub rows_copied: u64,
    /// Rows deleted from giving shards so far.
    pub rows_deleted: u64,
    /// Rows estimated to move.
    pub rows_estimated: u64,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it finished, if it did.
    pub finished_ms: Option<u64>,
    /// Seconds left, if known.
    pub eta_seconds: Option<f64>,
}

impl MoveSummary {
    fn of(job: &Job, now_ms: u64) -> Self {
        use crate::growth::Operation;
        let operation = match &job.operation {
            Operation::AddShard { shard } => format!("add-shard {shard}"),
            Operation::DrainShard { shard } => format!("drain-shard {shard}"),
            Operation::Reassign { table, key, shard } => format!("reassign {table} {key} {shard}"),
        };
        let phase = job.transfers.get(job.current).map_or_else(
            || "done".to_owned(),
            |t| {
                serde_json::to_value(t.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            },
        );
        MoveSummary {
            operation,
            phase,
            transfer: (
                (job.current + 1).min(job.transfers.len()),
                job.transfers.len(),
            ),
            rows_copied: job.rows_copied(),
            rows_deleted: job.rows_deleted(),
            rows_estimated: job.rows_estimated(),
            started_ms: job.started_ms,
            finished_ms: job.finished_ms,
            eta_seconds: job.eta_seconds(now_ms),
        }
    }
}

/// Moves in flight and the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moves {
    /// The operation in progress.
    pub running: Option<MoveSummary>,
    /// The last operation finished.
    pub last: Option<MoveSummary>,
    /// Why the journal could not be read, if it could not.
    pub error: Option<String>,
}

/// Schema migrations per shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migrations {
    /// `(shard, highest version applied)`, in configuration order.
    pub versions: Vec<(String, Option<u32>)>,
    /// Whether the shards stand at different versions (a migration run in flight, or stopped).
    pub in_flight: bool,
    /// Why the records could not be read, if they could not.
    pub error: Option<String>,
}

/// Blocks and their sync lag. This version of collegedb has no blocks, so there is no lag to
/// show; the panel says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocks {
    /// How many blocks exist.
    pub count: u64,
    /// What the panel says.
    pub note: String,
}

/// Gathers the dashboard's data. Every part is bounded by [`PART_TIMEOUT`] and reported on its
/// own, so one shard that does not answer leaves the rest of the page intact.
pub async fn collect<B: Backend>(
    db: &CollegeDb<B>,
    title: &str,
    metrics_scope: &str,
) -> DashboardData {
    let health = db.health_within(PART_TIMEOUT).await;
    let map = db.shard_map();
    let counts = futures_util::future::join_all(
        db.shards()
            .into_iter()
            .map(|shard| crate::health::within(PART_TIMEOUT, shard_counts(shard))),
    )
    .await;
    let shards = counts
        .into_iter()
        .enumerate()
        .map(|(index, counted)| {
            let name = db.shard_name(index).to_owned();
            let (tables, size_bytes, error) = match flatten(counted) {
                Ok((tables, size)) => (tables, size, None),
                Err(why) => (BTreeMap::new(), 0, Some(why)),
            };
            ShardPanel {
                slots: map.slots_of(&name).len(),
                rows: tables.values().sum(),
                fill: size_bytes as f64 / D1_MAX_BYTES as f64,
                name,
                tables,
                size_bytes,
                error,
            }
        })
        .collect();
    let directory_entries =
        flatten(crate::health::within(PART_TIMEOUT, db.directory().count()).await);
    let now = crate::growth::now_ms();
    let moves = match flatten(crate::health::within(PART_TIMEOUT, db.growth_status()).await) {
        Ok(status) => Moves {
            running: status.running.as_ref().map(|job| MoveSummary::of(job, now)),
            last: status.last.as_ref().map(|job| MoveSummary::of(job, now)),
            error: None,
        },
        Err(why) => Moves {
            running: None,
            last: None,
            error: Some(why),
        },
    };
    let migrations = match flatten(crate::health::within(PART_TIMEOUT, db.migration_status()).await)
    {
        Ok(status) => {
            let versions = status.versions();
            let in_flight = versions.windows(2).any(|w| w[0].1 != w[1].1);
            Migrations {
                versions,
                in_flight,
                error: None,
            }
        }
        Err(why) => Migrations {
            versions: Vec::new(),
            in_flight: false,
            error: Some(why),
        },
    };
    DashboardData {
        title: title.to_owned(),
        generated_ms: now,
        metrics_scope: metrics_scope.to_owned(),
        map_version: map.version(),
        shards,
        directory_entries,
        health,
        moves,
        migrations,
        blocks: Blocks {
            count: 0,
            note:
                "no blocks: this deployment writes to its shards directly, so there is no sync lag"
                    .to_owned(),
        },
        metrics: db.metrics(),
    }
}

/// A bounded part's outcome as a value or the reason it is missing.
fn flatten<T>(outcome: Option<Result<T>>) -> std::result::Result<T, String> {
    match outcome {
        Some(Ok(value)) => Ok(value),
        Some(Err(error)) => Err(format!("{} ({})", error, error.code())),
        None => Err(format!("no answer within {} ms", PART_TIMEOUT.as_millis())),
    }
}

/// Rows per user table and the size of one shard.
async fn shard_counts<S: ShardConn>(shard: &S) -> Result<(BTreeMap<String, u64>, u64)> {
    let mut tables = BTreeMap::new();
    for table in crate::raw::user_tables(shard).await? {
        let sql = format!("SELECT COUNT(*) FROM {}", crate::raw::quote_ident(&table));
        let rows = shard.query_raw(&sql, &[]).await?;
        let count = match rows.first().and_then(|r| r.values().first()) {
            Some(Value::Integer(n)) => *n as u64,
            _ => 0,
        };
        tables.insert(table, count);
    }
    Ok((tables, shard.size_bytes().await?))
}

/// The dashboard page, showing `data` at once and then polling `json_url` (a path such as
/// `/admin/dashboard.json`, answering [`DashboardData`] as JSON) every two seconds.
///
/// ```
/// use collegedb::{dashboard, CollegeDb, Config};
/// # let dir = tempfile::tempdir().unwrap();
/// # pollster::block_on(async {
/// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b"]), dir.path())?;
/// let data = dashboard::collect(&db, "orders <prod>", "this process").await;
/// let page = dashboard::render_page(&data, "/dashboard.json");
/// assert!(page.starts_with("<!DOCTYPE html>"));
/// assert!(page.contains("<title>orders &lt;prod&gt; · collegedb</title>"));
/// assert!(!page.contains("<prod>"));
/// # Ok::<(), collegedb::Error>(()) }).unwrap();
/// ```
pub fn render_page(data: &DashboardData, json_url: &str) -> String {
    let values = [
        ("{{TITLE}}", escape_html(&data.title)),
        ("{{DATA}}", script_json(data)),
        ("{{URL}}", script_json(json_url)),
        ("{{D1_MAX_BYTES}}", D1_MAX_BYTES.to_string()),
    ];
    // One pass over the template, so nothing inserted is searched for markers again.
    let mut page = String::with_capacity(TEMPLATE.len() + values[1].1.len());
    let mut rest = TEMPLATE;
    while let Some(at) = rest.find("{{") {
        page.push_str(&rest[..at]);
        rest = &rest[at..];
        match values.iter().find(|(marker, _)| rest.starts_with(marker)) {
            Some((marker, value)) => {
                page.push_str(value);
                rest = &rest[marker.len()..];
            }
            None => {
                page.push_str("{{");
                rest = &rest[2..];
            }
        }
    }
    page.push_str(rest);
    page
}

const TEMPLATE: &str = include_str!("page.html");

/// `text` with HTML's special characters escaped, for text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` as JSON that is safe inside a `<script>` element: `<`, `>` and `&` (which JSON only
/// has inside strings) become `\u` escapes, so no string can close the element.
fn script_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".to_owned())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_cannot_leave_their_element() {
        let hostile = "</script><script>alert(1)</script>&amp;\u{2028}";
        let json = script_json(&hostile);
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), hostile);
        assert_eq!(
            escape_html("<b a=\"x\">'&'</b>"),
            "&lt;b a=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;"
        );
    }
}
