//! The slot fence: each shard knows which slots it owns, and every statement routed by the map
//! checks it *in the same statement*, so a handle holding an old map can never write a row
//! where it no longer lives, and fencing costs no round trip.
//!
//! Every shard has `_collegedb_slots (slot INTEGER PRIMARY KEY)`: the slots the shard owns, plus
//! two marks: [`LIVE`] (`-1`) while the shard holds directory-placed rows (removed when a drain
//! retires it), and `-2`, set when the table was first filled, so that a shard that gave up
//! every slot is never filled again from an old map. Every statement of the typed layer carries
//! a *fence value* as its last parameter: the key's slot when the map chose the shard, [`LIVE`]
//! when the directory did (a stale cached entry then meets a retired shard and is re-read):
//!
//! * inserts and upserts: `INSERT INTO t (...) SELECT ?, ... WHERE EXISTS (<owned>)`: no row
//!   changed means "not owned here";
//! * updates and deletes: `... WHERE key = ? AND EXISTS (<owned>)`: no row changed is followed,
//!   on that rare path only, by one probe of the fence to tell "no such row" from "not owned";
//! * reads: `UNION ALL` a row flagged "not owned" when the shard does not own the slot, so a read
//!   of a moved slot is answered "stale map", never "not found" or an old copy.
//!
//! Statements that cannot carry the check (raw SQL, many-row batches) run in a transaction after
//! a *guard*: an insert into the view `_collegedb_guard`, whose trigger aborts the transaction
//! with `RAISE(ABORT)` when a listed slot is not owned.
//!
//! **Tombstones.** A key placed by a directory entry on another shard than one a route may still
//! reach (its hash shard, or a shard it was reassigned away from) has a row `(table, key)` in
//! that shard's `_collegedb_moved`. Fenced inserts and upserts also check `NOT EXISTS` there (the
//! key's parameter reused by number); raw writes and `insert_many` check it in a second guard,
//! the view `_collegedb_key_guard`. A refused writer reads the directory store and follows it
//! (see [`crate::growth`]'s `reassign`). Written before the entry, like the off-hash marker;
//! carried with their slots by transfers; removed where a key comes back.
//!
//! A statement told "not owned" makes the router reload the map and try again (see
//! [`crate::router`]): either the map moved the slot (the retry goes to the new owner) or a move
//! is switching it over this instant (the retry waits out the few milliseconds of the switch).

use crate::backend::{Backend, ShardConn, Statement};
use crate::error::{Error, Result};
use crate::metrics::Op;
use crate::router::CollegeDb;
use crate::value::Value;

/// The fence table's name.
pub const TABLE: &str = "_collegedb_slots";

/// The guard view's name.
pub const GUARD: &str = "_collegedb_guard";

/// The ownership test that fenced statements embed; binds the slot.
pub const OWNED: &str = "? IN (SELECT \"slot\" FROM \"_collegedb_slots\")";

/// The fence value of statements sent where a directory entry points: every live shard admits it.
pub const LIVE: i64 = -1;

/// The tombstone table's name: keys whose directory entry names another shard.
pub const MOVED: &str = "_collegedb_moved";

/// The key guard view's name.
pub const KEY_GUARD: &str = "_collegedb_key_guard";

/// The message of the guard's abort.
const NOT_OWNED_MESSAGE: &str = "collegedb: slot not owned by this shard";

/// The message of the key guard's abort.
const MOVED_MESSAGE: &str = "collegedb: key placed on another shard";

const CREATE: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS _collegedb_slots (slot INTEGER PRIMARY KEY NOT NULL)",
    "CREATE VIEW IF NOT EXISTS _collegedb_guard AS SELECT 0 AS slot WHERE 0",
    "CREATE TRIGGER IF NOT EXISTS _collegedb_guard_check INSTEAD OF INSERT ON _collegedb_guard \
     WHEN NOT EXISTS (SELECT 1 FROM _collegedb_slots WHERE slot = NEW.slot) \
     BEGIN SELECT RAISE(ABORT, 'collegedb: slot not owned by this shard'); END",
    "CREATE TABLE IF NOT EXISTS _collegedb_moved (scope TEXT NOT NULL, key NOT NULL, \
     PRIMARY KEY (scope, key)) WITHOUT ROWID",
    "CREATE VIEW IF NOT EXISTS _collegedb_key_guard AS SELECT '' AS scope, 0 AS key WHERE 0",
    "CREATE TRIGGER IF NOT EXISTS _collegedb_key_guard_check INSTEAD OF INSERT ON _collegedb_key_guard \
     WHEN EXISTS (SELECT 1 FROM _collegedb_moved WHERE scope = NEW.scope AND key = NEW.key) \
     BEGIN SELECT RAISE(ABORT, 'collegedb: key placed on another shard'); END",
];

/// Fills a never-filled fence with the slots of a JSON array.
const FILL: &str = "INSERT OR IGNORE INTO _collegedb_slots (slot) SELECT value FROM json_each(?) \
     WHERE NOT EXISTS (SELECT 1 FROM _collegedb_slots WHERE slot = -2)";
const FILLED: &str = "INSERT OR IGNORE INTO _collegedb_slots (slot) VALUES (-2)";
const PROBE: &str = "SELECT 1 FROM _collegedb_slots WHERE slot = ?";
const AFTER_MISS: &str = "SELECT EXISTS (SELECT 1 FROM _collegedb_slots WHERE slot = ?) AS owned, \
     EXISTS (SELECT 1 FROM _collegedb_placed WHERE scope = ?) AS marked";
const GRANT: &str = "INSERT OR IGNORE INTO _collegedb_slots (slot) SELECT value FROM json_each(?)";
const REVOKE: &str = "DELETE FROM _collegedb_slots WHERE slot IN (SELECT value FROM json_each(?))";
const LIST: &str = "SELECT slot FROM _collegedb_slots WHERE slot >= 0 ORDER BY slot";

/// Whether `error` says a shard lacks the fence or the marker table (data from before they
/// existed, or a shard never opened by the router).
/// Whether `error` is one of the shard's answers that make the router re-route or set up the
/// fence and try again, rather than a failure (see [`crate::metrics`]).
pub(crate) fn reroutes(error: &Error) -> bool {
    missing(error) || refusal(error).is_some()
}

pub(crate) fn missing(error: &Error) -> bool {
    matches!(error, Error::QueryFailed { message, .. }
        if message.contains("no such table: _collegedb_slots")
            || message.contains("no such table: _collegedb_placed")
            || message.contains("no such table: _collegedb_guard")
            || message.contains("no such table: _collegedb_moved")
            || message.contains("no such table: _collegedb_key_guard"))
}

/// Why a guarded batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The shard does not own a listed slot (or is not live): the map was stale.
    NotOwned,
    /// A listed key has a tombstone here: its directory entry names another shard.
    Moved,
}

/// Whether `error` is a guard's refusal, and which.
pub(crate) fn refusal(error: &Error) -> Option<Refusal> {
    match error {
        Error::QueryFailed { message, .. } if message.contains(NOT_OWNED_MESSAGE) => {
            Some(Refusal::NotOwned)
        }
        Error::QueryFailed { message, .. } if message.contains(MOVED_MESSAGE) => {
            Some(Refusal::Moved)
        }
        _ => None,
    }
}

/// The tombstone test that fenced inserts and upserts embed: true unless `key` of `table` has a
/// tombstone on this shard. `key_param` is the number of the key's parameter (`?N`), so that the
/// test binds nothing new.
pub(crate) fn not_moved(table: &str, key_param: usize) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM \"_collegedb_moved\" WHERE \"scope\" = {} AND \"key\" = ?{key_param})",
        sql_text(table)
    )
}

/// `text` as an SQL string literal.
fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn json_slots(slots: &[i64]) -> Value {
    Value::Text(serde_json::to_string(slots).expect("slots serialize"))
}

fn with_live(slots: &[u16]) -> Vec<i64> {
    slots.iter().map(|&s| i64::from(s)).chain([LIVE]).collect()
}

/// Creates shard `index`'s fence if it has none, filled from the stored map (loaded first, so a
/// handle built from an old configuration never fills a fence from its guess), and its marker
/// table (see [`crate::marker`]).
pub(crate) async fn ensure<B: Backend>(db: &CollegeDb<B>, index: usize) -> Result<()> {
    db.ensure_stored_map().await?;
    let name = db.shard_name(index).to_owned();
    // A shard that owns no slot (standby, or drained) is not live either: no directory entry
    // may name it until a transfer's preparation grants it.
    let slots = db.shard_map().slots_of(&name);
    let owned = if slots.is_empty() {
        Vec::new()
    } else {
        with_live(&slots)
    };
    let mut statements: Vec<Statement> = CREATE
        .iter()
        .map(|sql| Statement::new(*sql, Vec::new()))
        .collect();
    statements.push(Statement::new(FILL, vec![json_slots(&owned)]));
    statements.push(Statement::new(FILLED, Vec::new()));
    db.shard(index).batch(&statements).await?;
    crate::marker::ensure_table(db, index).await
}

/// Runs a fenced query on shard `index`, creating the fence first if the shard lacks it.
pub(crate) async fn query<B: Backend>(
    db: &CollegeDb<B>,
    index: usize,
    sql: &str,
    params: &[Value],
) -> Result<Vec<crate::backend::Row>> {
    let call = || db.metered(index, Op::Query, db.shard(index).query(sql, params));
    match call().await {
        Err(error) if missing(&error) => {
            ensure(db, index).await?;
            call().await
        }
        result => result,
    }
}

/// Runs a fenced point write on shard `index`, creating the fence first if the shard lacks it.
pub(crate) async fn execute<B: Backend>(
    db: &CollegeDb<B>,
    index: usize,
    sql: &str,
    params: &[Value],
) -> Result<u64> {
    let call = || db.metered(index, Op::Execute, db.shard(index).execute(sql, params));
    match call().await {
        Err(error) if missing(&error) => {
            ensure(db, index).await?;
            call().await
        }
        result => result,
    }
}

/// Keys a guarded batch checks for tombstones: the table, and the keys' values.
pub(crate) type GuardKeys<'a> = Option<(&'a str, &'a [Value])>;

/// Runs statements in one transaction on shard `index` after a guard for the fence values
/// `fences` and, if given, a key guard for `keys` (refused when one of them has a tombstone
/// here). `Ok(Err(_))`: the shard refused, and nothing was written.
pub(crate) async fn guarded_batch<B: Backend>(
    db: &CollegeDb<B>,
    index: usize,
    fences: &[i64],
    keys: GuardKeys<'_>,
    statements: &[Statement],
) -> Result<std::result::Result<Vec<u64>, Refusal>> {
    let mut all = guard_statements(fences);
    if let Some((table, keys)) = keys {
        all.extend(key_guard_statements(table, keys));
    }
    let guards = all.len();
    all.extend_from_slice(statements);
    let call = || db.metered(index, Op::Batch, db.shard(index).batch(&all));
    let mut result = call().await;
    if matches!(&result, Err(error) if missing(error)) {
        ensure(db, index).await?;
        result = call().await;
    }
    match result {
        Ok(changed) => Ok(Ok(changed[guards..].to_vec())),
        Err(error) => match refusal(&error) {
            Some(why) => Ok(Err(why)),
            None => Err(error),
        },
    }
}

/// Statements that abort their transaction unless the shard owns every slot listed.
fn guard_statements(fences: &[i64]) -> Vec<Statement> {
    let mut unique = fences.to_vec();
    unique.sort_unstable();
    unique.dedup();
    unique
        .chunks(crate::model::MAX_BOUND_PARAMETERS)
        .map(|chunk| {
            let values = vec!["(?)"; chunk.len()].join(", ");
            Statement::new(
                format!("INSERT INTO {GUARD} (slot) VALUES {values}"),
                chunk.iter().map(|&s| Value::Integer(s)).collect(),
            )
        })
        .collect()
}

/// Statements that abort their transaction if a key of `table` has a tombstone on the shard.
pub(crate) fn key_guard_statements(table: &str, keys: &[Value]) -> Vec<Statement> {
    let scope = sql_text(table);
    keys.chunks(crate::model::MAX_BOUND_PARAMETERS)
        .map(|chunk| {
            let values = vec![format!("({scope}, ?)"); chunk.len()].join(", ");
            Statement::new(
                format!("INSERT INTO {KEY_GUARD} (scope, key) VALUES {values}"),
                chunk.to_vec(),
            )
        })
        .collect()
}

/// Whether shard `index` admits the fence value `fence` (the probe after a fenced update or
/// delete changed nothing).
pub(crate) async fn admits<B: Backend>(
    db: &CollegeDb<B>,
    index: usize,
    fence: i64,
) -> Result<bool> {
    let rows = query(db, index, PROBE, &[Value::Integer(fence)]).await?;
    Ok(!rows.is_empty())
}

/// After a fenced read of `table` by a key of `slot` found nothing on shard `index`: whether the
/// shard owns the slot (if not, the map was stale), and whether it carries the table's off-hash
/// marker (if so, the directory may place the key elsewhere), in one query.
pub(crate) async fn after_miss<B: Backend>(
    db: &CollegeDb<B>,
    index: usize,
    slot: i64,
    table: &str,
) -> Result<(bool, bool)> {
    let params = [Value::Integer(slot), Value::Text(table.to_owned())];
    let rows = query(db, index, AFTER_MISS, &params).await?;
    let row = rows.first();
    let flag = |name| row.is_some_and(|r| r.value(name) == Some(&Value::Integer(1)));
    Ok((flag("owned"), flag("marked")))
}

/// The slots a shard's fence lists.
pub async fn list<S: ShardConn>(shard: &S) -> Result<Vec<u16>> {
    let mut slots = Vec::new();
    for row in shard.query(LIST, &[]).await? {
        slots.push(row.get::<i64>("slot")? as u16);
    }
    Ok(slots)
}

/// Makes a shard's fence admit the fence values `fences` (a move's switch-over, on the
/// receiving shard).
pub(crate) async fn grant<S: ShardConn>(shard: &S, fences: &[i64]) -> Result<()> {
    shard
        .execute_raw(GRANT, &[json_slots(fences)])
        .await
        .map(drop)
}

/// Makes a shard's fence refuse the fence values `fences` (a move's freeze, on the giving shard).
pub(crate) async fn revoke<S: ShardConn>(shard: &S, fences: &[i64]) -> Result<()> {
    shard
        .execute_raw(REVOKE, &[json_slots(fences)])
        .await
        .map(drop)
}

/// Leaves tombstones for `keys` of `table` on a shard: fenced inserts and upserts of those keys
/// are refused there from now on, and their writers follow the directory instead. Written before
/// the directory entry that sends a key elsewhere (as the off-hash marker is).
pub(crate) async fn bury<S: ShardConn>(shard: &S, table: &str, keys: &[Value]) -> Result<()> {
    for chunk in keys.chunks(crate::model::MAX_BOUND_PARAMETERS) {
        let values = vec!["(?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT OR IGNORE INTO {MOVED} (scope, key) SELECT {}, column1 FROM (VALUES {values})",
            sql_text(table)
        );
        shard.execute_raw(&sql, chunk).await?;
    }
    Ok(())
}

/// Removes the tombstone of `key` of `table` from a shard (the key moves back onto it).
pub(crate) async fn unbury<S: ShardConn>(shard: &S, table: &str, key: &Value) -> Result<()> {
    let sql = format!("DELETE FROM {MOVED} WHERE scope = ? AND key = ?");
    shard
        .execute_raw(&sql, &[Value::Text(table.to_owned()), key.clone()])
        .await
        .map(drop)
}

/// Every tombstone on a shard, as `(table, key)`.
pub(crate) async fn tombstones<S: ShardConn>(shard: &S) -> Result<Vec<(String, Value)>> {
    let sql = format!("SELECT scope, key FROM {MOVED} ORDER BY scope, key");
    let mut all = Vec::new();
    for row in shard.query(&sql, &[]).await? {
        let mut values = row.into_values().into_iter();
        if let (Some(Value::Text(scope)), Some(key)) = (values.next(), values.next()) {
            all.push((scope, key));
        }
    }
    Ok(all)
}

/// Removes the tombstones `keys` of `table` from a shard (they moved to another shard with
/// their slot).
pub(crate) async fn forget<S: ShardConn>(shard: &S, table: &str, keys: &[Value]) -> Result<()> {
    for chunk in keys.chunks(crate::model::MAX_BOUND_PARAMETERS - 1) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = format!("DELETE FROM {MOVED} WHERE scope = ? AND key IN ({marks})");
        let mut params = vec![Value::Text(table.to_owned())];
        params.extend_from_slice(chunk);
        shard.execute_raw(&sql, &params).await?;
    }
    Ok(())
}
