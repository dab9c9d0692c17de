//! `adopt`: take over databases that already hold rows, so that every existing row is found by
//! the router.
//!
//! A row that sits on its key's hash shard is found as it is. For every other row, adopt records
//! where it lives: it sets the table's off-hash marker on the key's hash shard (see
//! [`crate::marker`]), then claims a directory entry naming the shard that holds the row. A key
//! found on two databases is a **conflict**: it is reported with every shard holding it, and
//! nothing is recorded for it, so the router keeps serving whichever copy it served before
//! (none is dropped); resolve it by hand and adopt again.
//!
//! Tables and their primary keys are discovered with `PRAGMA table_info`; a table without a
//! single-column primary key is skipped and reported. Keys are read a page at a time
//! ([`crate::verify::PAGE`]); rows are never loaded. Every step is idempotent (claims keep the
//! first entry), so an interrupted adopt is finished by running it again; run it before routed
//! traffic relies on the adopted rows.

use crate::backend::{Backend, ShardConn};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::raw::quote_ident;
use crate::router::CollegeDb;
use crate::verify::KeyPages;

/// What [`CollegeDb::adopt`] did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptedTable {
    /// The table.
    pub table: String,
    /// Its primary-key column.
    pub key_column: String,
    /// Rows seen over every shard.
    pub rows: u64,
    /// Rows on their hash shard: found without a directory entry.
    pub on_hash_shard: u64,
    /// Rows elsewhere, now recorded in the directory (also those recorded by an earlier run).
    pub recorded: u64,
    /// Keys found on more than one shard, with the shards: nothing recorded for them.
    pub conflicts: Vec<(Key, Vec<String>)>,
}

/// What [`CollegeDb::adopt`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// The tables adopted.
    pub tables: Vec<AdoptedTable>,
    /// Tables left alone, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl<B: Backend> CollegeDb<B> {
    /// Adopts every table found on the shards; see the [module docs](crate::adopt).
    pub async fn adopt(&self) -> Result<AdoptReport> {
        let mut report = AdoptReport::default();
        let colocated = crate::colocate::all(self).await?;
        for table in self.describe_tables().await? {
            if let Some(colocation) = colocated.get(&table.name) {
                report.skipped.push((
                    table.name,
                    format!(
                        "colocated with `{}`: its rows follow their `{}` keys",
                        colocation.scope, colocation.route
                    ),
                ));
                continue;
            }
            match table.key_column {
                Some(key) => report
                    .tables
                    .push(self.adopt_table(&table.name, &key).await?),
                None => report.skipped.push((
                    table.name,
                    "no single-column primary key (composite keys are not supported)".into(),
                )),
            }
        }
        Ok(report)
    }

    /// Adopts one table keyed by `key_column`.
    pub async fn adopt_table(&self, table: &str, key_column: &str) -> Result<AdoptedTable> {
        if let Some(colocation) = self.colocation(table).await? {
            return Err(Error::config(format!(
                "`{table}` is colocated with `{}`: its rows follow their `{}` keys, so adopt `{}` and leave `{table}` where its rows are",
                colocation.scope, colocation.route, colocation.scope
            )));
        }
        let mut adopted = AdoptedTable {
            table: table.to_owned(),
            key_column: key_column.to_owned(),
            ..AdoptedTable::default()
        };
        let exists = format!(
            "SELECT 1 FROM {} WHERE {} = ?",
            quote_ident(table),
            quote_ident(key_column)
        );
        let mut pages = KeyPages::new(table, key_column, false);
        // Shards whose fence (and tombstone table) exists, checked once per call.
        let mut fenced = std::collections::HashSet::new();
        for (index, shard) in self.shards().into_iter().enumerate() {
            pages.restart();
            loop {
                let keys = pages.next(shard).await?;
                if keys.is_empty() {
                    break;
                }
                let mut claims = Vec::new();
                let mut tombstones: std::collections::BTreeMap<usize, Vec<crate::value::Value>> =
                    Default::default();
                for value in keys {
                    let key = Key::from_value(value.clone())?;
                    adopted.rows += 1;
                    let hash = self.hash_shard(&key);
                    if hash == index {
                        adopted.on_hash_shard += 1;
                        continue;
                    }
                    // Also on its hash shard: a conflict, found from this side (the hash side
                    // records nothing).
                    if !self
                        .shard(hash)
                        .query(&exists, std::slice::from_ref(&value))
                        .await?
                        .is_empty()
                    {
                        let shards = vec![
                            self.shard_name(hash).to_owned(),
                            self.shard_name(index).to_owned(),
                        ];
                        adopted.conflicts.push((key, shards));
                        continue;
                    }
                    self.mark_off_hash(table, hash).await?;
                    tombstones.entry(hash).or_default().push(value);
                    claims.push((key, self.shard_name(index).to_owned()));
                }
                if claims.is_empty() {
                    continue;
                }
                // Tombstone before entry, as marker before entry: an insert of the key on its
                // hash shard is refused from now on, and follows the entry.
                for (hash, keys) in tombstones {
                    if fenced.insert(hash) {
                        crate::fence::ensure(self, hash).await?;
                    }
                    crate::fence::bury(self.shard(hash), table, &keys).await?;
                }
                let winners = self.directory().claim_many(table, &claims).await?;
                for ((key, shard), winner) in claims.into_iter().zip(winners) {
                    if winner == shard {
                        adopted.recorded += 1;
                        continue;
                    }
                    // An existing entry won. If it names the hash shard, the key lives there:
                    // the tombstone laid for the claim would refuse it.
                    let hash = self.hash_shard(&key);
                    if winner == self.shard_name(hash) {
                        crate::fence::unbury(self.shard(hash), table, &key.to_value()).await?;
                    }
                    adopted.conflicts.push((key, vec![winner, shard]));
                }
            }
        }
        adopted.conflicts.sort();
        Ok(adopted)
    }
}
