//! The Cloudflare backend: D1 shards, a KV or Durable Object directory, and the ShardCoordinator
//! Durable Object. Compiled with the `cloudflare` feature for `wasm32-unknown-unknown`.
//!
//! Build one handle per request from `env` with [`open`]; the directory cache behind it, and the
//! routed-call counters of [`CollegeDb::metrics`], live for the isolate and are shared by every
//! request the isolate serves (so metrics are per isolate, not per deployment).
//!
//! Which directory:
//!
//! | | [`DirectoryChoice::DurableObject`] | [`DirectoryChoice::Kv`] |
//! | --- | --- | --- |
//! | consistency | strong: a claim is atomic, every reader sees it at once | eventual: up to ~60 s to other locations |
//! | concurrent first writes of one key | settle on one shard | may land on two shards |
//! | cost per directory read | a Durable Object request | a KV read (cached at the edge) |
//! | choose when | keys can be created concurrently, or read right after being written elsewhere | keys are created once, by one writer, and read a lot |
//!
//! Hash placement needs neither: choose `hash` for models that do not need placement control.
//!
//! Statistics: the row-count changes of writes are batched per isolate and sent to the
//! coordinator at most [`StatsBatching::max_age_ms`] (10 s) after the first change of a batch, or
//! when the batch holds [`StatsBatching::max_rows`] (1,000) changed rows; never once per write.
//! The coordinator's figures lag by up to that interval, and lose the unsent batch of an isolate
//! that is evicted until [`recount_stats`] resets them from the shards (see [`StatsBatching`]).

mod coordinator;
mod d1;
mod durable;
mod environment;
mod growth;
mod kv;
mod object_shard;
mod request;
mod shard;
mod stats;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

pub use coordinator::{
    serve_coordinator, Allocation, CoordinatorClient, CoordinatorShardStats, COORDINATOR_NAME,
    TICKET_BLOCK,
};
pub use d1::{from_js, to_js, D1Shard};
pub use durable::{serve_directory, DurableDirectory, DIRECTORY_PARTITIONS};
pub use environment::{config_from_env, ConfigSource};
pub use growth::{
    growth_status_json, job_json, run_growth_alarm, runner_record, serve_growth_runner,
    GrowthRunnerClient, RunnerRecord, RunnerSettings, GROWTH_RUNNER_NAME, SUBREQUEST_LIMIT,
};
pub use kv::KvDirectory;
pub use object_shard::{serve_shard, serve_shard_with_limit, ObjectShard, MAX_OBJECT_BYTES};
pub use request::{bookmarks, request_bookmarks, request_location, set_bookmarks};
pub use shard::CloudflareShard;
pub use stats::{
    discard_pending_stats, pending_stats, recount_stats, set_stats_batching, stats_timer_needed,
    PendingStats, RowCount, StatsBatching,
};

use worker::Env;

use crate::backend::{Backend, Coordinator};
use crate::config::Config;
use crate::directory::{Directory, DirectoryCache, DirectoryPage};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::metrics::Metrics;
use crate::router::CollegeDb;
use crate::session::{Bookmarks, ReadConsistency};
use crate::slots::ShardMap;

/// The Cloudflare backend bundle.
#[derive(Debug)]
pub enum Cloudflare {}

impl Backend for Cloudflare {
    type Shard = CloudflareShard;
    type Directory = CloudflareDirectory;
    type Coordinator = CoordinatorClient;
}

/// Where the directory lives, by binding name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryChoice {
    /// A KV namespace binding.
    Kv(String),
    /// A Durable Object namespace binding whose class calls [`serve_directory`].
    DurableObject(String),
}

/// The directory chosen by [`DirectoryChoice`].
pub enum CloudflareDirectory {
    /// On KV.
    Kv(KvDirectory),
    /// On Durable Objects.
    DurableObject(DurableDirectory),
}

impl Directory for CloudflareDirectory {
    async fn lookup(&self, table: &str, key: &Key) -> Result<Option<String>> {
        match self {
            Self::Kv(d) => d.lookup(table, key).await,
            Self::DurableObject(d) => d.lookup(table, key).await,
        }
    }
    async fn claim(&self, table: &str, key: &Key, shard: &str) -> Result<String> {
        match self {
            Self::Kv(d) => d.claim(table, key, shard).await,
            Self::DurableObject(d) => d.claim(table, key, shard).await,
        }
    }
    async fn claim_many(&self, table: &str, claims: &[(Key, String)]) -> Result<Vec<String>> {
        match self {
            Self::Kv(d) => d.claim_many(table, claims).await,
            Self::DurableObject(d) => d.claim_many(table, claims).await,
        }
    }
    async fn assign(&self, table: &str, key: &Key, shard: &str) -> Result<()> {
        match self {
            Self::Kv(d) => d.assign(table, key, shard).await,
            Self::DurableObject(d) => d.assign(table, key, shard).await,
        }
    }
    async fn remove(&self, table: &str, key: &Key) -> Result<()> {
        match self {
            Self::Kv(d) => d.remove(table, key).await,
            Self::DurableObject(d) => d.remove(table, key).await,
        }
    }
    fn compares_and_sets(&self) -> bool {
        match self {
            Self::Kv(d) => d.compares_and_sets(),
            Self::DurableObject(d) => d.compares_and_sets(),
        }
    }
    async fn replace(
        &self,
        table: &str,
        key: &Key,
        expected: &str,
        value: &str,
    ) -> Result<Option<String>> {
        match self {
            Self::Kv(d) => d.replace(table, key, expected, value).await,
            Self::DurableObject(d) => d.replace(table, key, expected, value).await,
        }
    }
    async fn replace_many(
        &self,
        table: &str,
        replacements: &[(Key, String, String)],
    ) -> Result<Vec<Option<String>>> {
        match self {
            Self::Kv(d) => d.replace_many(table, replacements).await,
            Self::DurableObject(d) => d.replace_many(table, replacements).await,
        }
    }
    async fn remove_if(&self, table: &str, key: &Key, expected: &str) -> Result<()> {
        match self {
            Self::Kv(d) => d.remove_if(table, key, expected).await,
            Self::DurableObject(d) => d.remove_if(table, key, expected).await,
        }
    }
    async fn list(&self, table: &str, cursor: Option<&str>, limit: usize) -> Result<DirectoryPage> {
        match self {
            Self::Kv(d) => d.list(table, cursor, limit).await,
            Self::DurableObject(d) => d.list(table, cursor, limit).await,
        }
    }
    async fn count(&self) -> Result<u64> {
        match self {
            Self::Kv(d) => d.count().await,
            Self::DurableObject(d) => d.count().await,
        }
    }
    async fn clear(&self) -> Result<()> {
        match self {
            Self::Kv(d) => d.clear().await,
            Self::DurableObject(d) => d.clear().await,
        }
    }
}

thread_local! {
    /// Subrequests sent through collegedb by this isolate (see [`subrequests_sent`]).
    static SUBREQUESTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The stored shard map [`use_stored_map`] loaded, shared by the handles of every directory
    /// binding (each cache also remembers newer maps on its own).
    static STORED_MAP: RefCell<Option<Arc<ShardMap>>> = const { RefCell::new(None) };
    /// One directory cache per directory binding, for the life of the isolate.
    static CACHES: RefCell<HashMap<String, Arc<DirectoryCache>>> = RefCell::new(HashMap::new());
    /// The routed-call counters of this isolate (see [`crate::metrics`]), shared by the handles
    /// of every request it serves.
    static METRICS: RefCell<Option<Arc<Metrics>>> = const { RefCell::new(None) };
}

pub(crate) fn note_subrequest() {
    SUBREQUESTS.with(|n| n.set(n.get() + 1));
}

/// Subrequests this isolate has sent through collegedb since it started: D1 statements and
/// batches, coordinator and Durable Object directory requests, KV reads, writes and deletes.
/// Each counts against a Workers invocation's limit ([`SUBREQUEST_LIMIT`]). The counter is per
/// isolate: the difference across an invocation is an upper bound of that invocation's
/// subrequests (other invocations served by the isolate meanwhile count too).
pub fn subrequests_sent() -> u64 {
    SUBREQUESTS.with(|n| n.get())
}

fn binding(error: worker::Error, name: &str) -> Error {
    Error::config(format!(
        "binding `{name}` is missing or of the wrong type: {error}"
    ))
}

/// Opens a handle for this request: one D1 binding per configured shard (the shard's name is the
/// binding's name), the chosen directory, and the coordinator's Durable Object namespace.
///
/// Every statement goes to each shard's primary; [`open_with_sessions`] reads from replicas.
pub fn open(
    env: &Env,
    config: Config,
    directory: DirectoryChoice,
    coordinator_binding: &str,
) -> Result<CollegeDb<Cloudflare>> {
    open_with(
        env,
        config,
        directory,
        coordinator_binding,
        ReadConsistency::Primary,
        &Bookmarks::new(),
    )
}

/// Like [`open`], with a read consistency: [`ReadConsistency::Sessions`] runs each shard's
/// statements in one D1 session, starting from the shard's bookmark in `bookmarks` when it has
/// one (see [`crate::session`]). Read the handle's bookmarks with [`bookmarks`] at the end of the
/// request and send them to the client ([`set_bookmarks`]), which returns them on its next
/// request ([`request_bookmarks`]) to read its own writes.
///
/// Fails with [`Error::BookmarkInvalid`] when `bookmarks` names a shard the configuration does
/// not have, or D1 refuses one.
pub fn open_with(
    env: &Env,
    config: Config,
    directory: DirectoryChoice,
    coordinator_binding: &str,
    reads: ReadConsistency,
    bookmarks: &Bookmarks,
) -> Result<CollegeDb<Cloudflare>> {
    config.validate()?;
    let shards = config
        .shards
        .iter()
        .map(|s| {
            if let Some(namespace) = &s.durable_object {
                let namespace = env
                    .durable_object(namespace)
                    .map_err(|e| binding(e, namespace))?;
                return Ok(CloudflareShard::Object(
                    ObjectShard::new(&s.name, namespace).in_region(s.region),
                ));
            }
            let database = env.d1(&s.name).map_err(|e| binding(e, &s.name))?;
            Ok(CloudflareShard::D1(match reads {
                ReadConsistency::Primary => D1Shard::new(&s.name, database),
                ReadConsistency::Sessions(start) => {
                    D1Shard::with_session(&s.name, database, start, bookmarks.get(&s.name))?
                }
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    let (cache_key, directory) = match directory {
        DirectoryChoice::Kv(name) => {
            let kv = env.kv(&name).map_err(|e| binding(e, &name))?;
            (name, CloudflareDirectory::Kv(KvDirectory::new(kv)))
        }
        DirectoryChoice::DurableObject(name) => {
            let ns = env.durable_object(&name).map_err(|e| binding(e, &name))?;
            (
                name,
                CloudflareDirectory::DurableObject(DurableDirectory::new(ns)),
            )
        }
    };
    let coordinator = env
        .durable_object(coordinator_binding)
        .map(CoordinatorClient::new)
        .map_err(|e| binding(e, coordinator_binding))?;
    let capacity = config.directory_cache_capacity;
    let cache = CACHES.with(|caches| {
        caches
            .borrow_mut()
            .entry(cache_key)
            .or_insert_with(|| Arc::new(DirectoryCache::new(capacity)))
            .clone()
    });
    // Start from the stored map if this isolate has loaded it, not from the list's seed.
    if let Some(map) = STORED_MAP.with(|m| m.borrow().clone()) {
        cache.remember_stored_map(&map);
    }
    let names = config.shards.iter().map(|s| s.name.as_str());
    let metrics = METRICS.with(|m| {
        let mut m = m.borrow_mut();
        match &*m {
            Some(shared) if shared.shard_names().eq(names.clone()) => shared.clone(),
            // The first handle of the isolate, or one configured with other shards.
            _ => m.insert(Arc::new(Metrics::new(names))).clone(),
        }
    });
    CollegeDb::from_parts_shared(config, shards, directory, coordinator, cache, Some(metrics))
}

/// Makes `db` route by the coordinator's stored shard map from its first statement, and returns
/// that map. If the coordinator holds no map yet, the map seeded from `initial` (configured
/// shards) is stored first; afterwards `initial` means nothing.
///
/// A handle starts from the seed of its configured list, and the first handle to need a map
/// stores its own seed. A deployment whose configuration lists *standby* shards from the start
/// (bindings waiting for [`CollegeDb::add_shard`](crate::CollegeDb::add_shard), as in the Worker
/// example) calls this on every handle before its first statement, naming the shards that serve
/// rows at first: a handle that routed by its list's seed would place rows on a standby shard.
/// Only the first call in an isolate makes requests (one or three to the coordinator); later
/// handles of the isolate, whatever their directory, start from the map it loaded ([`open`]),
/// and newer maps reach them as usual, when a shard refuses a statement. Fails with
/// [`Error::ConfigInvalid`] when a shard of the stored map is not configured (its rows would be
/// unreachable: see [`crate::shard_map`]).
pub async fn use_stored_map(db: &CollegeDb<Cloudflare>, initial: &[&str]) -> Result<ShardMap> {
    if let Some(map) = STORED_MAP.with(|m| m.borrow().clone()) {
        if map.version() >= db.shard_map().version() {
            db.adopt_map((*map).clone())?;
        }
        return Ok((*db.shard_map()).clone());
    }
    let map = match db.coordinator().load_map().await? {
        Some(map) => map,
        None => {
            for name in initial {
                db.shard_by_name(name)?;
            }
            let names: Vec<String> = initial.iter().map(|s| (*s).to_owned()).collect();
            // Refused when another isolate stored a map meanwhile: theirs is the map.
            db.coordinator().store_map(&ShardMap::seed(&names)?).await?;
            db.coordinator().load_map().await?.ok_or_else(|| {
                Error::CoordinatorUnavailable("the coordinator kept no shard map".into())
            })?
        }
    };
    let configured: Vec<String> = db
        .list_known_shards()
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let crate::shard_map::ListChange::Missing(why) = crate::shard_map::compare(&map, &configured)
    {
        return Err(crate::shard_map::refused(&map, &why));
    }
    db.adopt_map(map.clone())?;
    STORED_MAP.with(|m| *m.borrow_mut() = Some(Arc::new(map)));
    Ok((*db.shard_map()).clone())
}
