//! The router: owns the shards, the directory (with its cache), the coordinator and the placement
//! tables, and decides which shard serves each key.
//!
//! # Routing rules
//!
//! * The **owner** of a key is the shard named by its directory entry, or its hash shard when it
//!   has no entry.
//! * The **write strategy** places *new* keys. `hash` puts a key on its hash shard and records
//!   nothing. `round-robin`, `random` and `location` pick a shard, then *claim* a directory entry
//!   atomically; the claim's winner is the owner, even when several writers race.
//! * The **read strategy** picks the *lookup order* used to find the owner of an existing key
//!   (for reads, updates, deletes and upserts):
//!   * `hash`: **hash-first**. Ask the hash shard; only if it has no such row, consult the
//!     directory and, if the entry names another shard, ask that one. A key placed by hash costs
//!     no directory operation.
//!   * `round-robin`, `random`, `location`: **directory-first**. Consult the cache, then the
//!     directory; with no entry, the owner is the hash shard.
//!
//!   Both orders end at the owner, so every pairing of read and write strategies finds every row
//!   that was written; the read strategy only changes what a lookup costs.
//! * Reads never write: a lookup of an unknown key performs at most one directory *read*.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::{Backend, Coordinator, RowDelta};
use crate::config::{Config, CoordinatorFallback, Region, Strategies, Strategy};
use crate::directory::{Directory, DirectoryCache};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::metrics::Metrics;
use crate::placement::Placer;
use crate::slots::{slot_of, ShardMap, SLOTS};

/// Directory claims sent together by [`CollegeDb::place_many`].
const CLAIM_BATCH: usize = 500;

/// A sharded database: the entry point of the library.
///
/// Cheap to clone (an `Arc` inside); share one per process (per isolate on Workers) so the
/// directory cache is shared too.
pub struct CollegeDb<B: Backend> {
    inner: Arc<Inner<B>>,
    region: Option<Region>,
    /// Every statement on each shard's primary, whatever sessions the shards hold.
    primary: bool,
}

impl<B: Backend> Clone for CollegeDb<B> {
    fn clone(&self) -> Self {
        CollegeDb {
            inner: self.inner.clone(),
            region: self.region,
            primary: self.primary,
        }
    }
}

impl<B: Backend> std::fmt::Debug for CollegeDb<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollegeDb")
            .field("shards", &self.inner.config.shards)
            .field("strategy", &self.inner.config.strategy)
            .field("region", &self.region)
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

struct Inner<B: Backend> {
    config: Config,
    shards: Vec<B::Shard>,
    shard_index: HashMap<String, usize>,
    directory: B::Directory,
    cache: Arc<DirectoryCache>,
    coordinator: B::Coordinator,
    /// The shard map this handle routes by, replaced when a shard says it is stale.
    routing: RwLock<Arc<Routing>>,
    /// Round-robin tickets used while the coordinator is down (see [`CoordinatorFallback`]).
    fallback_tickets: AtomicU64,
    /// Row-count changes not yet sent to the coordinator, by `(shard, table)`.
    pending_rows: Mutex<HashMap<(usize, String), i64>>,
    /// Calls to the directory store (cache hits excluded).
    directory_reads: AtomicU64,
    directory_writes: AtomicU64,
    /// Counters of the calls routed to each shard (see [`crate::metrics`]).
    metrics: Arc<Metrics>,
}

/// Calls a handle made to its directory store; cache hits are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryOps {
    /// Lookups that reached the store.
    pub reads: u64,
    /// Claims that reached the store.
    pub writes: u64,
}

#[cfg(all(feature = "embedded", not(target_arch = "wasm32")))]
impl CollegeDb<crate::backend::embedded::Embedded> {
    /// Opens (creating if needed) an embedded database: one SQLite file per configured shard and
    /// a directory file, all in `folder`.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c"]), dir.path())?;
    /// assert_eq!(db.list_known_shards(), ["a", "b", "c"]);
    /// # Ok::<(), collegedb::Error>(())
    /// ```
    pub fn open_embedded(config: Config, folder: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::open_embedded_with(config, folder, Default::default())
    }

    /// Like [`CollegeDb::open_embedded`], with options for the files (busy timeout, connections).
    ///
    /// ```
    /// use std::time::Duration;
    /// use collegedb::backend::embedded::EmbeddedOptions;
    /// use collegedb::{CollegeDb, Config};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let options = EmbeddedOptions::default().busy_timeout(Duration::from_secs(1));
    /// let db = CollegeDb::open_embedded_with(Config::with_shard_names(["a"]), dir.path(), options)?;
    /// # Ok::<(), collegedb::Error>(())
    /// ```
    pub fn open_embedded_with(
        config: Config,
        folder: impl AsRef<std::path::Path>,
        options: crate::backend::embedded::EmbeddedOptions,
    ) -> Result<Self> {
        config.validate()?;
        let names: Vec<String> = config.shards.iter().map(|s| s.name.clone()).collect();
        let (shards, directory, coordinator, map) =
            crate::backend::embedded::open(folder.as_ref(), &names, &options)?;
        let cache = Arc::new(DirectoryCache::new(config.directory_cache_capacity));
        Self::assemble(config, (shards, directory, coordinator), cache, map, None)
    }
}

impl<B: Backend> CollegeDb<B> {
    /// Assembles a database from a backend's parts. `shards` must follow `config.shards` in order.
    pub fn from_parts(
        config: Config,
        shards: Vec<B::Shard>,
        directory: B::Directory,
        coordinator: B::Coordinator,
    ) -> Result<Self> {
        let cache = Arc::new(DirectoryCache::new(config.directory_cache_capacity));
        Self::from_parts_with_cache(config, shards, directory, coordinator, cache)
    }

    /// Like [`CollegeDb::from_parts`], with a directory cache shared with other handles: on
    /// Workers, one cache per isolate outlives the per-request handles built from `env`.
    pub fn from_parts_with_cache(
        config: Config,
        shards: Vec<B::Shard>,
        directory: B::Directory,
        coordinator: B::Coordinator,
        cache: Arc<DirectoryCache>,
    ) -> Result<Self> {
        Self::from_parts_shared(config, shards, directory, coordinator, cache, None)
    }

    /// Like [`CollegeDb::from_parts_with_cache`], also sharing `metrics` (see
    /// [`crate::metrics`]) with other handles, such as the per-request handles of one Worker
    /// isolate; `None` starts new counters. `metrics` must count the configured shards, in order.
    pub fn from_parts_shared(
        config: Config,
        shards: Vec<B::Shard>,
        directory: B::Directory,
        coordinator: B::Coordinator,
        cache: Arc<DirectoryCache>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self> {
        // Route by the newest map another handle of this cache has seen, else by the configured
        // list's seed; a stored map that differs is loaded the first time a shard's fence
        // refuses a statement.
        let names: Vec<String> = config.shards.iter().map(|s| s.name.clone()).collect();
        let map = match cache.known_map() {
            Some(known) => (*known).clone(),
            None => ShardMap::seed(&names)?,
        };
        Self::assemble(
            config,
            (shards, directory, coordinator),
            cache,
            map,
            metrics,
        )
    }

    fn assemble(
        config: Config,
        (shards, directory, coordinator): (Vec<B::Shard>, B::Directory, B::Coordinator),
        cache: Arc<DirectoryCache>,
        map: ShardMap,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self> {
        config.validate()?;
        if shards.len() != config.shards.len() {
            return Err(Error::config(format!(
                "{} shard connections for {} configured shards",
                shards.len(),
                config.shards.len()
            )));
        }
        let shard_index: HashMap<String, usize> = config
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let routing = Routing::new(&config, &shard_index, map)?;
        let names = config.shards.iter().map(|s| s.name.as_str());
        let metrics = match metrics {
            Some(metrics) if metrics.shard_names().eq(names.clone()) => metrics,
            Some(_) => {
                return Err(Error::config(
                    "shared metrics count other shards than the configuration lists",
                ))
            }
            None => Arc::new(Metrics::new(names)),
        };
        cache.remember_map(&routing.map);
        let region = config.target_region;
        Ok(CollegeDb {
            inner: Arc::new(Inner {
                cache,
                routing: RwLock::new(Arc::new(routing)),
                fallback_tickets: AtomicU64::new(0),
                directory_reads: AtomicU64::new(0),
                directory_writes: AtomicU64::new(0),
                pending_rows: Mutex::new(HashMap::new()),
                metrics,
                config,
                shards,
                shard_index,
                directory,
                coordinator,
            }),
            region,
            primary: false,
        })
    }

    /// A handle whose `location` placements target `region` (shares everything else).
    #[must_use]
    pub fn near(&self, region: Region) -> Self {
        CollegeDb {
            inner: self.inner.clone(),
            region: Some(region),
            primary: self.primary,
        }
    }

    /// A handle whose statements all go to each shard's primary database, on a handle that reads
    /// through D1 sessions (shares everything else). Without sessions, and on the embedded
    /// backend, every handle already reads the primary. A model can ask for this on every read
    /// with `#[sharded(consistency = "primary")]`. Writes made through this view reach the
    /// primary outside the session, so they do not advance the session's bookmark: write
    /// through the session handle when the next request must read them from a replica.
    #[must_use]
    pub fn on_primary(&self) -> Self {
        CollegeDb {
            inner: self.inner.clone(),
            region: self.region,
            primary: true,
        }
    }

    /// The handle `M`'s reads go through: this one, or its [`CollegeDb::on_primary`] view for a
    /// model with `consistency = "primary"`.
    pub(crate) fn reads_for<M: crate::model::Model>(&self) -> std::borrow::Cow<'_, Self> {
        if M::PRIMARY_READS && !self.primary {
            std::borrow::Cow::Owned(self.on_primary())
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }

    /// The region this handle's `location` placements target: the one [`CollegeDb::near`] set,
    /// else the configured `target_region`.
    pub fn target_region(&self) -> Option<Region> {
        self.region
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The configured shard names, in order.
    pub fn list_known_shards(&self) -> Vec<&str> {
        self.inner
            .config
            .shards
            .iter()
            .map(|s| s.name.as_str())
            .collect()
    }

    /// The directory store (for inspection and tooling).
    pub fn directory(&self) -> &B::Directory {
        &self.inner.directory
    }

    /// The in-memory directory cache.
    pub fn directory_cache(&self) -> &DirectoryCache {
        &self.inner.cache
    }

    /// The counters behind [`CollegeDb::metrics`], to share with other handles (see
    /// [`CollegeDb::from_parts_shared`]).
    pub fn metrics_registry(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Every configured shard as opened: D1 shards keep their sessions (for their bookmarks).
    #[cfg_attr(not(feature = "cloudflare"), allow(dead_code))]
    pub(crate) fn shards_as_opened(&self) -> &[B::Shard] {
        &self.inner.shards
    }

    /// Every configured shard, each on its primary database: the paths that see every shard
    /// (markers, fences, statistics, verify, migrations, adoption) must read the latest state,
    /// never a D1 read replica behind it.
    pub(crate) fn shards(&self) -> Vec<&B::Shard> {
        self.inner
            .shards
            .iter()
            .map(crate::backend::ShardConn::primary)
            .collect()
    }

    /// The configuration indices of the shards that own slots in this handle's map: the ones
    /// that serve rows. A standby shard (configured, waiting for `add_shard`) and a drained one
    /// are left out.
    pub(crate) fn serving_shards(&self) -> Vec<usize> {
        let routing = self.routing();
        let mut serving: Vec<usize> = routing.owner.iter().map(|&i| i as usize).collect();
        serving.sort_unstable();
        serving.dedup();
        serving
    }

    /// Runs `work` on every serving shard concurrently (on D1 the latency is the slowest shard's,
    /// not the sum) and returns each shard's index and result, in configuration order.
    pub(crate) async fn on_serving_shards<'a, T, Fut>(
        &'a self,
        mut work: impl FnMut(&'a B::Shard) -> Fut,
    ) -> Vec<(usize, Result<T>)>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let serving = self.serving_shards();
        let results =
            futures_util::future::join_all(serving.iter().map(|&i| work(self.shard(i)))).await;
        serving.into_iter().zip(results).collect()
    }

    /// Runs `work` on every shard concurrently (on D1 the latency is the slowest shard's, not the
    /// sum) and returns each shard's result in configuration order.
    pub(crate) async fn on_every_shard<'a, T, Fut>(
        &'a self,
        work: impl FnMut(&'a B::Shard) -> Fut,
    ) -> Vec<Result<T>>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        futures_util::future::join_all(self.shards().into_iter().map(work)).await
    }

    pub(crate) fn shard(&self, index: usize) -> &B::Shard {
        let shard = &self.inner.shards[index];
        if self.primary {
            crate::backend::ShardConn::primary(shard)
        } else {
            shard
        }
    }

    pub(crate) fn shard_name(&self, index: usize) -> &str {
        &self.inner.config.shards[index].name
    }

    /// The index of a shard by name, or [`Error::ShardNotFound`].
    pub(crate) fn shard_by_name(&self, name: &str) -> Result<usize> {
        self.inner
            .shard_index
            .get(name)
            .copied()
            .ok_or_else(|| Error::ShardNotFound {
                shard: name.to_owned(),
                known: self.list_known_shards().join(", "),
            })
    }

    /// The strategies in force for a model or table, after its overrides.
    pub(crate) fn strategies(&self, model: crate::config::StrategyOverride) -> Strategies {
        model.resolve(self.inner.config.strategy)
    }

    /// The hash shard of `key`: the owner of its slot in this handle's map, where hash placement
    /// puts it, and the owner when it has no directory entry.
    #[inline]
    pub fn hash_shard(&self, key: &Key) -> usize {
        self.hash_target(key).0
    }

    /// The hash shard of `key` and its slot, the fence value its statements bind (see
    /// [`crate::fence`]).
    #[inline]
    pub(crate) fn hash_target(&self, key: &Key) -> (usize, i64) {
        let slot = slot_of(key);
        let routing = self.inner.routing.read().unwrap_or_else(|p| p.into_inner());
        (routing.owner[slot as usize] as usize, i64::from(slot))
    }

    fn routing(&self) -> Arc<Routing> {
        self.inner
            .routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The shard map this handle routes by.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.routing().map.clone()
    }

    /// Reloads the stored shard map; returns whether it was newer than the one in use. Handles
    /// call this by themselves when a shard refuses a statement as routed by an old map.
    pub async fn refresh_map(&self) -> Result<bool> {
        let Some(map) = self.inner.coordinator.load_map().await? else {
            return Ok(false);
        };
        self.adopt_map(map)
    }

    /// Routes by `map` (a stored map) from now on if it is newer than the one in use, or of the
    /// same version but different: a handle built from a configured list that the store does
    /// not hold (a list with standby shards, on a backend whose handles start from the list's
    /// seed) routes by a guess until the stored map of that version replaces it.
    pub(crate) fn adopt_map(&self, map: ShardMap) -> Result<bool> {
        let replaces = |current: &ShardMap| {
            map.version() > current.version()
                || (map.version() == current.version() && map != *current)
        };
        if !replaces(&self.routing().map) {
            return Ok(false);
        }
        let routing = Routing::new(&self.inner.config, &self.inner.shard_index, map.clone())?;
        let mut current = self
            .inner
            .routing
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if replaces(&current.map) {
            self.inner.cache.remember_stored_map(&routing.map);
            *current = Arc::new(routing);
        }
        Ok(true)
    }

    /// Makes sure the coordinator stores a map before any shard's fence is filled from this
    /// handle's: loads the stored one, or stores this handle's (the configured seed) if the
    /// coordinator stores maps but holds none yet. A fence is never filled from a guess.
    pub(crate) async fn ensure_stored_map(&self) -> Result<()> {
        if self.inner.coordinator.load_map().await?.is_none() {
            let seed = (*self.shard_map()).clone();
            match self.inner.coordinator.store_map(&seed).await {
                // This coordinator stores no map: the configured seed is the map.
                Err(Error::ConfigInvalid(_)) => return Ok(()),
                result => drop(result?),
            }
        }
        self.refresh_map().await.map(drop)
    }

    /// After a shard refused a statement for a slot it does not own: reloads the map, and when
    /// the map has not changed (a move is switching the slot over this instant), waits a little.
    /// Fails with [`Error::SlotMoving`] once `backoff` is spent.
    pub(crate) async fn after_not_owned(&self, fence: i64, backoff: &mut Backoff) -> Result<()> {
        if self.refresh_map().await? {
            return Ok(());
        }
        backoff.wait(fence).await
    }

    /// [`CollegeDb::after_not_owned`] for a statement routed by `table`'s directory entry of
    /// `key` (fence [`crate::fence::LIVE`]): the cached entry is dropped first, so the retry
    /// reads the store.
    pub(crate) async fn after_not_admitted(
        &self,
        table: &str,
        key: &Key,
        fence: i64,
        backoff: &mut Backoff,
    ) -> Result<()> {
        if fence == crate::fence::LIVE {
            self.inner.cache.invalidate(table, key);
        }
        self.after_not_owned(fence, backoff).await
    }

    /// After a fenced insert or upsert of `key` was refused by a tombstone on `shard` (see
    /// [`crate::fence`]): the shard the directory store names now, if it is another one; else
    /// (a reassignment between its tombstone and its new entry) waits a little, as for a slot in
    /// its switch-over, and returns `None`.
    pub(crate) async fn after_moved(
        &self,
        table: &str,
        key: &Key,
        shard: usize,
        backoff: &mut Backoff,
    ) -> Result<Option<usize>> {
        match self.directory_lookup_fresh(table, key).await? {
            Some(owner) if owner != shard => Ok(Some(owner)),
            _ => {
                backoff.wait(i64::from(crate::slots::slot_of(key))).await?;
                Ok(None)
            }
        }
    }

    /// The directory entry of `key` read from the store, bypassing (and refreshing) the cache:
    /// after a cached entry led to a shard without the row, which a reassignment may explain.
    pub(crate) async fn directory_lookup_fresh(
        &self,
        table: &str,
        key: &Key,
    ) -> Result<Option<usize>> {
        self.inner.cache.invalidate(table, key);
        self.directory_lookup(table, key).await
    }

    /// The directory entry of `key` (cache first), as a shard index. Never writes.
    pub async fn directory_lookup(&self, table: &str, key: &Key) -> Result<Option<usize>> {
        Ok(self.directory_lookup_traced(table, key).await?.0)
    }

    /// [`CollegeDb::directory_lookup`], and whether the answer was read from the store now
    /// (`false`: from the cache).
    pub(crate) async fn directory_lookup_traced(
        &self,
        table: &str,
        key: &Key,
    ) -> Result<(Option<usize>, bool)> {
        if let Some(shard) = self.inner.cache.get(table, key) {
            return Ok((Some(shard), false));
        }
        self.inner.directory_reads.fetch_add(1, Ordering::Relaxed);
        match self.inner.directory.lookup(table, key).await? {
            Some(name) => {
                let shard = self.directory_shard(&name)?;
                self.inner.cache.insert(table, key, shard);
                Ok((Some(shard), true))
            }
            None => Ok((None, true)),
        }
    }

    /// The owner of `key`, directory-first: its entry, else its hash shard. Never writes.
    pub async fn owner(&self, table: &str, key: &Key) -> Result<usize> {
        Ok(match self.directory_lookup(table, key).await? {
            Some(shard) => shard,
            None => self.hash_shard(key),
        })
    }

    /// Places a new key with `strategy` and returns its owner. Non-deterministic strategies claim
    /// a directory entry; if another writer claimed first, its shard is returned.
    pub async fn place(&self, table: &str, key: &Key, strategy: Strategy) -> Result<usize> {
        // The common cases, without the batch's allocations: hash placement, and a key this
        // process has placed or seen.
        if strategy == Strategy::Hash {
            return Ok(self.hash_shard(key));
        }
        if let Some(shard) = self.inner.cache.get(table, key) {
            return Ok(shard);
        }
        Ok(self
            .place_many(table, std::slice::from_ref(key), strategy)
            .await?[0])
    }

    /// Places many new keys, as [`CollegeDb::place`] does each, with the directory claims sent in
    /// batches (one transaction per batch on the embedded store). Returns each key's owner, in
    /// order.
    pub async fn place_many(
        &self,
        table: &str,
        keys: &[Key],
        strategy: Strategy,
    ) -> Result<Vec<usize>> {
        let inner = &self.inner;
        if strategy == Strategy::Hash {
            return Ok(keys.iter().map(|key| self.hash_shard(key)).collect());
        }
        let mut owners = vec![usize::MAX; keys.len()];
        let mut claims = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            // A key this process has placed or seen keeps its shard: no ticket, no claim.
            if let Some(shard) = inner.cache.get(table, key) {
                owners[index] = shard;
                continue;
            }
            let candidate = self.candidate(table, strategy).await?;
            // Marker first, then entry, then row: see `crate::marker`. Set even when the
            // candidate is the hash shard: another writer's claim may win, and a shard appended
            // later copies the markers of every shard.
            self.mark_off_hash(table, self.hash_shard(key)).await?;
            claims.push((index, key.clone(), self.shard_name(candidate).to_owned()));
        }
        for batch in claims.chunks(CLAIM_BATCH) {
            let entries: Vec<(Key, String)> = batch
                .iter()
                .map(|(_, key, shard)| (key.clone(), shard.clone()))
                .collect();
            inner
                .directory_writes
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            let winners = inner.directory.claim_many(table, &entries).await?;
            for ((index, key, _), winner) in batch.iter().zip(winners) {
                let shard = self.directory_shard(&winner)?;
                inner.cache.insert(table, key, shard);
                owners[*index] = shard;
            }
        }
        Ok(owners)
    }

    /// The shard a non-deterministic strategy proposes for a new key.
    async fn candidate(&self, table: &str, strategy: Strategy) -> Result<usize> {
        let inner = &self.inner;
        Ok(match strategy {
            Strategy::Hash => unreachable!("hash placement proposes no candidate"),
            Strategy::Random => self.routing().placer.random(),
            Strategy::Location => self.routing().placer.location(self.region)?,
            Strategy::RoundRobin => {
                let ticket = match inner.coordinator.next_ticket(table).await {
                    Ok(ticket) => ticket,
                    Err(_)
                        if inner.config.coordinator_fallback
                            == CoordinatorFallback::LocalCounter =>
                    {
                        inner.fallback_tickets.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(error) => return Err(error),
                };
                self.routing().placer.round_robin(ticket)
            }
        })
    }

    /// Sets the off-hash marker of `table` on `hash_shard`, unless this isolate has seen it set.
    /// Must precede every directory write that names a shard other than the key's hash shard.
    pub(crate) async fn mark_off_hash(&self, table: &str, hash_shard: usize) -> Result<()> {
        if self.inner.cache.is_marked(table, hash_shard) {
            return Ok(());
        }
        crate::marker::set(self, hash_shard, table).await?;
        self.inner.cache.set_marked(table, hash_shard);
        Ok(())
    }

    /// Records that `hash_shard` carries the off-hash marker of `table`, seen in a query result.
    pub(crate) fn note_marked(&self, table: &str, hash_shard: usize) {
        self.inner.cache.set_marked(table, hash_shard);
    }

    /// After a miss on `hash_shard`: whether a directory entry may still place the key elsewhere
    /// (the off-hash marker is set). `false` means the miss is final.
    pub(crate) async fn may_be_elsewhere(&self, table: &str, hash_shard: usize) -> Result<bool> {
        if self.inner.cache.is_marked(table, hash_shard) {
            return Ok(true);
        }
        // A marker read from a replica could be older than the placement it records.
        let shard = crate::backend::ShardConn::primary(&self.inner.shards[hash_shard]);
        let marked = crate::marker::get(shard, table).await?;
        if marked {
            self.inner.cache.set_marked(table, hash_shard);
        }
        Ok(marked)
    }

    /// How many directory store calls this handle (and its clones) made.
    pub fn directory_ops(&self) -> DirectoryOps {
        DirectoryOps {
            reads: self.inner.directory_reads.load(Ordering::Relaxed),
            writes: self.inner.directory_writes.load(Ordering::Relaxed),
        }
    }

    /// The coordinator (for its own API, such as the Cloudflare coordinator's HTTP client).
    pub fn coordinator(&self) -> &B::Coordinator {
        &self.inner.coordinator
    }

    /// Notes a change in `table`'s row count on `shard`, for coordinators that keep statistics.
    pub(crate) fn note_rows(&self, shard: usize, table: &str, delta: i64) {
        if delta == 0 || !self.inner.coordinator.tracks_rows() {
            return;
        }
        let mut pending = self
            .inner
            .pending_rows
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *pending.entry((shard, table.to_owned())).or_default() += delta;
    }

    /// Hands the row-count changes of this handle's writes to the coordinator's
    /// [`Coordinator::record_rows`]. The Cloudflare coordinator only adds them to a per-isolate
    /// batch and sends that batch at most once per interval (see its `StatsBatching`), so this
    /// makes no remote call per write. On failure the changes are kept and handed over by the
    /// next call.
    pub async fn sync_stats(&self) -> Result<()> {
        let drained: Vec<((usize, String), i64)> = {
            let mut pending = self
                .inner
                .pending_rows
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        if drained.is_empty() {
            return Ok(());
        }
        let deltas = drained
            .iter()
            .map(|((shard, table), delta)| RowDelta {
                shard: self.shard_name(*shard).to_owned(),
                table: table.clone(),
                delta: *delta,
            })
            .collect();
        let result = self.inner.coordinator.record_rows(deltas).await;
        if result.is_err() {
            let mut pending = self
                .inner
                .pending_rows
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (key, delta) in drained {
                *pending.entry(key).or_default() += delta;
            }
        }
        result
    }

    pub(crate) fn flush_allowed(&self) -> Result<()> {
        if self.inner.config.allow_flush {
            Ok(())
        } else {
            Err(Error::FlushDisabled)
        }
    }

    pub(crate) async fn clear_directory(&self) -> Result<()> {
        self.inner.cache.clear();
        self.inner.directory.clear().await
    }

    fn directory_shard(&self, name: &str) -> Result<usize> {
        self.shard_by_name(name).map_err(|_| {
            Error::DirectoryInconsistent(format!(
                "the directory names shard `{name}`, which is not configured; restore it to the shard list"
            ))
        })
    }
}

/// A shard map resolved against this handle's configuration.
struct Routing {
    map: Arc<ShardMap>,
    /// For each slot, the configuration index of its owner.
    owner: Vec<u16>,
    /// Placement among the shards that own slots.
    placer: Placer,
}

impl Routing {
    fn new(config: &Config, shard_index: &HashMap<String, usize>, map: ShardMap) -> Result<Self> {
        let mut index_of = Vec::with_capacity(map.shards().len());
        for name in map.shards() {
            index_of.push(*shard_index.get(name).ok_or_else(|| {
                Error::config(format!(
                    "the shard map (version {}) gives slots to shard `{name}`, which this process does not configure: add it to the configuration",
                    map.version()
                ))
            })? as u16);
        }
        let mut owner = Vec::with_capacity(SLOTS);
        let mut eligible = vec![false; config.shards.len()];
        for name in map.owners() {
            let index = shard_index[name];
            eligible[index] = true;
            owner.push(index as u16);
        }
        Ok(Routing {
            placer: Placer::among(config, &eligible),
            map: Arc::new(map),
            owner,
        })
    }
}

/// The wait of a statement whose slot is being switched to another shard: short pauses that
/// grow, up to a total after which the caller gets [`Error::SlotMoving`].
pub(crate) struct Backoff {
    next_ms: u64,
    waited_ms: u64,
}

impl Backoff {
    /// The longest total wait, in milliseconds: a switch-over takes milliseconds natively and a
    /// few round trips on D1, so only a move stopped mid-switch (resume it) exhausts this.
    const LIMIT_MS: u64 = 10_000;

    pub(crate) fn new() -> Self {
        Backoff {
            next_ms: 1,
            waited_ms: 0,
        }
    }

    /// Waits a little longer each time; fails with [`Error::SlotMoving`] after 10 s in all.
    pub(crate) async fn wait(&mut self, slot: i64) -> Result<()> {
        if self.waited_ms >= Self::LIMIT_MS {
            return Err(Error::SlotMoving { slot });
        }
        pause(std::time::Duration::from_millis(self.next_ms)).await;
        self.waited_ms += self.next_ms;
        self.next_ms = (self.next_ms * 2).min(50);
        Ok(())
    }
}

/// Waits without holding an executor thread: on the blocking pool natively, on a timer in a
/// Worker. Builds without either only yield.
pub(crate) async fn pause(duration: std::time::Duration) {
    #[cfg(all(feature = "embedded", not(target_arch = "wasm32")))]
    blocking::unblock(move || std::thread::sleep(duration)).await;
    #[cfg(all(feature = "cloudflare", target_arch = "wasm32"))]
    worker::Delay::from(duration).await;
    #[cfg(not(any(
        all(feature = "embedded", not(target_arch = "wasm32")),
        all(feature = "cloudflare", target_arch = "wasm32")
    )))]
    let _ = duration;
}

/// Whether a lookup strategy asks the hash shard before the directory.
pub(crate) fn hash_first(read: Strategy) -> bool {
    read.is_deterministic()
}
