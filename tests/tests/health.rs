//! Health probes and routed-call metrics on real SQLite shard files: a shard that fails, a shard
//! and a directory that never answer, and a coordinator that fails are each reported on their
//! own, within the time bound; metrics count calls, rows and errors per shard, and each call
//! runs in a `collegedb.shard` tracing span.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collegedb::backend::embedded::SqliteShard;
use collegedb::backend::{Backend, Coordinator, Row, ShardConn, Statement};
use collegedb::directory::{Directory, DirectoryPage};
use collegedb::slots::ShardMap;
use collegedb::{CollegeDb, ComponentKind, Config, Error, Key, Result, Value};
use collegedb_tests::User;
use pollster::block_on;

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// How a component answers now; tests switch it on a live handle.
#[derive(Clone, Default)]
struct Fault(Arc<AtomicU8>);

impl Fault {
    fn set(&self, mode: u8) {
        self.0.store(mode, Ordering::SeqCst);
    }

    /// Fails or never answers, as set; `Ok` otherwise.
    async fn strike(&self, error: impl FnOnce() -> Error) -> Result<()> {
        match self.0.load(Ordering::SeqCst) {
            FAIL => Err(error()),
            HANG => std::future::pending().await,
            _ => Ok(()),
        }
    }
}

/// A real SQLite shard file behind a switch.
struct FaultyShard {
    inner: SqliteShard,
    name: String,
    fault: Fault,
}

impl FaultyShard {
    fn unavailable(&self) -> Error {
        Error::Unavailable {
            shard: self.name.clone(),
            message: "injected fault: the database is unreachable".into(),
        }
    }
}

impl ShardConn for FaultyShard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.fault.strike(|| self.unavailable()).await?;
        self.inner.execute(sql, params).await
    }
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.fault.strike(|| self.unavailable()).await?;
        self.inner.query(sql, params).await
    }
    async fn query_raw(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.fault.strike(|| self.unavailable()).await?;
        self.inner.query_raw(sql, params).await
    }
    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        self.fault.strike(|| self.unavailable()).await?;
        self.inner.batch(statements).await
    }
    async fn size_bytes(&self) -> Result<u64> {
        self.inner.size_bytes().await
    }
}

/// A directory for hash placement (it holds nothing) behind a switch.
struct FaultyDirectory(Fault);

fn directory_down() -> Error {
    Error::Directory("injected fault: the directory store is down".into())
}

impl Directory for FaultyDirectory {
    async fn lookup(&self, _: &str, _: &Key) -> Result<Option<String>> {
        self.0.strike(directory_down).await?;
        Ok(None)
    }
    async fn claim(&self, _: &str, _: &Key, _: &str) -> Result<String> {
        Err(Error::Directory("hash placement only".into()))
    }
    async fn assign(&self, _: &str, _: &Key, _: &str) -> Result<()> {
        Err(Error::Directory("hash placement only".into()))
    }
    async fn remove(&self, _: &str, _: &Key) -> Result<()> {
        Ok(())
    }
    async fn list(&self, _: &str, _: Option<&str>, _: usize) -> Result<DirectoryPage> {
        Ok(DirectoryPage::default())
    }
    async fn count(&self) -> Result<u64> {
        self.0.strike(directory_down).await?;
        Ok(0)
    }
    async fn clear(&self) -> Result<()> {
        Ok(())
    }
}

/// A coordinator that stores no map, behind a switch (its default probe reads the map).
struct FaultyCoordinator(Fault);

impl Coordinator for FaultyCoordinator {
    async fn next_ticket(&self, _: &str) -> Result<u64> {
        Err(Error::CoordinatorUnavailable("hash placement only".into()))
    }
    async fn load_map(&self) -> Result<Option<ShardMap>> {
        self.0
            .strike(|| Error::CoordinatorUnavailable("injected fault: no answer".into()))
            .await?;
        Ok(None)
    }
}

enum Faulty {}

impl Backend for Faulty {
    type Shard = FaultyShard;
    type Directory = FaultyDirectory;
    type Coordinator = FaultyCoordinator;
}

struct Switches {
    shards: Vec<Fault>,
    directory: Fault,
    coordinator: Fault,
}

const SHARDS: [&str; 3] = ["a", "b", "c"];

fn open(dir: &std::path::Path) -> (CollegeDb<Faulty>, Switches) {
    let switches = Switches {
        shards: SHARDS.iter().map(|_| Fault::default()).collect(),
        directory: Fault::default(),
        coordinator: Fault::default(),
    };
    let shards = SHARDS
        .iter()
        .zip(&switches.shards)
        .map(|(name, fault)| FaultyShard {
            inner: SqliteShard::open(
                dir.join(format!("{name}.sqlite")),
                name,
                &Default::default(),
            )
            .unwrap(),
            name: (*name).to_owned(),
            fault: fault.clone(),
        })
        .collect();
    let db = CollegeDb::from_parts(
        Config::with_shard_names(SHARDS),
        shards,
        FaultyDirectory(switches.directory.clone()),
        FaultyCoordinator(switches.coordinator.clone()),
    )
    .unwrap();
    (db, switches)
}

#[test]
fn health_reports_each_failing_component_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (db, switches) = open(dir.path());
    block_on(User::create_table(&db)).unwrap();

    let health = block_on(db.health());
    assert!(health.ok, "{health}");
    assert_eq!(health.components.len(), 5);
    assert!(health.failing().next().is_none());

    // A shard that answers with an error: that shard alone is unhealthy, with its error.
    switches.shards[1].set(FAIL);
    let health = block_on(db.health());
    assert!(!health.ok);
    let b = health.component(ComponentKind::Shard, "b").unwrap();
    assert!(!b.ok);
    assert_eq!(b.code.as_deref(), Some("SHARD_UNAVAILABLE"));
    assert!(
        b.error.as_deref().unwrap().contains("injected fault"),
        "{b:?}"
    );
    assert_eq!(health.failing().count(), 1, "{health}");

    // A shard and the directory that never answer, a coordinator that fails: reported on time.
    switches.shards[1].set(OK);
    switches.shards[2].set(HANG);
    switches.directory.set(HANG);
    switches.coordinator.set(FAIL);
    let bound = Duration::from_millis(300);
    let started = Instant::now();
    let health = block_on(db.health_within(bound));
    let took = started.elapsed();
    assert!(took >= bound, "returned before the bound: {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} for a 300 ms bound"
    );
    assert_eq!(health.timeout_ms, 300);
    let failing: BTreeMap<String, Option<String>> = health
        .failing()
        .map(|c| (c.name.clone(), c.code.clone()))
        .collect();
    let expected: BTreeMap<String, Option<String>> = [
        ("c", "TIMEOUT"),
        ("directory", "TIMEOUT"),
        ("coordinator", "COORDINATOR_UNAVAILABLE"),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_owned(), Some(c.to_owned())))
    .collect();
    assert_eq!(failing, expected, "{health}");
    let c = health.component(ComponentKind::Shard, "c").unwrap();
    assert_eq!(c.latency_us, 300_000);
    assert!(c.error.as_deref().unwrap().contains("300 ms"));
    for name in ["a", "b"] {
        assert!(health.component(ComponentKind::Shard, name).unwrap().ok);
    }
    let text = health.to_string();
    assert!(
        text.ends_with("UNHEALTHY") && text.contains("FAIL shard c"),
        "{text}"
    );

    // JSON for endpoints, and back.
    let json = serde_json::to_string(&health).unwrap();
    assert_eq!(
        serde_json::from_str::<collegedb::Health>(&json).unwrap(),
        health
    );

    // The dashboard gathers what it can and says what did not answer.
    switches.shards[2].set(OK);
    switches.shards[0].set(HANG);
    let data = block_on(collegedb::dashboard::collect(&db, "faults", "this test"));
    assert!(!data.health.ok);
    assert!(data.shards[0].error.is_some(), "{:?}", data.shards[0]);
    assert!(data.shards[1].error.is_none() && data.shards[2].error.is_none());
    assert!(data.directory_entries.is_err());
}

#[test]
fn metrics_count_calls_rows_and_errors_per_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (db, switches) = open(dir.path());
    block_on(User::create_table(&db)).unwrap();
    let before = db.metrics();

    let users: Vec<User> = (0..60).map(|i| User::new(format!("u{i}"))).collect();
    let mut per_shard = BTreeMap::<String, u64>::new();
    block_on(async {
        for user in &users {
            User::insert(&db, user).await.unwrap();
            let shard = User::locate(&db, user.id.as_str()).await.unwrap().unwrap();
            *per_shard.entry(shard).or_default() += 1;
        }
        for user in &users {
            assert!(User::find(&db, user.id.as_str()).await.unwrap().is_some());
        }
    });
    let after = db.metrics();
    for name in SHARDS {
        let (was, now) = (before.shard(name).unwrap(), after.shard(name).unwrap());
        let placed = per_shard.get(name).copied().unwrap_or(0);
        assert!(placed > 0, "60 keys reach every one of 3 shards");
        // An insert, a locate and a find per key, at least; each changes or returns one row.
        assert!(now.calls - was.calls >= 3 * placed, "{name}: {now:?}");
        assert!(now.rows - was.rows >= 3 * placed, "{name}: {now:?}");
        assert_eq!(now.errors, 0);
        assert_eq!(now.latency.buckets.iter().sum::<u64>(), now.calls);
        assert!(now.latency.quantile_us(0.5).is_some());
    }

    // A duplicate key is counted as such, on the shard that refused it.
    let first = &users[0];
    let home = block_on(User::locate(&db, first.id.as_str()))
        .unwrap()
        .unwrap();
    assert!(block_on(User::insert(&db, first)).is_err());
    let dup = db.metrics();
    assert_eq!(
        dup.shard(&home)
            .unwrap()
            .errors_by_code
            .get("DUPLICATE_KEY"),
        Some(&1)
    );

    // A failing shard: its calls fail, counted by code, on that shard only.
    switches.shards[0].set(FAIL);
    let on_a = users
        .iter()
        .find(|u| {
            block_on(User::locate(&db, u.id.as_str()))
                .ok()
                .flatten()
                .is_none()
        })
        .is_some();
    assert!(on_a, "lookups on shard a fail while it is down");
    let down = db.metrics();
    let a = down.shard("a").unwrap();
    assert!(a.errors >= 1);
    let dup_on_a = u64::from(home == "a");
    assert_eq!(
        a.errors_by_code.get("SHARD_UNAVAILABLE"),
        Some(&(a.errors - dup_on_a))
    );
    assert!(a.error_rate() > 0.0);
    assert_eq!(down.shard("b").unwrap().errors, u64::from(home == "b"));
    switches.shards[0].set(OK);
}

/// A `tracing` subscriber that keeps the `shard` field of every `collegedb.shard` span.
#[derive(Default)]
struct Spans(Mutex<Vec<String>>);

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        struct Shard(Option<String>);
        impl tracing::field::Visit for Shard {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "shard" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut visitor = Shard(None);
        span.record(&mut visitor);
        let mut spans = self.0.lock().unwrap();
        if span.metadata().name() == "collegedb.shard" {
            spans.push(visitor.0.unwrap_or_default());
        }
        tracing::span::Id::from_u64(spans.len() as u64 + 1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn each_routed_call_runs_in_a_shard_span() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _switches) = open(dir.path());
    block_on(User::create_table(&db)).unwrap();
    let spans = Arc::new(Spans::default());
    let user = User::new("traced");
    tracing::subscriber::with_default(spans.clone(), || {
        block_on(async {
            User::insert(&db, &user).await.unwrap();
            User::find(&db, "traced").await.unwrap().unwrap();
        })
    });
    let shard = block_on(User::locate(&db, "traced")).unwrap().unwrap();
    let seen = spans.0.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|s| *s == shard), "{seen:?} on {shard}");
}
