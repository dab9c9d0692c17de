//! Typed operations on [`Model`]s, written once and called by the code `#[derive(Sharded)]`
//! generates (`User::find(&db, id)` forwards to [`find`]).
//!
//! Routing follows the rules in [`crate::router`]: new keys are placed by the write strategy;
//! existing keys are found with the read strategy's lookup order.

use crate::backend::{Backend, Row, ShardConn, Statement};
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::fence;
use crate::key::{Key, ShardKey};
use crate::metrics::Op;
use crate::model::{Model, RowId};
use crate::router::{hash_first, Backoff, CollegeDb};
use crate::value::Value;

/// Walks the shards that may own an existing key: the first guess given by the read strategy,
/// then, after a miss, the directory's answer. Every guess carries the fence value its
/// statements bind (see [`crate::fence`]): the key's slot when the map chose the shard,
/// [`fence::LIVE`] when the directory did.
///
/// A key can be reassigned between reading its entry and running a statement, so a miss where
/// an entry pointed is final only when the store named that shard both before the statement and
/// after it; otherwise the lookup follows the store's newer answer. Without reassignments this
/// costs one store read more than the first answer, and only on a miss.
struct Lookup {
    shard: usize,
    fence: i64,
    directory_checked: bool,
    /// `Some(fresh)` when the current guess came from a directory entry: `fresh` if the entry
    /// was read from the store (not the cache) before the statement ran.
    entry: Option<bool>,
    /// Whether the shard the store names was tried a second time after a miss.
    retried: bool,
    /// Pauses before trying a shard again while the key is reassigned (see [`Lookup::next`]).
    backoff: Backoff,
}

/// Whether the operation in progress reassigns `key` of `table`.
async fn reassigning<B: Backend>(db: &CollegeDb<B>, table: &str, key: &Key) -> Result<bool> {
    Ok(matches!(
        db.growth_in_progress().await?,
        Some(crate::growth::Operation::Reassign { table: moving, key: moved, .. })
            if moving == table && moved == *key
    ))
}

impl Lookup {
    async fn start<B: Backend>(
        db: &CollegeDb<B>,
        table: &str,
        key: &Key,
        read: Strategy,
    ) -> Result<Self> {
        let by_map = |directory_checked| {
            let (shard, fence) = db.hash_target(key);
            Lookup {
                shard,
                fence,
                directory_checked,
                entry: None,
                retried: false,
                backoff: Backoff::new(),
            }
        };
        if hash_first(read) {
            return Ok(by_map(false));
        }
        Ok(match db.directory_lookup_traced(table, key).await? {
            (Some(shard), fresh) => Lookup {
                shard,
                fence: fence::LIVE,
                directory_checked: true,
                entry: Some(fresh),
                retried: false,
                backoff: Backoff::new(),
            },
            (None, _) => by_map(true),
        })
    }

    /// After a miss: moves to the next candidate, or returns `false` when none is left.
    ///
    /// A miss on the shard where the key lives, by the directory store read after the
    /// statement, is final only when it happens twice in a row and the key is not being
    /// reassigned: a statement that ran while the key was briefly away (its copy hidden by the
    /// receiver's tombstone until the switch) must not be taken for an absent row.
    async fn next<B: Backend>(
        &mut self,
        db: &CollegeDb<B>,
        table: &str,
        key: &Key,
    ) -> Result<bool> {
        if self.directory_checked {
            let Some(fresh) = self.entry else {
                // The directory had no entry: the key lives on the shard its slot maps to.
                return self.again_on_home(db, table, key).await;
            };
            // The entry's shard lacks the row: ask the store where it is now.
            return match db.directory_lookup_fresh(table, key).await? {
                Some(shard) if shard != self.shard || !fresh => {
                    self.shard = shard;
                    self.fence = fence::LIVE;
                    self.entry = Some(true);
                    Ok(true)
                }
                Some(_) => self.again_on_home(db, table, key).await,
                None => {
                    // The entry is gone: the key went back to its slot's shard.
                    (self.shard, self.fence) = db.hash_target(key);
                    self.entry = None;
                    Ok(true)
                }
            };
        }
        self.directory_checked = true;
        // Hash-first: the first guess was the hash shard. Without its off-hash marker the miss
        // is final, and the directory is not asked (see `crate::marker`).
        if !db.may_be_elsewhere(table, self.shard).await? {
            return Ok(false);
        }
        // An entry naming the hash shard itself is tried there again, by the entry: the row may
        // have been reassigned back to it since the miss.
        match db.directory_lookup_traced(table, key).await? {
            (Some(shard), fresh) => {
                self.shard = shard;
                self.fence = fence::LIVE;
                self.entry = Some(fresh);
                Ok(true)
            }
            (None, _) => self.again_on_home(db, table, key).await,
        }
    }

    /// The store says the key lives on the shard that just missed: try it once more, and then
    /// again after pauses while the key is being reassigned; else the miss is final.
    async fn again_on_home<B: Backend>(
        &mut self,
        db: &CollegeDb<B>,
        table: &str,
        key: &Key,
    ) -> Result<bool> {
        if !self.retried {
            self.retried = true;
            return Ok(true);
        }
        if reassigning(db, table, key).await? {
            self.backoff.wait(crate::slots::slot_of(key) as i64).await?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// What one statement on one shard found.
enum Attempt<T> {
    Found(T),
    Miss,
    /// The shard does not own the slot the statement was routed by: the map was stale.
    NotOwned,
}

/// `params` with the fence value appended, for a fenced statement.
fn with_fence(params: &[Value], fence: i64) -> Vec<Value> {
    let mut all = Vec::with_capacity(params.len() + 1);
    all.extend_from_slice(params);
    all.push(Value::Integer(fence));
    all
}

/// A query routed to an existing key's owner: `fenced` is the same query with a trailing fence
/// parameter that answers an all-`NULL` row when the shard does not admit it (the row's column
/// `key_index` tells it apart); `None` runs `sql` as it is wherever it goes.
pub(crate) struct RoutedQuery<'a> {
    pub sql: &'a str,
    pub fenced: Option<(&'a str, usize)>,
    pub params: &'a [Value],
}

/// Runs a query on the shards that may own `key`, in the read strategy's lookup order, and
/// returns the first non-empty result with its shard and fence value. `None`: no shard has rows
/// for the key.
pub(crate) async fn query_owner<B: Backend>(
    db: &CollegeDb<B>,
    table: &str,
    key: &Key,
    read: Strategy,
    query: RoutedQuery<'_>,
) -> Result<Option<(usize, i64, Vec<Row>)>> {
    let mut backoff = Backoff::new();
    'route: loop {
        let mut lookup = Lookup::start(db, table, key, read).await?;
        loop {
            let attempt = match query.fenced {
                Some((fenced, key_index)) => {
                    let params = with_fence(query.params, lookup.fence);
                    let mut rows = fence::query(db, lookup.shard, fenced, &params).await?;
                    let stale = rows.iter().any(|row| {
                        row.values()
                            .get(key_index)
                            .is_none_or(|v| *v == Value::Null)
                    });
                    rows.retain(|row| {
                        row.values()
                            .get(key_index)
                            .is_some_and(|v| *v != Value::Null)
                    });
                    match (stale, rows.is_empty()) {
                        (true, _) => Attempt::NotOwned,
                        (false, true) => Attempt::Miss,
                        (false, false) => Attempt::Found(rows),
                    }
                }
                None => {
                    let shard = db.shard(lookup.shard);
                    let rows = db
                        .metered(
                            lookup.shard,
                            Op::Query,
                            shard.query(query.sql, query.params),
                        )
                        .await?;
                    if rows.is_empty() {
                        Attempt::Miss
                    } else {
                        Attempt::Found(rows)
                    }
                }
            };
            match attempt {
                Attempt::Found(rows) => return Ok(Some((lookup.shard, lookup.fence, rows))),
                Attempt::NotOwned => {
                    db.after_not_admitted(table, key, lookup.fence, &mut backoff)
                        .await?;
                    continue 'route;
                }
                Attempt::Miss => {
                    if !lookup.next(db, table, key).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// How a statement is run on a shard: a point write of the typed layer, or raw SQL of unknown
/// cost (see [`ShardConn::execute_raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    Point,
    Unknown,
}

/// A write routed to an existing key's owner: `fenced` is the same statement with a trailing
/// fence parameter and the ownership test (see [`crate::fence`]); without it, the statement runs
/// in a transaction behind a fence guard.
pub(crate) struct RoutedWrite<'a> {
    pub sql: &'a str,
    pub fenced: Option<&'a str>,
    pub params: &'a [Value],
    pub cost: Cost,
}

/// Runs one write on the shard `lookup` points at.
async fn write_once<B: Backend>(
    db: &CollegeDb<B>,
    shard: usize,
    fence_value: i64,
    write: &RoutedWrite<'_>,
) -> Result<Attempt<u64>> {
    let changed = match write.fenced {
        Some(fenced) => {
            let params = with_fence(write.params, fence_value);
            let changed = match write.cost {
                Cost::Point => fence::execute(db, shard, fenced, &params).await?,
                Cost::Unknown => {
                    let call = db.shard(shard).execute_raw(fenced, &params);
                    db.metered(shard, Op::Execute, call).await?
                }
            };
            if changed == 0 && !fence::admits(db, shard, fence_value).await? {
                return Ok(Attempt::NotOwned);
            }
            changed
        }
        None => {
            // Raw SQL that creates no row (see `TableScope::run`): no tombstone guard, as for
            // typed updates, a shard the key left simply has no row of it.
            let statement = Statement::new(write.sql, write.params.to_vec());
            match fence::guarded_batch(db, shard, &[fence_value], None, &[statement]).await? {
                Ok(changed) => changed[0],
                Err(_) => return Ok(Attempt::NotOwned),
            }
        }
    };
    Ok(if changed > 0 {
        Attempt::Found(changed)
    } else {
        Attempt::Miss
    })
}

/// Runs a statement on the shards that may own `key`, in the read strategy's lookup order, until
/// one changes rows; returns that shard and the rows changed. `None`: no shard changed anything.
pub(crate) async fn execute_owner<B: Backend>(
    db: &CollegeDb<B>,
    table: &str,
    key: &Key,
    read: Strategy,
    write: RoutedWrite<'_>,
) -> Result<Option<(usize, u64)>> {
    let mut backoff = Backoff::new();
    'route: loop {
        let mut lookup = Lookup::start(db, table, key, read).await?;
        loop {
            match write_once(db, lookup.shard, lookup.fence, &write).await? {
                Attempt::Found(changed) => return Ok(Some((lookup.shard, changed))),
                Attempt::NotOwned => {
                    db.after_not_admitted(table, key, lookup.fence, &mut backoff)
                        .await?;
                    continue 'route;
                }
                Attempt::Miss => {
                    if !lookup.next(db, table, key).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Where a new row goes: the slot's owner for hash writes, else the shard its directory entry
/// names (claimed now if the key has none); with the fence value its statement binds.
async fn place_new<M: Model, B: Backend>(db: &CollegeDb<B>, key: &Key) -> Result<(usize, i64)> {
    let write = db.strategies(M::STRATEGY).write;
    Ok(if write == Strategy::Hash {
        db.hash_target(key)
    } else {
        (db.place(M::SCOPE, key, write).await?, fence::LIVE)
    })
}

/// Writes a row with a fenced statement (`insert_fenced` or `upsert_fenced`): an upsert first
/// looks for the row where it lives. Follows the map or the directory when the shard refuses;
/// returns the shard and whether the row is new.
async fn write_fenced<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Key,
    values: &[Value],
    upsert: bool,
) -> Result<(usize, bool)> {
    let fenced = if upsert {
        &M::sql().upsert_fenced
    } else {
        &M::sql().insert_fenced
    };
    let mut backoff = Backoff::new();
    // The shard the directory store named after a tombstone refused the key.
    let mut directed = None;
    loop {
        let existing = if upsert {
            find_shard::<M, B>(db, key, &crate::model::id_values::<M>(values)).await?
        } else {
            None
        };
        let new = existing.is_none();
        let (shard, fence_value) = match (existing, directed) {
            (Some(found), _) => found,
            (None, Some(shard)) => (shard, fence::LIVE),
            (None, None) => place_new::<M, B>(db, key).await?,
        };
        let changed = fence::execute(db, shard, fenced, &with_fence(values, fence_value))
            .await
            .map_err(|e| duplicate_or::<M, B>(db, shard, e))?;
        if changed > 0 {
            return Ok((shard, new));
        }
        if !fence::admits(db, shard, fence_value).await? {
            directed = None;
            db.after_not_admitted(M::SCOPE, key, fence_value, &mut backoff)
                .await?;
            continue;
        }
        // Admitted, yet nothing written: the key has a tombstone here (it was reassigned, or
        // adopted, to another shard), and its directory entry says where it lives.
        directed = db.after_moved(M::SCOPE, key, shard, &mut backoff).await?;
    }
}

/// A key conflict of `M`'s statement on `shard` as [`Error::DuplicateKey`]; any other error as
/// it is.
pub(crate) fn duplicate_or<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    shard: usize,
    error: Error,
) -> Error {
    duplicate_in(db, shard, M::TABLE, error)
}

/// A key conflict on `shard` as [`Error::DuplicateKey`], naming the table SQLite names (else
/// `table`); any other error as it is.
pub(crate) fn duplicate_in<B: Backend>(
    db: &CollegeDb<B>,
    shard: usize,
    table: &str,
    error: Error,
) -> Error {
    const UNIQUE: &str = "UNIQUE constraint failed: ";
    match &error {
        Error::QueryFailed { message, .. } if message.contains(UNIQUE) => {
            let after = &message[message.find(UNIQUE).unwrap_or(0) + UNIQUE.len()..];
            let named = after.split('.').next().filter(|t| !t.is_empty());
            Error::DuplicateKey {
                table: named.unwrap_or(table).to_owned(),
                shard: db.shard_name(shard).to_owned(),
            }
        }
        _ => error,
    }
}

fn decode<M: Model>(rows: Vec<Row>) -> Result<Option<M>> {
    rows.into_iter()
        .next()
        .map(|row| M::from_values(row.into_values()))
        .transpose()
}

/// Creates the model's table on every shard (`CREATE TABLE IF NOT EXISTS`), and the shard's
/// fence and marker tables (see [`crate::fence`] and [`crate::marker`]). If the directory already holds entries of the table (data
/// placed before markers existed), the table's marker is set on every shard.
///
/// A model colocated with a parent (see [`crate::colocate`]) is recorded as such on every shard,
/// so that moves carry its rows with their parent's key.
pub async fn create_table<M: Model, B: Backend>(db: &CollegeDb<B>) -> Result<()> {
    if M::SCOPE != M::TABLE {
        // Refused before anything is created: a chain would leave a table that routes wrong.
        crate::colocate::check_chain(&crate::colocate::all(db).await?, M::TABLE, M::SCOPE)?;
    }
    for (index, shard) in db.shards().into_iter().enumerate() {
        shard.execute(&M::sql().create_table, &[]).await?;
        fence::ensure(db, index).await?;
    }
    if M::SCOPE != M::TABLE {
        db.colocate(M::TABLE, M::COLUMNS[M::KEY_INDEX].name, M::SCOPE)
            .await?;
    }
    let placed = crate::directory::Directory::list(db.directory(), M::SCOPE, None, 1).await?;
    if !placed.entries.is_empty() {
        for index in 0..db.shards().len() {
            db.mark_off_hash(M::SCOPE, index).await?;
        }
    }
    Ok(())
}

/// Inserts a new row. Fails with [`Error::DuplicateKey`] if its key exists on its owner shard,
/// and with [`Error::DuplicateValue`] if a unique column's value is taken.
pub async fn insert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    if M::UNIQUE.is_empty() {
        insert_row(db, row).await
    } else {
        crate::unique::insert(db, row).await
    }
}

/// [`insert`] without unique lookups.
pub(crate) async fn insert_row<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    crate::model::check_ids::<M>(&values)?;
    let key = row.key().clone().into_key()?;
    let (shard, _) = write_fenced::<M, B>(db, &key, &values, false).await?;
    db.note_rows(shard, M::TABLE, 1);
    Ok(())
}

/// Finds a row by its key (for a colocated model, `(parent key, own key)`). Reads never create
/// directory entries.
pub async fn find<M: Model, B: Backend>(db: &CollegeDb<B>, id: M::Id) -> Result<Option<M>> {
    let reads = db.reads_for::<M>();
    let (key, ids) = id.into_parts()?;
    find_id(&reads, key, &ids).await
}

/// [`find`] of a checked key of a model identified by its key alone, reading as `db` reads.
pub(crate) async fn find_key<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: Key,
) -> Result<Option<M>> {
    let ids = [key.to_value()];
    find_id(db, key, &ids).await
}

/// [`find`] of the row whose placing key is `key` and primary key `ids`.
pub(crate) async fn find_id<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: Key,
    ids: &[Value],
) -> Result<Option<M>> {
    let read = db.strategies(M::STRATEGY).read;
    if !hash_first(read) {
        return match query_owner(db, M::SCOPE, &key, read, by_key::<M>(ids)).await? {
            Some((_, _, rows)) => decode(rows),
            None => Ok(None),
        };
    }
    // Hash-first: the slot's owner returns the row if it owns the slot; after an empty answer,
    // one more query tells a final miss from a stale map and from a key placed elsewhere.
    let mut backoff = Backoff::new();
    let (hash_shard, marked) = loop {
        let (shard, slot) = db.hash_target(&key);
        let params = with_fence(ids, slot);
        let rows = fence::query(db, shard, &M::sql().find_on_owner, &params).await?;
        if let Some(row) = rows.into_iter().next() {
            return M::from_values(row.into_values()).map(Some);
        }
        let (owned, marked) = if db.directory_cache().is_marked(M::SCOPE, shard) {
            (fence::admits(db, shard, slot).await?, true)
        } else {
            fence::after_miss(db, shard, slot, M::SCOPE).await?
        };
        if !owned {
            db.after_not_owned(slot, &mut backoff).await?;
            continue;
        }
        break (shard, marked);
    };
    if !marked {
        return Ok(None);
    }
    db.note_marked(M::SCOPE, hash_shard);
    // An entry naming the hash shard itself is tried again there: the row may have been
    // reassigned back to it since the miss.
    match db.directory_lookup(M::SCOPE, &key).await? {
        Some(_) => {
            let query = by_key::<M>(ids);
            match query_owner(db, M::SCOPE, &key, Strategy::RoundRobin, query).await? {
                Some((_, _, rows)) => decode(rows),
                None => Ok(None),
            }
        }
        None => Ok(None),
    }
}

/// Which shard holds a key's row, if any shard does.
pub async fn locate<M: Model, B: Backend>(db: &CollegeDb<B>, id: M::Id) -> Result<Option<String>> {
    let reads = db.reads_for::<M>();
    let db = &*reads;
    let (key, ids) = id.into_parts()?;
    Ok(find_shard::<M, B>(db, &key, &ids)
        .await?
        .map(|(shard, _)| db.shard_name(shard).to_owned()))
}

/// The fenced select of one row by key.
fn by_key<M: Model>(params: &[Value]) -> RoutedQuery<'_> {
    RoutedQuery {
        sql: &M::sql().select_by_key,
        fenced: Some((&M::sql().select_by_key_fenced, M::KEY_INDEX)),
        params,
    }
}

/// The shard that holds `key`'s row, and the fence value that reached it.
async fn find_shard<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Key,
    ids: &[Value],
) -> Result<Option<(usize, i64)>> {
    let read = db.strategies(M::STRATEGY).read;
    let found = query_owner(db, M::SCOPE, key, read, by_key::<M>(ids)).await?;
    Ok(found.map(|(shard, slot, _)| (shard, slot)))
}

/// Updates every non-key column of an existing row. Fails with [`Error::RowNotFound`] if no
/// shard has the key, and with [`Error::DuplicateValue`] if a unique column's new value is
/// taken.
pub async fn update<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    if M::UNIQUE.is_empty() {
        update_row(db, row).await
    } else {
        crate::unique::update(db, row).await
    }
}

/// [`update`] without unique lookups.
pub(crate) async fn update_row<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let Some(sql) = &M::sql().update_by_key else {
        // Nothing but the key: an update changes nothing, but the row must exist.
        let values = row.to_values()?;
        let ids = crate::model::id_values::<M>(&values);
        return match find_shard::<M, B>(db, &row.key().clone().into_key()?, &ids).await? {
            Some(_) => Ok(()),
            None => Err(Error::RowNotFound {
                table: M::TABLE.to_owned(),
            }),
        };
    };
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    crate::model::check_ids::<M>(&values)?;
    let params = crate::model::update_params::<M>(values);
    let key = row.key().clone().into_key()?;
    let read = db.strategies(M::STRATEGY).read;
    let write = RoutedWrite {
        sql,
        fenced: M::sql().update_fenced.as_deref(),
        params: &params,
        cost: Cost::Point,
    };
    match execute_owner(db, M::SCOPE, &key, read, write).await? {
        Some(_) => Ok(()),
        None => Err(Error::RowNotFound {
            table: M::TABLE.to_owned(),
        }),
    }
}

/// Deletes a row by key; returns whether a row was deleted.
///
/// A deleted key keeps its directory entry, so a later insert of the same key lands on the same
/// shard. This is what keeps a delete racing an insert of the same key from stranding the row.
pub async fn delete<M: Model, B: Backend>(db: &CollegeDb<B>, id: M::Id) -> Result<bool> {
    let (key, ids) = id.into_parts()?;
    if M::UNIQUE.is_empty() {
        delete_id::<M, B>(db, &key, &ids).await
    } else {
        crate::unique::delete::<M, B>(db, crate::unique::Owner::of_id(&ids)?).await
    }
}

/// [`delete`] of the row whose placing key is `key` and primary key `ids`.
pub(crate) async fn delete_id<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: &Key,
    ids: &[Value],
) -> Result<bool> {
    let read = db.strategies(M::STRATEGY).read;
    let write = RoutedWrite {
        sql: &M::sql().delete_by_key,
        fenced: Some(&M::sql().delete_fenced),
        params: ids,
        cost: Cost::Point,
    };
    match execute_owner(db, M::SCOPE, key, read, write).await? {
        Some((shard, _)) => {
            db.note_rows(shard, M::TABLE, -1);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Inserts the row, or updates it where it already lives.
pub async fn upsert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    if M::UNIQUE.is_empty() {
        upsert_row(db, row).await
    } else {
        crate::unique::upsert(db, row).await
    }
}

/// [`upsert`] without unique lookups.
pub(crate) async fn upsert_row<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    crate::model::check_row(&values)?;
    crate::model::check_ids::<M>(&values)?;
    let key = row.key().clone().into_key()?;
    let (shard, new) = write_fenced::<M, B>(db, &key, &values, true).await?;
    if new {
        db.note_rows(shard, M::TABLE, 1);
    }
    Ok(())
}

/// Counts the model's rows on every shard that serves rows (see [`crate::growth`] for counts
/// while a move runs).
pub async fn count<M: Model, B: Backend>(db: &CollegeDb<B>) -> Result<u64> {
    let reads = db.reads_for::<M>();
    let db = &*reads;
    let mut total = 0;
    for (_, rows) in db
        .on_serving_shards(|shard| shard.query(&M::sql().count, &[]))
        .await
    {
        total += rows?
            .first()
            .and_then(|row| row.values().first())
            .map_or(Ok(0), |v| match v {
                Value::Integer(n) => Ok(*n as u64),
                other => Err(Error::decode(
                    "COUNT(*)",
                    format!("found {}", other.type_name()),
                )),
            })?;
    }
    Ok(total)
}
