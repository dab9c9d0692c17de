//! A Cloudflare shard: a D1 database or a Durable Object with SQLite storage, chosen per shard in
//! the configuration ([`crate::ShardConfig::durable_object`]). Both run the same SQL with the
//! same value mapping and the same typed errors, so every model and every operation works on
//! either, and one deployment can mix them.

use super::{D1Shard, ObjectShard};
use crate::backend::{Row, ShardConn, Statement};
use crate::error::Result;
use crate::value::Value;

/// One shard of the Cloudflare backend.
#[derive(Debug)]
pub enum CloudflareShard {
    /// A D1 database binding.
    D1(D1Shard),
    /// A Durable Object with SQLite storage.
    Object(ObjectShard),
}

impl CloudflareShard {
    /// The shard's configured name.
    pub fn name(&self) -> &str {
        match self {
            CloudflareShard::D1(shard) => shard.name(),
            CloudflareShard::Object(shard) => shard.name(),
        }
    }

    /// The latest D1 session bookmark (see [`D1Shard::bookmark`]); `None` for a Durable Object
    /// shard, which has one copy and needs none.
    pub fn bookmark(&self) -> Result<Option<String>> {
        match self {
            CloudflareShard::D1(shard) => shard.bookmark(),
            CloudflareShard::Object(_) => Ok(None),
        }
    }
}

impl ShardConn for CloudflareShard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        match self {
            CloudflareShard::D1(shard) => shard.execute(sql, params).await,
            CloudflareShard::Object(shard) => shard.execute(sql, params).await,
        }
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            CloudflareShard::D1(shard) => shard.query(sql, params).await,
            CloudflareShard::Object(shard) => shard.query(sql, params).await,
        }
    }

    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        match self {
            CloudflareShard::D1(shard) => shard.batch(statements).await,
            CloudflareShard::Object(shard) => shard.batch(statements).await,
        }
    }

    async fn size_bytes(&self) -> Result<u64> {
        match self {
            CloudflareShard::D1(shard) => shard.size_bytes().await,
            CloudflareShard::Object(shard) => shard.size_bytes().await,
        }
    }

    fn primary(&self) -> &Self {
        match self {
            CloudflareShard::D1(shard) => match shard.primary_twin() {
                Some(twin) => twin,
                None => self,
            },
            CloudflareShard::Object(_) => self,
        }
    }
}
