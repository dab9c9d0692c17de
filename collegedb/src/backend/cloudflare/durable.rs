//! The strongly consistent directory: Durable Objects with SQLite storage.
//!
//! Entries are spread over [`DIRECTORY_PARTITIONS`] objects named `collegedb-directory-<n>`, chosen
//! by a hash of `(table, key)`, so no single object carries every lookup. Each object keeps a
//! `WITHOUT ROWID` table and runs one request at a time, so a claim (insert-if-absent, then read
//! the winner) is atomic: of concurrent first writes of one key, exactly one shard wins.
//!
//! The client side is [`DurableDirectory`]; the object side is [`serve_directory`], which the
//! Worker's own `#[durable_object]` class calls from its `fetch`.

use serde::{Deserialize, Serialize};
use worker::{Method, ObjectNamespace, Request, RequestInit, Response, SqlStorageValue, State};

use crate::directory::{Directory, DirectoryPage};
use crate::error::{Error, Result};
use crate::key::Key;

/// How many objects the directory is spread over. Fixed: changing it strands entries.
pub const DIRECTORY_PARTITIONS: u32 = 16;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Lookup {
        table: String,
        key: String,
    },
    Claim {
        table: String,
        key: String,
        shard: String,
    },
    /// Claims of keys that share this object, in one request: atomic together.
    ClaimMany {
        table: String,
        claims: Vec<(String, String)>,
    },
    Assign {
        table: String,
        key: String,
        shard: String,
    },
    Remove {
        table: String,
        key: String,
    },
    /// Compare-and-set: `value` if the entry is `expected` now.
    Replace {
        table: String,
        key: String,
        expected: String,
        value: String,
    },
    /// Compare-and-sets of keys that share this object (`(key, expected, value)`), in one
    /// request: atomic together.
    ReplaceMany {
        table: String,
        replacements: Vec<(String, String, String)>,
    },
    /// Removes the entry if it is `expected` now.
    RemoveIf {
        table: String,
        key: String,
        expected: String,
    },
    List {
        table: String,
        after: String,
        limit: usize,
    },
    Count,
    Clear,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entries: Vec<(String, String)>,
    /// Per key of a `ReplaceMany`, in order: the entry afterwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    after: Vec<Option<String>>,
    #[serde(default)]
    count: u64,
}

/// The client of the Durable Object directory.
pub struct DurableDirectory {
    namespace: ObjectNamespace,
}

fn failed(error: impl std::fmt::Display) -> Error {
    Error::Directory(format!("Durable Object directory: {error}"))
}

impl DurableDirectory {
    /// Wraps the directory's Durable Object namespace binding.
    pub fn new(namespace: ObjectNamespace) -> Self {
        DurableDirectory { namespace }
    }

    fn partition_of(table: &str, key_hex: &str) -> u32 {
        let mut bytes = Vec::with_capacity(table.len() + 1 + key_hex.len());
        bytes.extend_from_slice(table.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(key_hex.as_bytes());
        (xxhash_rust::xxh3::xxh3_64(&bytes) % DIRECTORY_PARTITIONS as u64) as u32
    }

    async fn call(&self, partition: u32, op: &Op) -> Result<Reply> {
        let stub = self
            .namespace
            .get_by_name(&format!("collegedb-directory-{partition}"))
            .map_err(failed)?;
        let body = serde_json::to_string(op).map_err(failed)?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_body(Some(body.into()));
        let request =
            Request::new_with_init("https://collegedb-directory/op", &init).map_err(failed)?;
        super::note_subrequest();
        let mut response = stub.fetch_with_request(request).await.map_err(failed)?;
        if response.status_code() != 200 {
            let text = response.text().await.unwrap_or_default();
            return Err(failed(format!("status {}: {text}", response.status_code())));
        }
        response.json().await.map_err(failed)
    }

    async fn keyed(
        &self,
        table: &str,
        key: &Key,
        make: impl FnOnce(String) -> Op,
    ) -> Result<Reply> {
        let key_hex = hex::encode(key.directory_bytes());
        let partition = Self::partition_of(table, &key_hex);
        self.call(partition, &make(key_hex)).await
    }
}

impl Directory for DurableDirectory {
    async fn lookup(&self, table: &str, key: &Key) -> Result<Option<String>> {
        let table_name = table.to_owned();
        Ok(self
            .keyed(table, key, |key| Op::Lookup {
                table: table_name,
                key,
            })
            .await?
            .shard)
    }

    async fn claim(&self, table: &str, key: &Key, shard: &str) -> Result<String> {
        let (table_name, shard) = (table.to_owned(), shard.to_owned());
        self.keyed(table, key, |key| Op::Claim {
            table: table_name,
            key,
            shard,
        })
        .await?
        .shard
        .ok_or_else(|| failed("claim returned no shard"))
    }

    /// One request per directory object that holds some of the keys (at most
    /// [`DIRECTORY_PARTITIONS`], sent concurrently) instead of one per key, so that a large
    /// `insert_many` stays far below the Workers limit of 1,000 subrequests.
    async fn claim_many(&self, table: &str, claims: &[(Key, String)]) -> Result<Vec<String>> {
        let mut by_partition: std::collections::BTreeMap<u32, Vec<(usize, String, String)>> =
            Default::default();
        for (index, (key, shard)) in claims.iter().enumerate() {
            let key_hex = hex::encode(key.directory_bytes());
            by_partition
                .entry(Self::partition_of(table, &key_hex))
                .or_default()
                .push((index, key_hex, shard.clone()));
        }
        let replies =
            futures_util::future::join_all(by_partition.iter().map(|(partition, batch)| {
                let op = Op::ClaimMany {
                    table: table.to_owned(),
                    claims: batch
                        .iter()
                        .map(|(_, key, shard)| (key.clone(), shard.clone()))
                        .collect(),
                };
                async move { self.call(*partition, &op).await }
            }))
            .await;
        let mut winners = vec![String::new(); claims.len()];
        for (batch, reply) in by_partition.values().zip(replies) {
            let reply = reply?;
            if reply.entries.len() != batch.len() {
                return Err(failed("claim_many returned the wrong number of entries"));
            }
            for ((index, _, _), (_, winner)) in batch.iter().zip(reply.entries) {
                winners[*index] = winner;
            }
        }
        Ok(winners)
    }

    async fn assign(&self, table: &str, key: &Key, shard: &str) -> Result<()> {
        let (table_name, shard) = (table.to_owned(), shard.to_owned());
        self.keyed(table, key, |key| Op::Assign {
            table: table_name,
            key,
            shard,
        })
        .await
        .map(drop)
    }

    async fn remove(&self, table: &str, key: &Key) -> Result<()> {
        let table_name = table.to_owned();
        self.keyed(table, key, |key| Op::Remove {
            table: table_name,
            key,
        })
        .await
        .map(drop)
    }

    async fn replace(
        &self,
        table: &str,
        key: &Key,
        expected: &str,
        value: &str,
    ) -> Result<Option<String>> {
        let (table_name, expected, value) =
            (table.to_owned(), expected.to_owned(), value.to_owned());
        Ok(self
            .keyed(table, key, |key| Op::Replace {
                table: table_name,
                key,
                expected,
                value,
            })
            .await?
            .shard)
    }

    /// One request per directory object that holds some of the keys, as
    /// [`claim_many`](Self::claim_many).
    async fn replace_many(
        &self,
        table: &str,
        replacements: &[(Key, String, String)],
    ) -> Result<Vec<Option<String>>> {
        type Batch = Vec<(usize, (String, String, String))>;
        let mut by_partition: std::collections::BTreeMap<u32, Batch> = Default::default();
        for (index, (key, expected, value)) in replacements.iter().enumerate() {
            let key_hex = hex::encode(key.directory_bytes());
            by_partition
                .entry(Self::partition_of(table, &key_hex))
                .or_default()
                .push((index, (key_hex, expected.clone(), value.clone())));
        }
        let replies =
            futures_util::future::join_all(by_partition.iter().map(|(partition, batch)| {
                let op = Op::ReplaceMany {
                    table: table.to_owned(),
                    replacements: batch.iter().map(|(_, r)| r.clone()).collect(),
                };
                async move { self.call(*partition, &op).await }
            }))
            .await;
        let mut after = vec![None; replacements.len()];
        for (batch, reply) in by_partition.values().zip(replies) {
            let reply = reply?;
            if reply.after.len() != batch.len() {
                return Err(failed("replace_many returned the wrong number of entries"));
            }
            for ((index, _), entry) in batch.iter().zip(reply.after) {
                after[*index] = entry;
            }
        }
        Ok(after)
    }

    async fn remove_if(&self, table: &str, key: &Key, expected: &str) -> Result<()> {
        let (table_name, expected) = (table.to_owned(), expected.to_owned());
        self.keyed(table, key, |key| Op::RemoveIf {
            table: table_name,
            key,
            expected,
        })
        .await
        .map(drop)
    }

    /// Walks the partitions in order; the cursor is `<partition>:<last key hex>`.
    async fn list(&self, table: &str, cursor: Option<&str>, limit: usize) -> Result<DirectoryPage> {
        let (mut partition, mut after) = match cursor {
            None => (0, String::new()),
            Some(cursor) => {
                let (p, k) = cursor.split_once(':').ok_or_else(|| {
                    Error::decode("cursor", format!("malformed directory cursor {cursor:?}"))
                })?;
                (
                    p.parse()
                        .map_err(|_| Error::decode("cursor", "malformed directory cursor"))?,
                    k.to_owned(),
                )
            }
        };
        let mut entries = Vec::new();
        while partition < DIRECTORY_PARTITIONS && entries.len() < limit {
            let want = limit - entries.len();
            let op = Op::List {
                table: table.to_owned(),
                after: after.clone(),
                limit: want,
            };
            let reply = self.call(partition, &op).await?;
            let full = reply.entries.len() == want;
            for (key_hex, shard) in reply.entries {
                let bytes = hex::decode(&key_hex).map_err(failed)?;
                after = key_hex;
                entries.push((Key::from_directory_bytes(&bytes)?, shard));
            }
            if !full {
                partition += 1;
                after.clear();
            }
        }
        let cursor = (partition < DIRECTORY_PARTITIONS).then(|| format!("{partition}:{after}"));
        Ok(DirectoryPage { entries, cursor })
    }

    async fn count(&self) -> Result<u64> {
        let mut total = 0;
        for partition in 0..DIRECTORY_PARTITIONS {
            total += self.call(partition, &Op::Count).await?.count;
        }
        Ok(total)
    }

    async fn clear(&self) -> Result<()> {
        for partition in 0..DIRECTORY_PARTITIONS {
            self.call(partition, &Op::Clear).await?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct ShardRow {
    shard: String,
}

#[derive(Deserialize)]
struct EntryRow {
    key: String,
    shard: String,
}

#[derive(Deserialize)]
struct CountRow {
    n: f64,
}

fn text(value: &str) -> SqlStorageValue {
    SqlStorageValue::String(value.to_owned())
}

/// Serves one directory request inside the directory's Durable Object. Call it from the class's
/// `fetch`:
///
/// ```ignore
/// #[durable_object]
/// pub struct Directory { state: State }
///
/// impl DurableObject for Directory {
///     fn new(state: State, _env: Env) -> Self { Self { state } }
///     async fn fetch(&self, req: Request) -> Result<Response> {
///         collegedb::backend::cloudflare::serve_directory(&self.state, req).await
///     }
/// }
/// ```
pub async fn serve_directory(state: &State, mut request: Request) -> worker::Result<Response> {
    let op: Op = match request.json().await {
        Ok(op) => op,
        Err(e) => return Response::error(format!("bad directory request: {e}"), 400),
    };
    let sql = state.storage().sql();
    sql.exec(
        "CREATE TABLE IF NOT EXISTS directory (
             scope TEXT NOT NULL, key TEXT NOT NULL, shard TEXT NOT NULL,
             PRIMARY KEY (scope, key)
         ) WITHOUT ROWID",
        None,
    )?;
    let shard_of = |table: &str, key: &str| -> worker::Result<Option<String>> {
        let rows: Vec<ShardRow> = sql
            .exec(
                "SELECT shard FROM directory WHERE scope = ? AND key = ?",
                vec![text(table), text(key)],
            )?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| r.shard))
    };
    let reply = match op {
        Op::Lookup { table, key } => Reply {
            shard: shard_of(&table, &key)?,
            ..Reply::default()
        },
        Op::Claim { table, key, shard } => {
            // One request at a time per object, and no await in between: atomic.
            sql.exec(
                "INSERT OR IGNORE INTO directory (scope, key, shard) VALUES (?, ?, ?)",
                vec![text(&table), text(&key), text(&shard)],
            )?;
            Reply {
                shard: shard_of(&table, &key)?,
                ..Reply::default()
            }
        }
        Op::ClaimMany { table, claims } => {
            // No await between the statements: the batch commits together. A claim is
            // idempotent, so a batch cut short by an error is simply sent again.
            let mut entries = Vec::with_capacity(claims.len());
            for (key, shard) in claims {
                sql.exec(
                    "INSERT OR IGNORE INTO directory (scope, key, shard) VALUES (?, ?, ?)",
                    vec![text(&table), text(&key), text(&shard)],
                )?;
                let Some(winner) = shard_of(&table, &key)? else {
                    return Response::error("claim left no entry", 500);
                };
                entries.push((key, winner));
            }
            Reply {
                entries,
                ..Reply::default()
            }
        }
        Op::Assign { table, key, shard } => {
            sql.exec(
                "INSERT INTO directory (scope, key, shard) VALUES (?, ?, ?)
                 ON CONFLICT (scope, key) DO UPDATE SET shard = excluded.shard",
                vec![text(&table), text(&key), text(&shard)],
            )?;
            Reply::default()
        }
        Op::Remove { table, key } => {
            sql.exec(
                "DELETE FROM directory WHERE scope = ? AND key = ?",
                vec![text(&table), text(&key)],
            )?;
            Reply::default()
        }
        Op::Replace {
            table,
            key,
            expected,
            value,
        } => {
            // One request at a time per object, and no await in between: atomic.
            sql.exec(
                "UPDATE directory SET shard = ? WHERE scope = ? AND key = ? AND shard = ?",
                vec![text(&value), text(&table), text(&key), text(&expected)],
            )?;
            Reply {
                shard: shard_of(&table, &key)?,
                ..Reply::default()
            }
        }
        Op::ReplaceMany {
            table,
            replacements,
        } => {
            // No await between the statements: the batch commits together. A compare-and-set
            // that applied leaves the entry at `value`, so a batch sent again reports the same.
            let mut after = Vec::with_capacity(replacements.len());
            for (key, expected, value) in replacements {
                sql.exec(
                    "UPDATE directory SET shard = ? WHERE scope = ? AND key = ? AND shard = ?",
                    vec![text(&value), text(&table), text(&key), text(&expected)],
                )?;
                after.push(shard_of(&table, &key)?);
            }
            Reply {
                after,
                ..Reply::default()
            }
        }
        Op::RemoveIf {
            table,
            key,
            expected,
        } => {
            sql.exec(
                "DELETE FROM directory WHERE scope = ? AND key = ? AND shard = ?",
                vec![text(&table), text(&key), text(&expected)],
            )?;
            Reply::default()
        }
        Op::List {
            table,
            after,
            limit,
        } => {
            let rows: Vec<EntryRow> = sql
                .exec(
                    "SELECT key, shard FROM directory WHERE scope = ? AND key > ? ORDER BY key LIMIT ?",
                    vec![text(&table), text(&after), SqlStorageValue::Integer(limit as i64)],
                )?
                .to_array()?;
            Reply {
                entries: rows.into_iter().map(|r| (r.key, r.shard)).collect(),
                ..Reply::default()
            }
        }
        Op::Count => {
            let rows: Vec<CountRow> = sql
                .exec("SELECT COUNT(*) AS n FROM directory", None)?
                .to_array()?;
            Reply {
                count: rows.first().map_or(0, |r| r.n as u64),
                ..Reply::default()
            }
        }
        Op::Clear => {
            sql.exec("DELETE FROM directory", None)?;
            Reply::default()
        }
    };
    Response::from_json(&reply)
}
