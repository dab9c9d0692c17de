//! The Cloudflare KV directory (the seed's store).
//!
//! Entry names are `<table>/<tag><key>`: `i` and the decimal integer, or `s` and the string, so a
//! listing with the prefix `<table>/` reads keys back. A name that would exceed KV's 512-byte limit
//! becomes `<table>/h<XXH3-128 of the key, hex>`, with the key kept in the entry's metadata.
//! Listing follows KV's own cursors, page after page.
//!
//! **Consistency caveats.** KV is eventually consistent (a write can take about 60 s to reach
//! other locations), allows one write per second per key, and has no compare-and-set. So a
//! [`claim`](crate::directory::Directory::claim) here is a read followed by a write: two isolates
//! in different locations placing the *same new key* at the same moment can both win, and a key
//! placed in one location may not be visible in another for a while. Use the Durable Object
//! directory ([`super::DurableDirectory`]) when concurrent first writes of one key can happen, or
//! when a write must be visible everywhere at once; use KV for read-heavy data whose keys are
//! created once, by one writer.

use serde::{Deserialize, Serialize};
use worker::KvStore;

use crate::directory::{Directory, DirectoryPage};
use crate::error::{Error, Result};
use crate::key::Key;

/// KV's key-length limit in bytes.
const KV_KEY_LIMIT: usize = 512;
/// KV's largest page.
const KV_PAGE_LIMIT: usize = 1000;

/// The key-to-shard directory on a KV namespace.
pub struct KvDirectory {
    kv: KvStore,
}

#[derive(Serialize, Deserialize)]
struct LongKey {
    /// Hex of [`Key::directory_bytes`].
    key: String,
}

fn kv_failed(error: impl std::fmt::Display) -> Error {
    Error::Directory(format!("KV: {error}"))
}

impl KvDirectory {
    /// Wraps a KV namespace binding.
    pub fn new(kv: KvStore) -> Self {
        KvDirectory { kv }
    }

    /// The entry name of `key`, and the metadata that carries it if the name had to be hashed.
    pub fn entry_name(table: &str, key: &Key) -> (String, Option<String>) {
        let name = match key {
            Key::Int(i) => format!("{table}/i{i}"),
            Key::Text(s) => format!("{table}/s{s}"),
        };
        if name.len() <= KV_KEY_LIMIT {
            return (name, None);
        }
        let bytes = key.directory_bytes();
        let digest = xxhash_rust::xxh3::xxh3_128(&bytes);
        (format!("{table}/h{digest:032x}"), Some(hex::encode(bytes)))
    }

    fn parse_name(table: &str, name: &str, metadata: Option<&serde_json::Value>) -> Result<Key> {
        let rest = name
            .strip_prefix(table)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| {
                Error::DirectoryInconsistent(format!("KV entry {name:?} is outside `{table}`"))
            })?;
        let malformed =
            || Error::DirectoryInconsistent(format!("malformed KV directory entry {name:?}"));
        match rest.split_at_checked(1) {
            Some(("i", digits)) => digits.parse().map(Key::Int).map_err(|_| malformed()),
            Some(("s", text)) => Ok(Key::Text(text.to_owned())),
            Some(("h", _)) => {
                let long: LongKey = metadata
                    .cloned()
                    .and_then(|m| serde_json::from_value(m).ok())
                    .ok_or_else(malformed)?;
                let bytes = hex::decode(long.key).map_err(|_| malformed())?;
                Key::from_directory_bytes(&bytes)
            }
            _ => Err(malformed()),
        }
    }

    async fn put(&self, name: &str, shard: &str, long_key: Option<String>) -> Result<()> {
        let mut put = self.kv.put(name, shard).map_err(kv_failed)?;
        if let Some(key) = long_key {
            put = put.metadata(LongKey { key }).map_err(kv_failed)?;
        }
        super::note_subrequest();
        put.execute().await.map_err(kv_failed)
    }
}

impl Directory for KvDirectory {
    /// KV has no compare-and-set: [`Directory::replace`] reads, then writes.
    fn compares_and_sets(&self) -> bool {
        false
    }

    async fn lookup(&self, table: &str, key: &Key) -> Result<Option<String>> {
        let (name, _) = Self::entry_name(table, key);
        {
            super::note_subrequest();
            self.kv.get(&name).text().await
        }
        .map_err(kv_failed)
    }

    async fn claim(&self, table: &str, key: &Key, shard: &str) -> Result<String> {
        let (name, long_key) = Self::entry_name(table, key);
        if let Some(existing) = {
            super::note_subrequest();
            self.kv.get(&name).text().await
        }
        .map_err(kv_failed)?
        {
            return Ok(existing);
        }
        self.put(&name, shard, long_key).await?;
        Ok(shard.to_owned())
    }

    async fn assign(&self, table: &str, key: &Key, shard: &str) -> Result<()> {
        let (name, long_key) = Self::entry_name(table, key);
        self.put(&name, shard, long_key).await
    }

    async fn remove(&self, table: &str, key: &Key) -> Result<()> {
        let (name, _) = Self::entry_name(table, key);
        {
            super::note_subrequest();
            self.kv.delete(&name).await
        }
        .map_err(kv_failed)
    }

    async fn list(&self, table: &str, cursor: Option<&str>, limit: usize) -> Result<DirectoryPage> {
        let mut list = self
            .kv
            .list()
            .prefix(format!("{table}/"))
            .limit(limit.clamp(1, KV_PAGE_LIMIT) as u64);
        if let Some(cursor) = cursor {
            list = list.cursor(cursor.to_owned());
        }
        let page = {
            super::note_subrequest();
            list.execute().await.map_err(kv_failed)?
        };
        let mut entries = Vec::with_capacity(page.keys.len());
        for entry in &page.keys {
            let key = Self::parse_name(table, &entry.name, entry.metadata.as_ref())?;
            // Listing returns names only: one read per entry for its shard.
            super::note_subrequest();
            let shard = self
                .kv
                .get(&entry.name)
                .text()
                .await
                .map_err(kv_failed)?
                .unwrap_or_default();
            entries.push((key, shard));
        }
        Ok(DirectoryPage {
            entries,
            cursor: if page.list_complete {
                None
            } else {
                page.cursor
            },
        })
    }

    async fn count(&self) -> Result<u64> {
        let mut total = 0;
        let mut cursor: Option<String> = None;
        loop {
            let mut list = self.kv.list().limit(KV_PAGE_LIMIT as u64);
            if let Some(c) = cursor.take() {
                list = list.cursor(c);
            }
            let page = {
                super::note_subrequest();
                list.execute().await.map_err(kv_failed)?
            };
            total += page.keys.len() as u64;
            if page.list_complete || page.cursor.is_none() {
                return Ok(total);
            }
            cursor = page.cursor;
        }
    }

    async fn clear(&self) -> Result<()> {
        loop {
            super::note_subrequest();
            let page = self
                .kv
                .list()
                .limit(KV_PAGE_LIMIT as u64)
                .execute()
                .await
                .map_err(kv_failed)?;
            if page.keys.is_empty() {
                return Ok(());
            }
            for entry in page.keys {
                {
                    super::note_subrequest();
                    self.kv.delete(&entry.name).await
                }
                .map_err(kv_failed)?;
            }
        }
    }
}
