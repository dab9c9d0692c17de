//! Health: a real probe of every shard, the directory and the coordinator, each bounded in time.
//!
//! [`CollegeDb::health`] runs every probe at once and waits at most [`DEFAULT_HEALTH_TIMEOUT`]
//! ([`CollegeDb::health_within`] takes another bound); a probe that has not answered by then is
//! reported unhealthy with the code `TIMEOUT`, and the call returns on time. The probes:
//!
//! | component | probe |
//! | --- | --- |
//! | each configured shard (standby ones too) | `SELECT COUNT(*) FROM sqlite_master`, which reads the database's first page; natively on the blocking pool, so a shard stuck on a lock cannot hold the caller |
//! | the directory | a lookup of a key in a table no model can have: a read that never writes |
//! | the coordinator | [`Coordinator::probe`]: the Cloudflare coordinator's `GET /health`; the embedded one reads the stored shard map |
//!
//! The result is serializable, for JSON endpoints such as the Worker example's `/admin/health`.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Coordinator, ShardConn};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::router::CollegeDb;

/// How long [`CollegeDb::health`] waits for a probe.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The code of a probe that did not answer in time.
pub const TIMEOUT_CODE: &str = "TIMEOUT";

/// The directory table the probe looks a key up in: reserved for collegedb (models cannot name
/// tables with a leading `_collegedb_`), so it never holds entries.
const PROBE_TABLE: &str = "_collegedb_health";

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    /// A shard database.
    Shard,
    /// The key-to-shard directory.
    Directory,
    /// The coordinator (round-robin tickets, shard map, growth journal).
    Coordinator,
}

/// The outcome of one component's probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentHealth {
    /// What was probed.
    pub kind: ComponentKind,
    /// The shard's name, or `directory`, or `coordinator`.
    pub name: String,
    /// Whether the probe answered, without error, in time.
    pub ok: bool,
    /// How long the probe took, in microseconds (the time bound if it did not answer).
    pub latency_us: u64,
    /// The error, if any.
    pub error: Option<String>,
    /// The error's stable code ([`Error::code`]), or [`TIMEOUT_CODE`].
    pub code: Option<String>,
}

/// Every component's health at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Whether every component is healthy.
    pub ok: bool,
    /// When the probes started, in milliseconds since the Unix epoch.
    pub checked_ms: u64,
    /// The time bound of each probe, in milliseconds.
    pub timeout_ms: u64,
    /// The shards in configuration order, then the directory, then the coordinator.
    pub components: Vec<ComponentHealth>,
}

impl Health {
    /// The component of `kind` named `name`.
    pub fn component(&self, kind: ComponentKind, name: &str) -> Option<&ComponentHealth> {
        self.components
            .iter()
            .find(|c| c.kind == kind && c.name == name)
    }

    /// The components that are not healthy.
    pub fn failing(&self) -> impl Iterator<Item = &ComponentHealth> {
        self.components.iter().filter(|c| !c.ok)
    }
}

impl std::fmt::Display for Health {
    /// One line per component: `ok   shard a   0.3 ms` or `FAIL directory 2000.0 ms TIMEOUT: ...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.components {
            let kind = match c.kind {
                ComponentKind::Shard => "shard",
                ComponentKind::Directory | ComponentKind::Coordinator => "",
            };
            let label = if kind.is_empty() {
                c.name.clone()
            } else {
                format!("{kind} {}", c.name)
            };
            write!(
                f,
                "{:<4} {label:<28} {:>9.1} ms",
                if c.ok { "ok" } else { "FAIL" },
                c.latency_us as f64 / 1000.0
            )?;
            if let (Some(code), Some(error)) = (&c.code, &c.error) {
                write!(f, "  {code}: {error}")?;
            }
            writeln!(f)?;
        }
        write!(f, "{}", if self.ok { "healthy" } else { "UNHEALTHY" })
    }
}

/// One probe's answer: its latency and outcome.
type Answer = (u64, Result<()>);

impl<B: Backend> CollegeDb<B> {
    /// Probes every shard, the directory and the coordinator at once, each bounded by
    /// [`DEFAULT_HEALTH_TIMEOUT`]. See the [module docs](crate::health).
    ///
    /// ```
    /// use collegedb::{CollegeDb, ComponentKind, Config};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b"]), dir.path())?;
    /// let health = db.health().await;
    /// assert!(health.ok);
    /// assert_eq!(health.components.len(), 4); // a, b, the directory, the coordinator
    /// assert!(health.component(ComponentKind::Shard, "b").unwrap().ok);
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub async fn health(&self) -> Health {
        self.health_within(DEFAULT_HEALTH_TIMEOUT).await
    }

    /// [`CollegeDb::health`] with another time bound per probe.
    pub async fn health_within(&self, limit: Duration) -> Health {
        let checked_ms = crate::growth::now_ms();
        let shards = self.shards().len();
        // Each probe leaves its answer here as soon as it has one, so the ones that answered
        // are reported even when others are still running at the deadline.
        let answers: Mutex<Vec<Option<Answer>>> =
            Mutex::new((0..shards + 2).map(|_| None).collect());
        let answers_ref = &answers;
        let probes = (0..shards + 2).map(|index| async move {
            let started = crate::metrics::Stamp::now();
            let outcome = self.probe(index).await;
            let micros = started.elapsed_us();
            answers_ref.lock().unwrap_or_else(|p| p.into_inner())[index] = Some((micros, outcome));
        });
        within(limit, futures_util::future::join_all(probes)).await;
        let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|p| p.into_inner()));
        let limit_us = limit.as_micros() as u64;
        let components: Vec<ComponentHealth> = answers
            .into_iter()
            .enumerate()
            .map(|(index, answer)| {
                let (kind, name) = match index {
                    i if i < shards => (ComponentKind::Shard, self.shard_name(i).to_owned()),
                    i if i == shards => (ComponentKind::Directory, "directory".to_owned()),
                    _ => (ComponentKind::Coordinator, "coordinator".to_owned()),
                };
                let (latency_us, error, code) = match answer {
                    Some((micros, Ok(()))) => (micros, None, None),
                    Some((micros, Err(error))) => (
                        micros,
                        Some(error.to_string()),
                        Some(error.code().to_owned()),
                    ),
                    None => (
                        limit_us,
                        Some(format!("no answer within {} ms", limit.as_millis())),
                        Some(TIMEOUT_CODE.to_owned()),
                    ),
                };
                ComponentHealth {
                    kind,
                    name,
                    ok: error.is_none(),
                    latency_us,
                    error,
                    code,
                }
            })
            .collect();
        Health {
            ok: components.iter().all(|c| c.ok),
            checked_ms,
            timeout_ms: limit.as_millis() as u64,
            components,
        }
    }

    /// Probe `index`: a shard below the shard count, then the directory, then the coordinator.
    async fn probe(&self, index: usize) -> Result<()> {
        let shards = self.shards().len();
        if index < shards {
            let rows = self
                .shard(index)
                .query_raw("SELECT COUNT(*) FROM sqlite_master", &[])
                .await?;
            return match rows.first().and_then(|row| row.values().first()) {
                Some(_) => Ok(()),
                None => Err(Error::QueryFailed {
                    shard: self.shard_name(index).to_owned(),
                    message: "the health probe returned no row".into(),
                }),
            };
        }
        if index == shards {
            let key = Key::text("probe")?;
            return self.directory().lookup(PROBE_TABLE, &key).await.map(drop);
        }
        self.coordinator().probe().await
    }
}

/// `work`'s output, or `None` if it has not finished within `limit` (unbounded in builds without
/// a timer: see [`deadline`]).
pub(crate) async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let work = std::pin::pin!(work);
    let timer = std::pin::pin!(deadline(limit));
    match futures_util::future::select(work, timer).await {
        futures_util::future::Either::Left((value, _)) => Some(value),
        futures_util::future::Either::Right(_) => None,
    }
}

/// Completes after `limit` where this build has a timer (natively with the embedded backend, in
/// a Worker with the cloudflare one); elsewhere never, and the probes run unbounded.
async fn deadline(limit: Duration) {
    #[cfg(any(
        all(feature = "embedded", not(target_arch = "wasm32")),
        all(feature = "cloudflare", target_arch = "wasm32")
    ))]
    crate::router::pause(limit).await;
    #[cfg(not(any(
        all(feature = "embedded", not(target_arch = "wasm32")),
        all(feature = "cloudflare", target_arch = "wasm32")
    )))]
    {
        let _ = limit;
        std::future::pending::<()>().await;
    }
}
