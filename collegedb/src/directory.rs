//! The key-to-shard directory: the [`Directory`] store trait and the bounded in-memory cache that
//! sits in front of every store.
//!
//! The directory records where keys placed by non-deterministic strategies (round-robin, random,
//! location) live. Keys placed by hash are never recorded: their shard follows from the key.
//! Entries are scoped per table, never by the bare key.
//!
//! The cache holds only positive entries (a key's shard, which does not change unless the key is
//! moved). Misses are never cached, so a key another process places later is still found.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use crate::backend::{MaybeSend, MaybeSync};
use crate::error::Result;
use crate::key::Key;

/// A page of directory entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectoryPage {
    /// `(key, shard name)` pairs, in key order.
    pub entries: Vec<(Key, String)>,
    /// Pass to the next `list` call to continue; `None` when this was the last page. Opaque: its
    /// form depends on the store.
    pub cursor: Option<String>,
}

/// The key-to-shard store. Entries are scoped per table: `users/1` and `orders/1` are distinct.
///
/// Implementations must make [`Directory::claim`] atomic: of concurrent claims for one absent key,
/// exactly one shard wins and every caller learns which.
pub trait Directory: MaybeSync + 'static {
    /// The shard recorded for `key`, if any. Never writes.
    fn lookup(
        &self,
        table: &str,
        key: &Key,
    ) -> impl Future<Output = Result<Option<String>>> + MaybeSend;

    /// Records `shard` for `key` unless an entry exists; returns the entry that holds afterwards.
    fn claim(
        &self,
        table: &str,
        key: &Key,
        shard: &str,
    ) -> impl Future<Output = Result<String>> + MaybeSend;

    /// Claims many keys of one table, as [`Directory::claim`] does each; returns the entry that
    /// holds afterwards for each, in order. Stores that can group the claims override this; the
    /// default claims one key after another.
    fn claim_many(
        &self,
        table: &str,
        claims: &[(Key, String)],
    ) -> impl Future<Output = Result<Vec<String>>> + MaybeSend {
        async move {
            let mut winners = Vec::with_capacity(claims.len());
            for (key, shard) in claims {
                winners.push(self.claim(table, key, shard).await?);
            }
            Ok(winners)
        }
    }

    /// Records `shard` for `key`, replacing any entry (used when a key moves).
    fn assign(
        &self,
        table: &str,
        key: &Key,
        shard: &str,
    ) -> impl Future<Output = Result<()>> + MaybeSend;

    /// Removes the entry for `key`, if any.
    fn remove(&self, table: &str, key: &Key) -> impl Future<Output = Result<()>> + MaybeSend;

    /// Whether [`Directory::replace`] and [`Directory::remove_if`] are atomic. Unique lookups
    /// (see [`crate::unique`]) refuse to write through a store that answers `false`.
    fn compares_and_sets(&self) -> bool {
        true
    }

    /// Sets the entry for `key` to `value` only if it is `expected` now; returns the entry that
    /// holds afterwards (`None`: there is none). Unique lookups (see [`crate::unique`]) take an
    /// orphan entry over with it, and confirm their own.
    ///
    /// Stores must make it atomic, as [`Directory::claim`]. The default reads, then writes: it
    /// is not atomic, and suits only a store that cannot do better (KV).
    fn replace(
        &self,
        table: &str,
        key: &Key,
        expected: &str,
        value: &str,
    ) -> impl Future<Output = Result<Option<String>>> + MaybeSend {
        async move {
            match self.lookup(table, key).await? {
                Some(current) if current == expected => {
                    self.assign(table, key, value).await?;
                    Ok(Some(value.to_owned()))
                }
                other => Ok(other),
            }
        }
    }

    /// [`Directory::replace`] of many keys of one table (`(key, expected, value)`); returns the
    /// entry that holds afterwards for each, in order. Stores that can group the writes override
    /// this (one transaction natively, one request per directory partition on Workers); the
    /// default replaces one key after another.
    fn replace_many(
        &self,
        table: &str,
        replacements: &[(Key, String, String)],
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + MaybeSend {
        async move {
            let mut after = Vec::with_capacity(replacements.len());
            for (key, expected, value) in replacements {
                after.push(self.replace(table, key, expected, value).await?);
            }
            Ok(after)
        }
    }

    /// Removes the entry for `key` only if it is `expected` now. Atomic in the stores that make
    /// [`Directory::replace`] atomic; the default reads, then removes.
    fn remove_if(
        &self,
        table: &str,
        key: &Key,
        expected: &str,
    ) -> impl Future<Output = Result<()>> + MaybeSend {
        async move {
            if self.lookup(table, key).await?.as_deref() == Some(expected) {
                self.remove(table, key).await?;
            }
            Ok(())
        }
    }

    /// Lists a table's entries, `limit` at a time, continuing after `cursor`.
    fn list(
        &self,
        table: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<DirectoryPage>> + MaybeSend;

    /// The number of entries over all tables.
    fn count(&self) -> impl Future<Output = Result<u64>> + MaybeSend;

    /// Removes every entry (for [`flush`](crate::CollegeDb::flush)).
    fn clear(&self) -> impl Future<Output = Result<()>> + MaybeSend;
}

/// A bounded LRU of `(table, key) -> shard index`, one LRU per table so that a lookup hashes the
/// key in place without building an owned composite key.
#[derive(Debug)]
pub struct DirectoryCache {
    capacity: Option<NonZeroUsize>,
    tables: Mutex<HashMap<String, LruCache<Key, u16>>>,
    /// `(table, shard)` pairs whose off-hash marker is known to be set (see [`crate::marker`]).
    marked: Mutex<HashMap<String, HashSet<u16>>>,
    /// The newest shard map seen by a handle sharing this cache, so that handles built per
    /// request start from it rather than from the configured seed.
    map: Mutex<Option<std::sync::Arc<crate::slots::ShardMap>>>,
    /// Unique lookups: `(scope, hash of the value) -> the key of the row that had it`. Safe to
    /// be stale, or to collide: every use checks the row (see [`crate::unique`]). Keyed by the
    /// value's 64-bit hash, so a lookup compares no string.
    owners: Mutex<HashMap<String, LruCache<u64, crate::unique::Owner>>>,
}

impl DirectoryCache {
    /// A cache holding up to `capacity` entries per table; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        DirectoryCache {
            capacity: NonZeroUsize::new(capacity),
            tables: Mutex::new(HashMap::new()),
            marked: Mutex::new(HashMap::new()),
            map: Mutex::new(None),
            owners: Mutex::new(HashMap::new()),
        }
    }

    fn owners(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, LruCache<u64, crate::unique::Owner>>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of the row last seen holding `value` in the unique lookup `scope`.
    pub(crate) fn owner(&self, scope: &str, value: &Key) -> Option<crate::unique::Owner> {
        self.capacity?;
        self.owners()
            .get_mut(scope)
            .and_then(|lru| lru.get(&value.placement_hash()).cloned())
    }

    /// Remembers that the row of `owner` holds `value` in the unique lookup `scope`.
    pub(crate) fn remember_owner(&self, scope: &str, value: &Key, owner: &crate::unique::Owner) {
        let Some(capacity) = self.capacity else {
            return;
        };
        let mut owners = self.owners();
        let lru = match owners.get_mut(scope) {
            Some(lru) => lru,
            None => owners
                .entry(scope.to_owned())
                .or_insert_with(|| LruCache::new(capacity)),
        };
        lru.put(value.placement_hash(), owner.clone());
    }

    /// Forgets the owner of `value` in the unique lookup `scope`.
    pub(crate) fn forget_owner(&self, scope: &str, value: &Key) {
        if let Some(lru) = self.owners().get_mut(scope) {
            lru.pop(&value.placement_hash());
        }
    }

    /// The newest shard map a handle sharing this cache has routed by.
    pub(crate) fn known_map(&self) -> Option<std::sync::Arc<crate::slots::ShardMap>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers `map` if it is newer than the one known.
    pub(crate) fn remember_map(&self, map: &std::sync::Arc<crate::slots::ShardMap>) {
        let mut known = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if known.as_ref().is_none_or(|k| k.version() < map.version()) {
            *known = Some(map.clone());
        }
    }

    /// Remembers `map`, read from the store, unless the one known is newer: a stored map also
    /// replaces a handle's guess of the same version.
    pub(crate) fn remember_stored_map(&self, map: &std::sync::Arc<crate::slots::ShardMap>) {
        let mut known = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if known.as_ref().is_none_or(|k| k.version() <= map.version()) {
            *known = Some(map.clone());
        }
    }

    /// Whether `shard` is known to carry the off-hash marker of `table`.
    pub fn is_marked(&self, table: &str, shard: usize) -> bool {
        let marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        marked
            .get(table)
            .is_some_and(|shards| shards.contains(&(shard as u16)))
    }

    /// Records that `shard` carries the off-hash marker of `table`.
    pub fn set_marked(&self, table: &str, shard: usize) {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        marked
            .entry(table.to_owned())
            .or_default()
            .insert(shard as u16);
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, HashMap<String, LruCache<Key, u16>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached shard index of `key`, if any.
    pub fn get(&self, table: &str, key: &Key) -> Option<usize> {
        self.capacity?;
        self.tables()
            .get_mut(table)
            .and_then(|lru| lru.get(key).map(|&shard| shard as usize))
    }

    /// Caches the shard index of `key`.
    pub fn insert(&self, table: &str, key: &Key, shard: usize) {
        let Some(capacity) = self.capacity else {
            return;
        };
        let mut tables = self.tables();
        let lru = match tables.get_mut(table) {
            Some(lru) => lru,
            None => tables
                .entry(table.to_owned())
                .or_insert_with(|| LruCache::new(capacity)),
        };
        lru.put(key.clone(), shard as u16);
    }

    /// Forgets `key` (after a move or delete).
    pub fn invalidate(&self, table: &str, key: &Key) {
        if let Some(lru) = self.tables().get_mut(table) {
            lru.pop(key);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.tables().clear();
        self.owners().clear();
        self.marked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The number of cached entries over all tables.
    pub fn len(&self) -> usize {
        self.tables().values().map(LruCache::len).sum()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_scoped_per_table() {
        let cache = DirectoryCache::new(2);
        cache.insert("users", &Key::Int(1), 0);
        cache.insert("orders", &Key::Int(1), 2);
        assert_eq!(cache.get("users", &Key::Int(1)), Some(0));
        assert_eq!(cache.get("orders", &Key::Int(1)), Some(2));
        cache.insert("users", &Key::Int(2), 1);
        cache.insert("users", &Key::Int(3), 1);
        assert_eq!(
            cache.get("users", &Key::Int(1)),
            None,
            "least recently used is evicted"
        );
        assert_eq!(cache.len(), 3);
        cache.invalidate("users", &Key::Int(3));
        assert_eq!(cache.get("users", &Key::Int(3)), None);
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let cache = DirectoryCache::new(0);
        cache.insert("users", &Key::Int(1), 0);
        assert_eq!(cache.get("users", &Key::Int(1)), None);
        assert!(cache.is_empty());
    }
}
