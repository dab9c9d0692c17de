//! Typed operations on [`Model`]s, written once and called by the code `#[derive(Sharded)]`
//! generates (`User::find(&db, id)` forwards to [`find`]).
//!
//! Routing follows the rules in [`crate::router`]: new keys are placed by the write strategy;
//! existing keys are found with the read strategy's lookup order.

use crate::backend::{Backend, Row, ShardConn};
use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::key::{Key, ShardKey};
use crate::model::Model;
use crate::router::{hash_first, CollegeDb};
use crate::value::Value;

/// Walks the shards that may own an existing key: the first guess given by the read strategy,
/// then, after a miss, the directory's answer if it differs. Performs at most one directory read.
struct Lookup {
    shard: usize,
    directory_checked: bool,
}

impl Lookup {
    async fn start<B: Backend>(
        db: &CollegeDb<B>,
        table: &str,
        key: &Key,
        read: Strategy,
    ) -> Result<Self> {
        Ok(if hash_first(read) {
            Lookup {
                shard: db.hash_shard(key),
                directory_checked: false,
            }
        } else {
            Lookup {
                shard: db.owner(table, key).await?,
                directory_checked: true,
            }
        })
    }

    /// After a miss: moves to the next candidate, or returns `false` when none is left.
    async fn next<B: Backend>(
        &mut self,
        db: &CollegeDb<B>,
        table: &str,
        key: &Key,
    ) -> Result<bool> {
        if self.directory_checked {
            return Ok(false);
        }
        self.directory_checked = true;
        // Hash-first: the first guess was the hash shard. Without its off-hash marker the miss
        // is final, and the directory is not asked (see `crate::marker`).
        if !db.may_be_elsewhere(table, self.shard).await? {
            return Ok(false);
        }
        match db.directory_lookup(table, key).await? {
            Some(shard) if shard != self.shard => {
                self.shard = shard;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Runs a query on the shards that may own `key`, in the read strategy's lookup order, and
/// returns the first non-empty result with its shard. `None`: no shard has rows for the key.
pub(crate) async fn query_owner<B: Backend>(
    db: &CollegeDb<B>,
    table: &str,
    key: &Key,
    read: Strategy,
    sql: &str,
    params: &[Value],
) -> Result<Option<(usize, Vec<Row>)>> {
    let mut lookup = Lookup::start(db, table, key, read).await?;
    loop {
        let rows = db.shard(lookup.shard).query(sql, params).await?;
        if !rows.is_empty() {
            return Ok(Some((lookup.shard, rows)));
        }
        if !lookup.next(db, table, key).await? {
            return Ok(None);
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

/// Runs a statement on the shards that may own `key`, in the read strategy's lookup order, until
/// one changes rows; returns that shard and the rows changed. `None`: no shard changed anything.
pub(crate) async fn execute_owner<B: Backend>(
    db: &CollegeDb<B>,
    table: &str,
    key: &Key,
    read: Strategy,
    (sql, params, cost): (&str, &[Value], Cost),
) -> Result<Option<(usize, u64)>> {
    let mut lookup = Lookup::start(db, table, key, read).await?;
    loop {
        let shard = db.shard(lookup.shard);
        let changed = match cost {
            Cost::Point => shard.execute(sql, params).await?,
            Cost::Unknown => shard.execute_raw(sql, params).await?,
        };
        if changed > 0 {
            return Ok(Some((lookup.shard, changed)));
        }
        if !lookup.next(db, table, key).await? {
            return Ok(None);
        }
    }
}

pub(crate) fn duplicate_or<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    shard: usize,
    error: Error,
) -> Error {
    match &error {
        Error::QueryFailed { message, .. } if message.contains("UNIQUE constraint failed") => {
            Error::DuplicateKey {
                table: M::TABLE.to_owned(),
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
/// marker table (see [`crate::marker`]). If the directory already holds entries of the table (data
/// placed before markers existed), the table's marker is set on every shard.
pub async fn create_table<M: Model, B: Backend>(db: &CollegeDb<B>) -> Result<()> {
    for (index, shard) in db.shards().iter().enumerate() {
        shard.execute(&M::sql().create_table, &[]).await?;
        crate::marker::ensure_table(db, index).await?;
    }
    let placed = crate::directory::Directory::list(db.directory(), M::TABLE, None, 1).await?;
    if !placed.entries.is_empty() {
        for index in 0..db.shards().len() {
            db.mark_off_hash(M::TABLE, index).await?;
        }
    }
    Ok(())
}

/// Inserts a new row. Fails with [`Error::DuplicateKey`] if its key exists on its owner shard.
pub async fn insert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    let key = row.key().clone().into_key()?;
    let write = db.strategies(M::STRATEGY).write;
    let shard = db.place(M::TABLE, &key, write).await?;
    db.shard(shard)
        .execute(&M::sql().insert, &values)
        .await
        .map_err(|e| duplicate_or::<M, B>(db, shard, e))?;
    db.note_rows(shard, M::TABLE, 1);
    Ok(())
}

/// Finds a row by key. Reads never create directory entries.
pub async fn find<M: Model, B: Backend>(db: &CollegeDb<B>, key: M::Key) -> Result<Option<M>> {
    let key = key.into_key()?;
    let read = db.strategies(M::STRATEGY).read;
    if !hash_first(read) {
        let params = [key.to_value()];
        return match query_owner(db, M::TABLE, &key, read, &M::sql().select_by_key, &params).await?
        {
            Some((_, rows)) => decode(rows),
            None => Ok(None),
        };
    }
    // Hash-first: one statement on the hash shard returns the row, or tells whether the miss is
    // final (no off-hash marker) or the directory must be asked.
    let hash_shard = db.hash_shard(&key);
    let params = [key.to_value(), Value::Text(M::TABLE.to_owned())];
    let (rows, mut marked) = crate::marker::query_folded(
        db.shard(hash_shard),
        (&M::sql().select_by_key_or_marker, &params),
        (&M::sql().select_by_key, &params[..1]),
    )
    .await?;
    for row in rows {
        if row
            .values()
            .get(M::KEY_INDEX)
            .is_some_and(|v| *v != Value::Null)
        {
            return M::from_values(row.into_values()).map(Some);
        }
        marked = true;
    }
    if !marked {
        return Ok(None);
    }
    db.note_marked(M::TABLE, hash_shard);
    match db.directory_lookup(M::TABLE, &key).await? {
        Some(owner) if owner != hash_shard => {
            let rows = db
                .shard(owner)
                .query(&M::sql().select_by_key, &[key.into_value()])
                .await?;
            decode(rows)
        }
        _ => Ok(None),
    }
}

/// Which shard holds a key's row, if any shard does.
pub async fn locate<M: Model, B: Backend>(
    db: &CollegeDb<B>,
    key: M::Key,
) -> Result<Option<String>> {
    let key = key.into_key()?;
    Ok(find_shard::<M, B>(db, &key)
        .await?
        .map(|shard| db.shard_name(shard).to_owned()))
}

async fn find_shard<M: Model, B: Backend>(db: &CollegeDb<B>, key: &Key) -> Result<Option<usize>> {
    let read = db.strategies(M::STRATEGY).read;
    let params = [key.to_value()];
    let found = query_owner(db, M::TABLE, key, read, &M::sql().select_by_key, &params).await?;
    Ok(found.map(|(shard, _)| shard))
}

/// Updates every non-key column of an existing row. Fails with [`Error::RowNotFound`] if no
/// shard has the key.
pub async fn update<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let Some(sql) = &M::sql().update_by_key else {
        // Nothing but the key: an update changes nothing, but the row must exist.
        return match find_shard::<M, B>(db, &row.key().clone().into_key()?).await? {
            Some(_) => Ok(()),
            None => Err(Error::RowNotFound {
                table: M::TABLE.to_owned(),
            }),
        };
    };
    let mut params = row.to_values()?;
    let key_value = params.remove(M::KEY_INDEX);
    params.push(key_value);
    let key = row.key().clone().into_key()?;
    let read = db.strategies(M::STRATEGY).read;
    match execute_owner(db, M::TABLE, &key, read, (sql, &params, Cost::Point)).await? {
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
pub async fn delete<M: Model, B: Backend>(db: &CollegeDb<B>, key: M::Key) -> Result<bool> {
    let key = key.into_key()?;
    let read = db.strategies(M::STRATEGY).read;
    let params = [key.to_value()];
    let statement = (M::sql().delete_by_key.as_str(), &params[..], Cost::Point);
    match execute_owner(db, M::TABLE, &key, read, statement).await? {
        Some((shard, _)) => {
            db.note_rows(shard, M::TABLE, -1);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Inserts the row, or updates it where it already lives.
pub async fn upsert<M: Model, B: Backend>(db: &CollegeDb<B>, row: &M) -> Result<()> {
    let values = row.to_values()?;
    let key = row.key().clone().into_key()?;
    let (shard, new) = match find_shard::<M, B>(db, &key).await? {
        Some(shard) => (shard, false),
        None => {
            let write = db.strategies(M::STRATEGY).write;
            (db.place(M::TABLE, &key, write).await?, true)
        }
    };
    db.shard(shard).execute(&M::sql().upsert, &values).await?;
    if new {
        db.note_rows(shard, M::TABLE, 1);
    }
    Ok(())
}

/// Counts the model's rows on every shard.
pub async fn count<M: Model, B: Backend>(db: &CollegeDb<B>) -> Result<u64> {
    let mut total = 0;
    for rows in db
        .on_every_shard(|shard| shard.query(&M::sql().count, &[]))
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
