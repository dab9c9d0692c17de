//! Atomic batches on one shard: [`CollegeDb::batch_for`] collects typed inserts, updates,
//! upserts and deletes, and raw statements, that all belong with one key, and
//! [`Batch::commit`] runs them as one all-or-nothing unit on the shard that owns that key: one D1
//! `batch()` on Cloudflare (a single transaction), one SQLite transaction natively.
//!
//! ```
//! use collegedb::{CollegeDb, Config, Sharded};
//!
//! #[derive(Sharded, Debug, Clone, PartialEq)]
//! #[sharded(table = "wallets")]
//! struct Wallet { #[sharded(key)] user: String, cents: i64 }
//!
//! #[derive(Sharded, Debug, Clone, PartialEq)]
//! #[sharded(table = "profiles")]
//! struct Profile { #[sharded(key)] user: String, name: String }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # pollster::block_on(async {
//! let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c"]), dir.path())?;
//! Wallet::create_table(&db).await?;
//! Profile::create_table(&db).await?;
//!
//! // Both models are placed by hash, so the rows of one key share a shard: one transaction.
//! let mut batch = db.batch_for::<Wallet>("ada");
//! batch.insert(&Wallet { user: "ada".into(), cents: 500 })?;
//! batch.insert(&Profile { user: "ada".into(), name: "Ada".into() })?;
//! batch.execute("UPDATE wallets SET cents = cents - 100 WHERE user = ?", ["ada".into()])?;
//! assert_eq!(batch.commit().await?, vec![1, 1, 1]);
//! assert_eq!(Wallet::find(&db, "ada").await?.unwrap().cents, 400);
//!
//! // A key that routes on its own is refused before anything is sent.
//! let mut batch = db.batch_for::<Wallet>("ada");
//! let refused = batch.insert(&Wallet { user: "bob".into(), cents: 1 }).err();
//! assert_eq!(refused.map(|e| e.code()), Some("CROSS_SHARD"));
//! # Ok::<(), collegedb::Error>(()) }).unwrap();
//! ```
//!
//! # What belongs in a batch
//!
//! A batch is anchored at one key of one model. A typed statement joins it when its row routes
//! with that key: a row of the anchor's own model and key, a row of a model colocated with it
//! (see [`crate::colocate`]) whose shard key is that key, or, when the anchor is placed by hash
//! for reads and writes, a row with the same key value of any model that is too (a hash-placed
//! key's shard follows from its value, whatever the table). Anything else is refused with
//! [`Error::CrossShard`] when it is added. Raw statements are taken as they are: they must touch
//! only rows of the anchor's key.
//!
//! A key can still be reassigned on its own, in one table ([`CollegeDb::reassign`]): then it no
//! longer shares a shard with the same key of the other tables. Every table a batch writes is
//! guarded for that key, so such a batch is refused by the shard, writes nothing, and fails with
//! [`Error::CrossShard`] at commit.

//! # What a batch cannot do
//!
//! * Read its own writes midway: D1 has no interactive transactions, so every statement is sent
//!   at once and the batch returns only the rows each one changed. A typed `update` or `delete`
//!   of a row that does not exist changes 0 rows; it is not an error here.
//! * Write a model with `#[sharded(unique)]` columns: their lookups are kept outside the shard
//!   (see [`crate::unique`]). Use the model's own calls.
//!
//! The batch is guarded like every routed write (see [`crate::fence`]): if a move took the key's
//! slot, or reassigned the key, in between, the shard refuses the whole batch, nothing is
//! written, and the batch follows the key to its new shard.

use crate::backend::{Backend, Statement};
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::fence;
use crate::key::{Key, KeyArg, ShardKey};
use crate::model::Model;
use crate::raw::check_statement;
use crate::router::{hash_first, Backoff, CollegeDb};
use crate::value::Value;

/// A statement of a batch, with the table whose row count it changes.
struct Entry {
    statement: Statement,
    /// `Some((table, sign))`: rows changed count as inserted (`1`) or deleted (`-1`) rows of
    /// `table`.
    counts: Option<(&'static str, i64)>,
    /// Whether the statement can create the anchor key's first row.
    creates: bool,
}

/// An all-or-nothing unit of writes on the shard that owns one key. See the [module
/// docs](self).
pub struct Batch<'a, B: Backend> {
    db: &'a CollegeDb<B>,
    table: &'static str,
    /// The anchor's key, or why it is invalid (reported by every call).
    key: std::result::Result<Key, String>,
    strategies: crate::config::Strategies,
    entries: Vec<Entry>,
    /// The other (hash-placed) tables the typed statements write: each is guarded too, since a
    /// key of one table can be reassigned on its own.
    others: std::collections::BTreeSet<&'static str>,
}

impl<B: Backend> CollegeDb<B> {
    /// Starts a batch anchored at `key` of model `M`: every statement added must belong on the
    /// shard that owns it. See [`crate::batch`].
    pub fn batch_for<M: Model>(&self, key: impl KeyArg<M::Key>) -> Batch<'_, B> {
        Batch {
            db: self,
            table: M::SCOPE,
            key: key.into_arg().into_key().map_err(|e| e.to_string()),
            strategies: self.strategies(M::STRATEGY),
            entries: Vec::new(),
            others: Default::default(),
        }
    }
}

fn by_hash(strategies: crate::config::Strategies) -> bool {
    hash_first(strategies.read) && strategies.write == Strategy::Hash
}

impl<'a, B: Backend> Batch<'a, B> {
    fn anchor(&self) -> Result<&Key> {
        self.key.as_ref().map_err(|reason| Error::QueryInvalid {
            reason: format!("the batch's key: {reason}"),
        })
    }

    /// Checks that a row of `M` with `key` routes with the anchor, and notes its table.
    fn check_route<M: Model>(&mut self, key: &M::Key) -> Result<Key> {
        let anchor = self.anchor()?;
        if !M::UNIQUE.is_empty() {
            return Err(Error::QueryInvalid {
                reason: format!(
                    "a batch cannot write `{}`: its unique columns are kept outside the shard; use its own calls",
                    M::TABLE
                ),
            });
        }
        let key = key.clone().into_key()?;
        // A model colocated with the anchor's (see `crate::colocate`) shares its scope.
        let same_scope = M::SCOPE == self.table;
        let both_hash = by_hash(self.strategies) && by_hash(self.db.strategies(M::STRATEGY));
        if key == *anchor && (same_scope || both_hash) {
            if !same_scope {
                self.others.insert(M::SCOPE);
            }
            return Ok(key);
        }
        Err(Error::CrossShard {
            anchor: format!("`{}` key {anchor}", self.table),
            statement: format!("`{}` key {key}", M::TABLE),
        })
    }

    fn push(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        counts: Option<(&'static str, i64)>,
        creates: bool,
    ) -> Result<&mut Self> {
        check_statement(sql, &params)?;
        self.entries.push(Entry {
            statement: Statement::new(sql, params),
            counts,
            creates,
        });
        Ok(self)
    }

    /// Adds an insert of a new row. The batch fails as a whole if the key exists.
    pub fn insert<M: Model>(&mut self, row: &M) -> Result<&mut Self> {
        self.check_route::<M>(row.key())?;
        let values = row.to_values()?;
        crate::model::check_row(&values)?;
        crate::model::check_ids::<M>(&values)?;
        let creates = M::SCOPE == self.table;
        self.push(&M::sql().insert, values, Some((M::TABLE, 1)), creates)
    }

    /// Adds an insert that updates the row if its key exists.
    pub fn upsert<M: Model>(&mut self, row: &M) -> Result<&mut Self> {
        self.check_route::<M>(row.key())?;
        let values = row.to_values()?;
        crate::model::check_row(&values)?;
        crate::model::check_ids::<M>(&values)?;
        let creates = M::SCOPE == self.table;
        self.push(&M::sql().upsert, values, None, creates)
    }

    /// Adds an update of every non-key column of an existing row (0 rows changed if there is
    /// none).
    pub fn update<M: Model>(&mut self, row: &M) -> Result<&mut Self> {
        self.check_route::<M>(row.key())?;
        let values = row.to_values()?;
        crate::model::check_row(&values)?;
        crate::model::check_ids::<M>(&values)?;
        let ids = crate::model::id_values::<M>(&values);
        let Some(sql) = &M::sql().update_by_key else {
            // Nothing but the key: the statement changes nothing but counts the row, as `update`
            // requires it to exist.
            let column = crate::raw::quote_ident(M::COLUMNS[M::KEY_INDEX].name);
            let filter = M::ID_COLUMNS
                .iter()
                .map(|&i| format!("{} = ?", crate::raw::quote_ident(M::COLUMNS[i].name)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let sql = format!(
                "UPDATE {} SET {column} = {column} WHERE {filter}",
                crate::raw::quote_ident(M::TABLE)
            );
            return self.push(&sql, ids, None, false);
        };
        self.push(sql, crate::model::update_params::<M>(values), None, false)
    }

    /// Adds a delete of the row with this key, of a model identified by its key alone (for a
    /// colocated model, see [`Batch::delete_row`]).
    pub fn delete<M: Model>(&mut self, key: impl KeyArg<M::Key>) -> Result<&mut Self> {
        if M::ID_COLUMNS.len() > 1 {
            return Err(Error::QueryInvalid {
                reason: format!(
                    "`{}` rows are identified by more than their key: delete one with `delete_row`",
                    M::TABLE
                ),
            });
        }
        let key = key.into_arg();
        let checked = self.check_route::<M>(&key)?;
        self.push(
            &M::sql().delete_by_key,
            vec![checked.to_value()],
            Some((M::TABLE, -1)),
            false,
        )
    }

    /// Adds a delete of the row that `row` identifies (by its primary key).
    pub fn delete_row<M: Model>(&mut self, row: &M) -> Result<&mut Self> {
        self.check_route::<M>(row.key())?;
        let ids = crate::model::id_values::<M>(&row.to_values()?);
        self.push(&M::sql().delete_by_key, ids, Some((M::TABLE, -1)), false)
    }

    /// Adds a raw statement. It must touch only rows of the anchor's key: nothing can check
    /// that. Checked against D1's limits now.
    pub fn execute(
        &mut self,
        sql: &str,
        params: impl IntoIterator<Item = Value>,
    ) -> Result<&mut Self> {
        self.anchor()?;
        let creates = crate::raw::creates_rows(sql);
        self.push(sql, params.into_iter().collect(), None, creates)
    }

    /// The number of statements added.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Runs every statement in one transaction on the shard that owns the anchor's key; returns
    /// the rows each one changed, in order. Nothing is written if one fails.
    pub async fn commit(self) -> Result<Vec<u64>> {
        let key = self.anchor()?.clone();
        if self.entries.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db;
        let keys = [key.to_value()];
        // Guards of the other tables' key first: their counts are dropped from the answer.
        let mut statements: Vec<Statement> = self
            .others
            .iter()
            .flat_map(|table| fence::key_guard_statements(table, &keys))
            .collect();
        let guards = statements.len();
        statements.extend(self.entries.iter().map(|e| e.statement.clone()));
        let creates = self.entries.iter().any(|e| e.creates);
        let mut backoff = Backoff::new();
        let mut directed = None;
        loop {
            let (shard, fence_value) = match directed {
                Some(shard) => (shard, fence::LIVE),
                None => self.owner(&key, creates).await?,
            };
            let guard = Some((self.table, &keys[..]));
            let result = fence::guarded_batch(db, shard, &[fence_value], guard, &statements)
                .await
                .map_err(|e| crate::crud::duplicate_in(db, shard, self.table, e))?;
            match result {
                Ok(changed) => {
                    let changed = changed[guards..].to_vec();
                    for (entry, n) in self.entries.iter().zip(&changed) {
                        if let Some((table, sign)) = entry.counts {
                            db.note_rows(shard, table, sign * *n as i64);
                        }
                    }
                    return Ok(changed);
                }
                Err(fence::Refusal::NotOwned) => {
                    directed = None;
                    db.after_not_admitted(self.table, &key, fence_value, &mut backoff)
                        .await?;
                }
                Err(fence::Refusal::Moved) => {
                    // The key of the anchor's table, or of another, was reassigned away from
                    // its hash shard: the tables no longer share a shard for it.
                    if let Some(table) = self.others.iter().next() {
                        return Err(Error::CrossShard {
                            anchor: format!("`{}` key {key}", self.table),
                            statement: format!(
                                "`{table}` key {key} (one of the two was reassigned on its own)"
                            ),
                        });
                    }
                    directed = db
                        .after_moved(self.table, &key, shard, &mut backoff)
                        .await?;
                }
            }
        }
    }

    /// The shard that owns the anchor's key, and the fence value its statements bind; a key
    /// without an owner is placed now if the batch can create its row.
    async fn owner(&self, key: &Key, creates: bool) -> Result<(usize, i64)> {
        let db = self.db;
        let write = self.strategies.write;
        if by_hash(self.strategies) {
            return Ok(db.hash_target(key));
        }
        Ok(match db.directory_lookup(self.table, key).await? {
            Some(shard) => (shard, fence::LIVE),
            None if creates && write != Strategy::Hash => {
                (db.place(self.table, key, write).await?, fence::LIVE)
            }
            None => db.hash_target(key),
        })
    }
}
