//! A simulated distance and simulated outages around a real backend, for tests and benchmarks.
//!
//! [`Simulated<B>`] wraps the shards, directory and coordinator of any backend `B`. Every call
//! first waits [`Simulation::delay`] (one round trip per call: a `batch` costs one delay, as a
//! D1 `batch()` does), then consults a [`FaultSwitch`] shared by every part and by the test:
//!
//! * [`Fault::Up`]: the call runs on the real backend;
//! * [`Fault::Down`]: every call fails as an unreachable database does (shards:
//!   [`Error::Unavailable`]; directory: [`Error::Directory`]; coordinator:
//!   [`Error::CoordinatorUnavailable`]), without running;
//! * [`Fault::Flaky`]: that many calls per thousand fail, half of them before running and half
//!   after running while reporting the failure, as a D1 write that may or may not have been
//!   applied.
//!
//! This is a simulation, not a measurement of any network: the delay is a fixed sleep and the
//! faults are drawn at random. The real backend underneath does all the work, so rows, fences
//! and entries are real. Natively each waiting call holds a thread of the `blocking` pool (about
//! 500 at most, shared with the embedded backend's work), so keep concurrency well below that;
//! in a Worker the wait is a timer. A build with neither backend feature adds no delay.
//!
//! ```
//! use std::time::Duration;
//! use collegedb::backend::embedded::{self, SqliteShard};
//! use collegedb::simulate::{Fault, Simulated, Simulation};
//! use collegedb::{CollegeDb, Config, Embedded};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = Config::with_shard_names(["a", "b"]);
//! let options = Default::default();
//! let (directory, coordinator) = embedded::open_directory(dir.path(), &options)?;
//! let shards = ["a", "b"]
//!     .iter()
//!     .map(|name| SqliteShard::open(dir.path().join(format!("{name}.sqlite")), name, &options))
//!     .collect::<collegedb::Result<Vec<_>>>()?;
//! let simulation = Simulation::new(Duration::from_millis(5));
//! let db: CollegeDb<Simulated<Embedded>> =
//!     simulation.open(config, shards, directory, coordinator)?;
//! simulation.switch().set(Fault::Down);
//! let error = pollster::block_on(db.run_shard("a", "SELECT 1", &[])).unwrap_err();
//! assert_eq!(error.code(), "SHARD_UNAVAILABLE");
//! # Ok::<(), collegedb::Error>(())
//! ```

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, Coordinator, Row, RowDelta, ShardConn, Statement};
use crate::config::Config;
use crate::directory::{Directory, DirectoryPage};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::router::CollegeDb;
use crate::slots::ShardMap;
use crate::value::Value;

/// What the simulated database does with the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Every call runs.
    #[default]
    Up,
    /// Every call fails without running.
    Down,
    /// `per_mille` calls in a thousand fail: half before running, half after.
    Flaky {
        /// Failures per thousand calls.
        per_mille: u16,
    },
}

/// The fault in force, shared by every part of a [`Simulated`] database and by whoever flips
/// it. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<Mutex<Fault>>);

impl FaultSwitch {
    /// Puts `fault` in force for the calls that start from now on.
    pub fn set(&self, fault: Fault) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// The fault in force.
    pub fn get(&self) -> Fault {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fixed delay per call and a [`FaultSwitch`]: what [`Simulated`] adds to a backend.
#[derive(Debug, Clone)]
pub struct Simulation {
    delay: Duration,
    switch: FaultSwitch,
}

/// When a simulated failure strikes.
enum Strike {
    None,
    Before,
    After,
}

impl Simulation {
    /// A simulation of `delay` per call, with every call up.
    pub fn new(delay: Duration) -> Self {
        Simulation {
            delay,
            switch: FaultSwitch::default(),
        }
    }

    /// The delay added to every call.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The switch that puts faults in force.
    pub fn switch(&self) -> &FaultSwitch {
        &self.switch
    }

    /// Opens a database over the parts of a real backend, every call of it simulated.
    pub fn open<B: Backend>(
        &self,
        config: Config,
        shards: Vec<B::Shard>,
        directory: B::Directory,
        coordinator: B::Coordinator,
    ) -> Result<CollegeDb<Simulated<B>>> {
        let names: Vec<String> = config.shards.iter().map(|s| s.name.clone()).collect();
        if names.len() != shards.len() {
            return Err(Error::config(format!(
                "{} shards configured, {} given: give one shard per configured name, in order",
                names.len(),
                shards.len()
            )));
        }
        let shards = shards
            .into_iter()
            .zip(names)
            .map(|(inner, name)| SimShard::new(inner, name, self.clone()))
            .collect();
        let directory = SimDirectory {
            inner: directory,
            sim: self.clone(),
        };
        let coordinator = SimCoordinator {
            inner: coordinator,
            sim: self.clone(),
        };
        CollegeDb::from_parts(config, shards, directory, coordinator)
    }

    /// Draws the fault of this call as it starts, then waits the delay.
    async fn start(&self) -> Strike {
        let fault = self.switch.get();
        if !self.delay.is_zero() {
            crate::router::pause(self.delay).await;
        }
        match fault {
            Fault::Up => Strike::None,
            Fault::Down => Strike::Before,
            Fault::Flaky { per_mille } => {
                let per_mille = per_mille.min(1000);
                let draw = fastrand::u16(..2000);
                if draw < per_mille {
                    Strike::Before
                } else if draw < per_mille * 2 {
                    Strike::After
                } else {
                    Strike::None
                }
            }
        }
    }

    /// Runs `call` under the fault drawn for it; `fail` is the error a failure reports.
    async fn run<T>(
        &self,
        fail: impl Fn() -> Error,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.start().await {
            Strike::None => call.await,
            Strike::Before => Err(fail()),
            Strike::After => {
                let _ = call.await;
                Err(fail())
            }
        }
    }
}

/// A backend whose every call goes through a [`Simulation`] before reaching `B`'s.
pub struct Simulated<B>(PhantomData<B>);

impl<B: Backend> Backend for Simulated<B> {
    type Shard = SimShard<B::Shard>;
    type Directory = SimDirectory<B::Directory>;
    type Coordinator = SimCoordinator<B::Coordinator>;
}

/// One shard of a [`Simulated`] backend. A shard that reads through a D1 session keeps it, and
/// its [`ShardConn::primary`] view stays on the primary, simulated the same way.
pub struct SimShard<S> {
    inner: Arc<S>,
    name: String,
    sim: Simulation,
    /// Whether this is the primary view of `inner` (see [`ShardConn::primary`]).
    on_primary: bool,
    /// The primary view, on the shard handed to the router.
    twin: Option<Box<SimShard<S>>>,
}

impl<S: ShardConn> SimShard<S> {
    fn new(inner: S, name: String, sim: Simulation) -> Self {
        let inner = Arc::new(inner);
        let twin = SimShard {
            inner: inner.clone(),
            name: name.clone(),
            sim: sim.clone(),
            on_primary: true,
            twin: None,
        };
        SimShard {
            inner,
            name,
            sim,
            on_primary: false,
            twin: Some(Box::new(twin)),
        }
    }

    fn target(&self) -> &S {
        if self.on_primary {
            self.inner.primary()
        } else {
            &self.inner
        }
    }

    fn unavailable(&self) -> impl Fn() -> Error + '_ {
        || Error::Unavailable {
            shard: self.name.clone(),
            message: "simulated outage".into(),
        }
    }
}

impl<S: ShardConn> ShardConn for SimShard<S> {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let call = self.target().execute(sql, params);
        self.sim.run(self.unavailable(), call).await
    }

    async fn execute_raw(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let call = self.target().execute_raw(sql, params);
        self.sim.run(self.unavailable(), call).await
    }

    async fn query_raw(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let call = self.target().query_raw(sql, params);
        self.sim.run(self.unavailable(), call).await
    }

    fn max_parameters(&self) -> usize {
        self.inner.max_parameters()
    }

    fn computes_slots(&self) -> bool {
        self.inner.computes_slots()
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let call = self.target().query(sql, params);
        self.sim.run(self.unavailable(), call).await
    }

    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        let call = self.target().batch(statements);
        self.sim.run(self.unavailable(), call).await
    }

    async fn size_bytes(&self) -> Result<u64> {
        let call = self.target().size_bytes();
        self.sim.run(self.unavailable(), call).await
    }

    fn primary(&self) -> &Self {
        self.twin.as_deref().unwrap_or(self)
    }
}

/// The directory of a [`Simulated`] backend. Every operation keeps the atomicity of `D`'s.
pub struct SimDirectory<D> {
    inner: D,
    sim: Simulation,
}

fn directory_down() -> Error {
    Error::Directory("simulated outage".into())
}

impl<D: Directory> Directory for SimDirectory<D> {
    async fn lookup(&self, table: &str, key: &Key) -> Result<Option<String>> {
        let call = self.inner.lookup(table, key);
        self.sim.run(directory_down, call).await
    }

    async fn claim(&self, table: &str, key: &Key, shard: &str) -> Result<String> {
        let call = self.inner.claim(table, key, shard);
        self.sim.run(directory_down, call).await
    }

    async fn claim_many(&self, table: &str, claims: &[(Key, String)]) -> Result<Vec<String>> {
        let call = self.inner.claim_many(table, claims);
        self.sim.run(directory_down, call).await
    }

    async fn assign(&self, table: &str, key: &Key, shard: &str) -> Result<()> {
        let call = self.inner.assign(table, key, shard);
        self.sim.run(directory_down, call).await
    }

    async fn remove(&self, table: &str, key: &Key) -> Result<()> {
        let call = self.inner.remove(table, key);
        self.sim.run(directory_down, call).await
    }

    fn compares_and_sets(&self) -> bool {
        self.inner.compares_and_sets()
    }

    async fn replace(
        &self,
        table: &str,
        key: &Key,
        expected: &str,
        value: &str,
    ) -> Result<Option<String>> {
        let call = self.inner.replace(table, key, expected, value);
        self.sim.run(directory_down, call).await
    }

    async fn replace_many(
        &self,
        table: &str,
        replacements: &[(Key, String, String)],
    ) -> Result<Vec<Option<String>>> {
        let call = self.inner.replace_many(table, replacements);
        self.sim.run(directory_down, call).await
    }

    async fn remove_if(&self, table: &str, key: &Key, expected: &str) -> Result<()> {
        let call = self.inner.remove_if(table, key, expected);
        self.sim.run(directory_down, call).await
    }

    async fn list(&self, table: &str, cursor: Option<&str>, limit: usize) -> Result<DirectoryPage> {
        let call = self.inner.list(table, cursor, limit);
        self.sim.run(directory_down, call).await
    }

    async fn count(&self) -> Result<u64> {
        let call = self.inner.count();
        self.sim.run(directory_down, call).await
    }

    async fn clear(&self) -> Result<()> {
        let call = self.inner.clear();
        self.sim.run(directory_down, call).await
    }
}

/// The coordinator of a [`Simulated`] backend.
pub struct SimCoordinator<C> {
    inner: C,
    sim: Simulation,
}

fn coordinator_down() -> Error {
    Error::CoordinatorUnavailable("simulated outage".into())
}

impl<C: Coordinator> Coordinator for SimCoordinator<C> {
    async fn next_ticket(&self, table: &str) -> Result<u64> {
        let call = self.inner.next_ticket(table);
        self.sim.run(coordinator_down, call).await
    }

    fn tracks_rows(&self) -> bool {
        self.inner.tracks_rows()
    }

    async fn record_rows(&self, deltas: Vec<RowDelta>) -> Result<()> {
        let call = self.inner.record_rows(deltas);
        self.sim.run(coordinator_down, call).await
    }

    async fn probe(&self) -> Result<()> {
        let call = self.inner.probe();
        self.sim.run(coordinator_down, call).await
    }

    async fn load_map(&self) -> Result<Option<ShardMap>> {
        let call = self.inner.load_map();
        self.sim.run(coordinator_down, call).await
    }

    async fn store_map(&self, map: &ShardMap) -> Result<bool> {
        let call = self.inner.store_map(map);
        self.sim.run(coordinator_down, call).await
    }

    async fn load_job(&self, name: &str) -> Result<Option<String>> {
        let call = self.inner.load_job(name);
        self.sim.run(coordinator_down, call).await
    }

    async fn swap_job(
        &self,
        name: &str,
        expected: Option<&str>,
        json: Option<&str>,
    ) -> Result<bool> {
        let call = self.inner.swap_job(name, expected, json);
        self.sim.run(coordinator_down, call).await
    }

    async fn store_job(&self, name: &str, json: Option<&str>) -> Result<()> {
        let call = self.inner.store_job(name, json);
        self.sim.run(coordinator_down, call).await
    }
}
