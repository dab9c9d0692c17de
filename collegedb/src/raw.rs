//! Raw SQL: routed by key ([`TableScope`]), aimed at one shard (`*_shard`), or spread over all
//! shards ([`CollegeDb::all_shards`]); plus statistics and the guarded `flush`.
//!
//! Parameters are always bound, never spliced into SQL. Every statement is checked against D1's
//! limits before it runs: at most [`MAX_BOUND_PARAMETERS`] parameters, integers within
//! ±(2^53 - 1).

use std::collections::BTreeMap;

use crate::backend::{Backend, Row, ShardConn, Statement};
use crate::config::{Strategies, Strategy, StrategyOverride};
use crate::crud::{execute_owner, query_owner, Cost, RoutedQuery, RoutedWrite};
use crate::error::{Error, Result};
use crate::fence;
use crate::key::AnyKey;
use crate::model::MAX_BOUND_PARAMETERS;
use crate::router::{hash_first, Backoff, CollegeDb};
use crate::value::Value;

/// Checks a statement and its parameters against D1's limits: its length, the number of
/// parameters, and each value.
pub fn check_statement(sql: &str, params: &[Value]) -> Result<()> {
    if sql.len() > crate::model::MAX_STATEMENT_BYTES {
        return Err(Error::StatementTooLarge {
            len: sql.len(),
            max: crate::model::MAX_STATEMENT_BYTES,
        });
    }
    check_params(params)
}

/// Checks parameters against D1's limits.
pub fn check_params(params: &[Value]) -> Result<()> {
    if params.len() > MAX_BOUND_PARAMETERS {
        return Err(Error::TooManyParameters {
            count: params.len(),
            max: MAX_BOUND_PARAMETERS,
        });
    }
    params.iter().try_for_each(Value::check_bindable)
}

/// Raw SQL routed by key within one table's directory scope. Get one with [`CollegeDb::table`].
#[derive(Debug)]
#[must_use]
pub struct TableScope<'a, B: Backend> {
    db: &'a CollegeDb<B>,
    table: &'a str,
    strategies: Strategies,
}

impl<B: Backend> CollegeDb<B> {
    /// Raw routed SQL for keys of `table`, with the configuration's default strategies.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config, Value};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b"]), dir.path())?;
    /// db.run_all_shards("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)", &[]).await?;
    /// let notes = db.table("notes");
    /// notes.run("n1", "INSERT INTO notes (id, body) VALUES (?, ?)", &["n1".into(), "hi".into()]).await?;
    /// let row = notes.first("n1", "SELECT body FROM notes WHERE id = ?", &["n1".into()]).await?;
    /// assert_eq!(row.unwrap().get::<String>("body")?, "hi");
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub fn table<'a>(&'a self, table: &'a str) -> TableScope<'a, B> {
        TableScope {
            db: self,
            table,
            strategies: self.strategies(StrategyOverride::default()),
        }
    }

    /// Runs a statement on the named shard; returns the rows changed.
    pub async fn run_shard(&self, shard: &str, sql: &str, params: &[Value]) -> Result<u64> {
        check_statement(sql, params)?;
        let index = self.shard_by_name(shard)?;
        let call = self.shard(index).execute_raw(sql, params);
        self.metered(index, crate::metrics::Op::Execute, call).await
    }

    /// Runs a query on the named shard.
    pub async fn all_shard(&self, shard: &str, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        check_statement(sql, params)?;
        let index = self.shard_by_name(shard)?;
        let call = self.shard(index).query(sql, params);
        self.metered(index, crate::metrics::Op::Query, call).await
    }

    /// Runs a query on the named shard and returns its first row.
    pub async fn first_shard(
        &self,
        shard: &str,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Row>> {
        Ok(self.all_shard(shard, sql, params).await?.into_iter().next())
    }

    /// Runs a statement on every shard (schema changes, maintenance); stops at the first failure.
    pub async fn run_all_shards(&self, sql: &str, params: &[Value]) -> Result<u64> {
        check_statement(sql, params)?;
        let mut changed = 0;
        for shard in self.shards() {
            changed += shard.execute_raw(sql, params).await?;
        }
        Ok(changed)
    }

    /// Runs a query on every shard that serves rows and gathers the rows. A failing shard does not fail the call:
    /// it is reported in [`Scatter::failures`], so callers decide whether partial results do.
    pub async fn all_shards(&self, sql: &str, params: &[Value]) -> Result<Scatter> {
        check_statement(sql, params)?;
        let mut scatter = Scatter::default();
        let results = self
            .on_serving_shards(|shard| shard.query(sql, params))
            .await;
        for (index, result) in results {
            match result {
                Ok(rows) => scatter.rows.extend(
                    rows.into_iter()
                        .map(|row| (self.shard_name(index).to_owned(), row)),
                ),
                Err(error) => scatter
                    .failures
                    .push((self.shard_name(index).to_owned(), error)),
            }
        }
        Ok(scatter)
    }

    /// Row counts per table and size, for every shard, read from the shards themselves.
    pub async fn get_shard_stats(&self) -> Result<Vec<ShardStats>> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut tables = BTreeMap::new();
                for table in user_tables(shard).await? {
                    let sql = format!("SELECT COUNT(*) FROM {}", quote_ident(&table));
                    let rows = shard.query(&sql, &[]).await?;
                    let count = match rows.first().and_then(|r| r.values().first()) {
                        Some(Value::Integer(n)) => *n as u64,
                        _ => 0,
                    };
                    tables.insert(table, count);
                }
                Ok((tables, shard.size_bytes().await?))
            })
            .await;
        per_shard
            .into_iter()
            .enumerate()
            .map(|(index, result)| {
                let (tables, size_bytes) = result?;
                Ok(ShardStats {
                    shard: self.shard_name(index).to_owned(),
                    rows: tables.values().sum(),
                    tables,
                    size_bytes,
                })
            })
            .collect()
    }

    /// Deletes every row of every table on every shard and clears the directory.
    ///
    /// Refused with [`Error::FlushDisabled`] unless the configuration sets `allow_flush`: this is
    /// for development and tests, never production.
    pub async fn flush(&self) -> Result<()> {
        self.flush_allowed()?;
        for shard in self.shards() {
            for table in user_tables(shard).await? {
                let sql = format!("DELETE FROM {}", quote_ident(&table));
                shard.execute_raw(&sql, &[]).await?;
            }
            // Tombstones name directory entries, which go too (see `crate::fence`).
            let sql = format!("DELETE FROM {}", crate::fence::MOVED);
            match shard.execute_raw(&sql, &[]).await {
                Err(error) if crate::fence::missing(&error) => {}
                result => {
                    result?;
                }
            }
        }
        self.clear_directory().await
    }
}

/// `name` as a quoted SQL identifier: `"name"`, with inner quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether a statement adds or changes user rows: an `INSERT`, `REPLACE`, `UPDATE` or `WITH`
/// whose target is not one of collegedb's own `_collegedb_...` tables.
#[cfg_attr(not(feature = "cloudflare"), allow(dead_code))]
pub(crate) fn adds_user_rows(text: &str) -> bool {
    let mut words = text
        .split(|c: char| c.is_whitespace() || c == '(')
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']'));
    let Some(verb) = words.next().map(str::to_ascii_uppercase) else {
        return false;
    };
    if !matches!(verb.as_str(), "INSERT" | "REPLACE" | "UPDATE" | "WITH") {
        return false;
    }
    if verb == "WITH" {
        return true;
    }
    // Skip `OR <conflict>` and `INTO` to reach the table.
    let target = words.find(|w| {
        !matches!(
            w.to_ascii_uppercase().as_str(),
            "OR" | "INTO" | "ROLLBACK" | "ABORT" | "REPLACE" | "FAIL" | "IGNORE"
        )
    });
    !target.is_some_and(|table| table.starts_with("_collegedb_"))
}

/// The `sqlite_master` condition that leaves out what is not the user's: SQLite's tables,
/// Cloudflare's (`_cf_...`), collegedb's own (`_collegedb_...`), and the table local workerd
/// keeps in every Durable Object (`__miniflare_do_name`).
pub(crate) const NOT_INTERNAL: &str = "name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
     AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
     AND name NOT LIKE '\\_collegedb\\_%' ESCAPE '\\' \
     AND name NOT LIKE '\\_\\_miniflare\\_%' ESCAPE '\\'";

/// The user tables of a shard: not SQLite's, Cloudflare's or collegedb's own.
pub(crate) async fn user_tables<S: ShardConn>(shard: &S) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND {NOT_INTERNAL} ORDER BY name"
    );
    let rows = shard.query(&sql, &[]).await?;
    rows.into_iter()
        .map(|row| row.get::<String>("name"))
        .collect()
}

/// Rows gathered from every shard, and the shards that failed.
#[derive(Debug, Default)]
pub struct Scatter {
    /// `(shard name, row)` pairs, shard by shard in configuration order.
    pub rows: Vec<(String, Row)>,
    /// The shards whose query failed, with the error.
    pub failures: Vec<(String, Error)>,
}

impl Scatter {
    /// The rows, or the first failure if any shard failed.
    pub fn complete(self) -> Result<Vec<Row>> {
        match self.failures.into_iter().next() {
            Some((_, error)) => Err(error),
            None => Ok(self.rows.into_iter().map(|(_, row)| row).collect()),
        }
    }
}

/// What one shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard's name.
    pub shard: String,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    /// Rows over all tables.
    pub rows: u64,
    /// The database's size in bytes.
    pub size_bytes: u64,
}

impl<'a, B: Backend> TableScope<'a, B> {
    /// Uses these strategies instead of the configuration's defaults.
    pub fn with_strategies(mut self, read: Strategy, write: Strategy) -> Self {
        self.strategies = Strategies { read, write };
        self
    }

    /// Runs a write for `key` on its owner shard; returns the rows changed.
    ///
    /// Only a statement that can create the key's first row (`INSERT` or `REPLACE`, also after a
    /// `WITH` clause) places a key that has no owner yet, with the write strategy. Any other
    /// statement (`UPDATE`, `DELETE`, ...) goes to the owner found in the read strategy's lookup
    /// order and never creates a directory entry: an `UPDATE` or `DELETE` of a made-up key
    /// changes nothing and writes nothing to the directory.
    ///
    /// With hash reads and writes this performs no directory operation for keys on their hash
    /// shard.
    pub async fn run<K: AnyKey>(&self, key: K, sql: &str, params: &[Value]) -> Result<u64> {
        check_statement(sql, params)?;
        let key = key.into_any_key()?;
        let Strategies { read, write } = self.strategies;
        if !creates_rows(sql) {
            let statement = RoutedWrite {
                sql,
                fenced: None,
                params,
                cost: Cost::Unknown,
            };
            let changed = execute_owner(self.db, self.table, &key, read, statement).await?;
            return Ok(changed.map_or(0, |(_, n)| n));
        }
        // Behind the fence's guard (see `crate::fence`), following the map or the directory
        // if the shard refuses.
        let statement = [Statement::new(sql, params.to_vec())];
        let keys = [key.to_value()];
        let mut backoff = Backoff::new();
        // The shard the directory store named after a tombstone refused the key.
        let mut directed = None;
        loop {
            let (shard, fence_value) = if let Some(shard) = directed {
                (shard, fence::LIVE)
            } else if hash_first(read) && write == Strategy::Hash {
                self.db.hash_target(&key)
            } else {
                match self.db.directory_lookup(self.table, &key).await? {
                    Some(shard) => (shard, fence::LIVE),
                    None if write != Strategy::Hash => {
                        (self.db.place(self.table, &key, write).await?, fence::LIVE)
                    }
                    None => self.db.hash_target(&key),
                }
            };
            let guard = Some((self.table, &keys[..]));
            match fence::guarded_batch(self.db, shard, &[fence_value], guard, &statement).await? {
                Ok(changed) => return Ok(changed[0]),
                Err(fence::Refusal::NotOwned) => {
                    directed = None;
                    self.db
                        .after_not_admitted(self.table, &key, fence_value, &mut backoff)
                        .await?
                }
                Err(fence::Refusal::Moved) => {
                    directed = self
                        .db
                        .after_moved(self.table, &key, shard, &mut backoff)
                        .await?;
                }
            }
        }
    }

    /// Runs a query for `key` on the shard that owns it. Never creates directory entries.
    pub async fn all<K: AnyKey>(&self, key: K, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        check_statement(sql, params)?;
        let key = key.into_any_key()?;
        let read = self.strategies.read;
        let query = RoutedQuery {
            sql,
            fenced: None,
            params,
        };
        let found = query_owner(self.db, self.table, &key, read, query).await?;
        Ok(found.map(|(_, _, rows)| rows).unwrap_or_default())
    }

    /// Like [`TableScope::all`], returning the first row.
    pub async fn first<K: AnyKey>(
        &self,
        key: K,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Row>> {
        Ok(self.all(key, sql, params).await?.into_iter().next())
    }

    /// The shard that owns `key` (directory entry, else hash shard). Never writes.
    pub async fn shard_for(&self, key: impl AnyKey) -> Result<&'a str> {
        let key = key.into_any_key()?;
        let shard = self.db.owner(self.table, &key).await?;
        Ok(&self.db.config().shards[shard].name)
    }
}

/// Whether a statement can create rows: its first keyword, after comments and any `WITH` clause,
/// is `INSERT` or `REPLACE`. Only such statements may place a new key.
pub(crate) fn creates_rows(sql: &str) -> bool {
    let words = keywords(sql);
    let mut depth = 0usize;
    let mut in_with = false;
    for word in words {
        match word {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Word(word) if depth == 0 => {
                if word.eq_ignore_ascii_case("WITH") && !in_with {
                    in_with = true;
                    continue;
                }
                if word.eq_ignore_ascii_case("INSERT") || word.eq_ignore_ascii_case("REPLACE") {
                    return true;
                }
                // Inside a WITH clause, skip CTE names, `AS`, `RECURSIVE`, `MATERIALIZED`...
                // until the statement's own verb.
                let verb = ["SELECT", "UPDATE", "DELETE", "VALUES"]
                    .iter()
                    .any(|v| word.eq_ignore_ascii_case(v));
                if !in_with || verb {
                    return false;
                }
            }
            Token::Word(_) => {}
        }
    }
    false
}

enum Token<'a> {
    Word(&'a str),
    Open,
    Close,
}

/// The words and parentheses of `sql`, skipping comments, string literals and quoted names.
fn keywords(sql: &str) -> impl Iterator<Item = Token<'_>> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let c = bytes[i];
            match c {
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/'))
                    {
                        i += 1;
                    }
                    i += 2;
                }
                b'\'' | b'"' | b'`' | b'[' => {
                    let close = if c == b'[' { b']' } else { c };
                    i += 1;
                    while i < bytes.len() && bytes[i] != close {
                        i += 1;
                    }
                    i += 1;
                }
                b'(' => {
                    i += 1;
                    return Some(Token::Open);
                }
                b')' => {
                    i += 1;
                    return Some(Token::Close);
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_')
                    {
                        i += 1;
                    }
                    return Some(Token::Word(&sql[start..i]));
                }
                _ => i += 1,
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_that_add_user_rows_are_told_apart() {
        for sql in [
            "INSERT INTO users (id) VALUES (?)",
            "insert or replace into \"users\"(id) values (?)",
            "REPLACE INTO t VALUES (1)",
            "UPDATE OR IGNORE sessions SET x = 1",
            "WITH n AS (SELECT 1) INSERT INTO t SELECT * FROM n",
            "INSERT INTO s (a, b) SELECT ?, ? WHERE ? IN (SELECT slot FROM _collegedb_slots)",
        ] {
            assert!(super::adds_user_rows(sql), "{sql}");
        }
        for sql in [
            "DELETE FROM users WHERE id = ?",
            "INSERT INTO _collegedb_guard (k) VALUES (?)",
            "INSERT OR IGNORE INTO \"_collegedb_moved\" VALUES (?, ?)",
            "UPDATE _collegedb_slots SET live = 0",
            "CREATE TABLE IF NOT EXISTS t (id)",
            "SELECT * FROM users",
            "",
        ] {
            assert!(!super::adds_user_rows(sql), "{sql}");
        }
    }

    use super::creates_rows;

    #[test]
    fn only_inserting_statements_create_rows() {
        for sql in [
            "INSERT INTO t (id) VALUES (?)",
            "  insert or ignore into t values (?)",
            "REPLACE INTO t VALUES (?)",
            "-- note\nINSERT INTO t VALUES (?)",
            "/* a */ INSERT INTO t VALUES (?)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "WITH RECURSIVE x(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM x) INSERT INTO t SELECT n FROM x",
        ] {
            assert!(creates_rows(sql), "{sql}");
        }
        for sql in [
            "UPDATE t SET a = 'INSERT' WHERE id = ?",
            "DELETE FROM t WHERE id = ?",
            "SELECT * FROM t",
            "-- INSERT\nDELETE FROM t",
            "/* INSERT */ UPDATE t SET a = 1",
            "WITH x AS (SELECT 'INSERT') DELETE FROM t WHERE id IN (SELECT * FROM x)",
            "UPDATE \"insert\" SET a = 1",
            "",
        ] {
            assert!(!creates_rows(sql), "{sql}");
        }
    }
}
