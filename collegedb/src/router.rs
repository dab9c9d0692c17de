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
use std::sync::Arc;

use crate::backend::{Backend, Coordinator};
use crate::config::{Config, Region, Strategies, Strategy};
use crate::directory::{Directory, DirectoryCache};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::placement::Placer;

/// A sharded database: the entry point of the library.
///
/// Cheap to clone (an `Arc` inside); share one per process (per isolate on Workers) so the
/// directory cache is shared too.
pub struct CollegeDb<B: Backend> {
    inner: Arc<Inner<B>>,
    region: Option<Region>,
}

impl<B: Backend> Clone for CollegeDb<B> {
    fn clone(&self) -> Self {
        CollegeDb {
            inner: self.inner.clone(),
            region: self.region,
        }
    }
}

impl<B: Backend> std::fmt::Debug for CollegeDb<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollegeDb")
            .field("shards", &self.inner.config.shards)
            .field("strategy", &self.inner.config.strategy)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

struct Inner<B: Backend> {
    config: Config,
    shards: Vec<B::Shard>,
    shard_index: HashMap<String, usize>,
    directory: B::Directory,
    cache: DirectoryCache,
    coordinator: B::Coordinator,
    placer: Placer,
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
        config.validate()?;
        let names: Vec<String> = config.shards.iter().map(|s| s.name.clone()).collect();
        let (shards, directory, coordinator) =
            crate::backend::embedded::open(folder.as_ref(), &names)?;
        Self::from_parts(config, shards, directory, coordinator)
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
        config.validate()?;
        if shards.len() != config.shards.len() {
            return Err(Error::config(format!(
                "{} shard connections for {} configured shards",
                shards.len(),
                config.shards.len()
            )));
        }
        let shard_index = config
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let region = config.target_region;
        Ok(CollegeDb {
            inner: Arc::new(Inner {
                cache: DirectoryCache::new(config.directory_cache_capacity),
                placer: Placer::new(&config),
                config,
                shards,
                shard_index,
                directory,
                coordinator,
            }),
            region,
        })
    }

    /// A handle whose `location` placements target `region` (shares everything else).
    #[must_use]
    pub fn near(&self, region: Region) -> Self {
        CollegeDb {
            inner: self.inner.clone(),
            region: Some(region),
        }
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

    pub(crate) fn shards(&self) -> &[B::Shard] {
        &self.inner.shards
    }

    pub(crate) fn shard(&self, index: usize) -> &B::Shard {
        &self.inner.shards[index]
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

    /// The hash shard of `key`: where hash placement puts it, and the owner when it has no
    /// directory entry.
    #[inline]
    pub fn hash_shard(&self, key: &Key) -> usize {
        self.inner.placer.hash(key)
    }

    /// The directory entry of `key` (cache first), as a shard index. Never writes.
    pub async fn directory_lookup(&self, table: &str, key: &Key) -> Result<Option<usize>> {
        if let Some(shard) = self.inner.cache.get(table, key) {
            return Ok(Some(shard));
        }
        match self.inner.directory.lookup(table, key).await? {
            Some(name) => {
                let shard = self.directory_shard(&name)?;
                self.inner.cache.insert(table, key, shard);
                Ok(Some(shard))
            }
            None => Ok(None),
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
        let inner = &self.inner;
        let candidate = match strategy {
            Strategy::Hash => return Ok(self.hash_shard(key)),
            Strategy::Random => inner.placer.random(),
            Strategy::Location => inner.placer.location(self.region)?,
            Strategy::RoundRobin => {
                let ticket = inner.coordinator.next_ticket(table).await?;
                inner.placer.round_robin(ticket)
            }
        };
        if let Some(shard) = inner.cache.get(table, key) {
            return Ok(shard);
        }
        let winner = inner
            .directory
            .claim(table, key, self.shard_name(candidate))
            .await?;
        let shard = self.directory_shard(&winner)?;
        inner.cache.insert(table, key, shard);
        Ok(shard)
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
            Error::Directory(format!(
                "the directory names shard `{name}`, which is not configured; restore it to the shard list"
            ))
        })
    }
}

/// Whether a lookup strategy asks the hash shard before the directory.
pub(crate) fn hash_first(read: Strategy) -> bool {
    read.is_deterministic()
}
