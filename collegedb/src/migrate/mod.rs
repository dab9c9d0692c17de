//! Schema migrations across shards: versioned SQL files applied in order to every shard, each
//! recorded on the shard it changed.
//!
//! Files are named as `wrangler d1 migrations` names them, `0001_create_users.sql`: the number is
//! the version, the rest the name. [`CollegeDb::migrate`] applies, version by version, every
//! migration a shard lacks, to every configured shard (standby ones too: they will hold rows).
//! Each migration on each shard is **one transaction**: its statements and the row recording it
//! in the shard's `_collegedb_migrations` commit together or not at all. So a run killed
//! anywhere, or stopped by a shard that refuses a statement, leaves every shard at a whole
//! version, and running it again applies exactly what is missing. A migration changed after it
//! was applied somewhere (its text no longer matches the recorded checksum) is refused before
//! anything runs.
//!
//! Statements that cannot run inside a transaction (`BEGIN`, `COMMIT`, `VACUUM`, ...) are refused
//! in migration files: the transaction is collegedb's.
//!
//! [`CollegeDb::schema_drift`] compares a model with its table on every shard, and
//! [`CollegeDb::add_missing_columns`] is the opt-in that adds the nullable columns a model gained
//! (`Option` fields) without a migration file.

mod drift;
mod split;

pub use drift::{DriftReport, ShardDrift, TableColumn};

use crate::backend::{Backend, ShardConn, Statement};
use crate::error::{Error, Result};
use crate::router::CollegeDb;
use crate::value::Value;

/// The table recording applied migrations on every shard.
pub const TABLE: &str = "_collegedb_migrations";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS _collegedb_migrations (\
     version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL, \
     applied_ms INTEGER NOT NULL)";
const APPLIED: &str = "SELECT version, name, checksum FROM _collegedb_migrations ORDER BY version";
const RECORD: &str =
    "INSERT INTO _collegedb_migrations (version, name, checksum, applied_ms) VALUES (?, ?, ?, ?)";

/// One migration: a version, a name and its SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version, from the file name's number.
    pub version: u32,
    /// The file name without the number and `.sql`.
    pub name: String,
    /// The statements, split as SQLite would.
    pub statements: Vec<String>,
    /// A checksum of the statements (XXH3, hex).
    pub checksum: String,
}

/// A set of migrations, in version order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrations {
    list: Vec<Migration>,
}

impl Migrations {
    /// Migrations from `(file name, SQL)` pairs (for example `include_str!`ed files in a
    /// Worker). File names must look like `0001_name.sql`; a version given twice, a file
    /// without statements, or a statement that controls transactions is refused with
    /// [`Error::ConfigInvalid`] naming the file.
    ///
    /// ```
    /// let migrations = collegedb::migrate::Migrations::new([
    ///     ("0002_index.sql", "CREATE INDEX users_email ON users (email);"),
    ///     ("0001_users.sql", "CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT);"),
    /// ])?;
    /// assert_eq!(migrations.latest(), Some(2));
    /// # Ok::<(), collegedb::Error>(())
    /// ```
    pub fn new<N: AsRef<str>, S: AsRef<str>>(
        files: impl IntoIterator<Item = (N, S)>,
    ) -> Result<Self> {
        let mut list = Vec::new();
        for (file, sql) in files {
            list.push(parse(file.as_ref(), sql.as_ref())?);
        }
        list.sort_by_key(|m: &Migration| m.version);
        if let Some(pair) = list.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(Error::config(format!(
                "two migrations have version {}: `{}` and `{}`; renumber one",
                pair[0].version, pair[0].name, pair[1].name
            )));
        }
        Ok(Migrations { list })
    }

    /// The `*.sql` files of a folder (other files are ignored).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(folder: impl AsRef<std::path::Path>) -> Result<Self> {
        let folder = folder.as_ref();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(folder).map_err(|e| {
            Error::config(format!(
                "cannot read the migrations folder {}: {e}",
                folder.display()
            ))
        })? {
            let path = entry.map_err(|e| Error::config(e.to_string()))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("sql") {
                continue;
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
            files.push((name, sql));
        }
        Migrations::new(files)
    }

    /// The migrations, in version order.
    pub fn list(&self) -> &[Migration] {
        &self.list
    }

    /// The highest version, if any.
    pub fn latest(&self) -> Option<u32> {
        self.list.last().map(|m| m.version)
    }
}

/// Statements a migration may not hold: they control the transaction it runs in.
const REFUSED: [&str; 8] = [
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "VACUUM",
    "DETACH",
];

fn parse(file: &str, sql: &str) -> Result<Migration> {
    let stem = file.strip_suffix(".sql").unwrap_or(file);
    let (number, name) = stem.split_once('_').unwrap_or((stem, ""));
    let version: u32 = match number.parse() {
        Ok(v) if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => v,
        _ => {
            return Err(Error::config(format!(
                "migration file `{file}`: name it `<number>_<name>.sql`, as `0001_create_users.sql`"
            )))
        }
    };
    let statements = split::statements(sql);
    if statements.is_empty() {
        return Err(Error::config(format!(
            "migration file `{file}` holds no statement"
        )));
    }
    for statement in &statements {
        let first = first_word(statement);
        if REFUSED.iter().any(|w| first.eq_ignore_ascii_case(w)) {
            return Err(Error::config(format!(
                "migration file `{file}`: `{first}` is not allowed; each migration runs in a transaction of its own"
            )));
        }
    }
    let checksum = format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(statements.join(";\n").as_bytes())
    );
    Ok(Migration {
        version,
        name: name.to_owned(),
        statements,
        checksum,
    })
}

/// The first word of a statement, after comments.
fn first_word(statement: &str) -> &str {
    let mut rest = statement.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    &rest[..end]
}

/// One migration applied to one shard, as reported to a progress hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The shard.
    pub shard: String,
    /// The migration's version.
    pub version: u32,
    /// Its name.
    pub name: String,
    /// Migrations applied so far in this run, this one included.
    pub done: usize,
    /// Migrations this run applies in all.
    pub total: usize,
}

/// A function called after each migration applied to a shard.
pub type MigrateHook = std::sync::Arc<dyn Fn(&Applied) + Send + Sync>;

/// Where every shard stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// `(shard, versions applied there)`, in configuration order.
    pub shards: Vec<(String, Vec<u32>)>,
}

impl MigrationStatus {
    /// Every shard's highest applied version (`None`: none applied).
    pub fn versions(&self) -> Vec<(String, Option<u32>)> {
        self.shards
            .iter()
            .map(|(shard, applied)| (shard.clone(), applied.last().copied()))
            .collect()
    }
}

impl std::fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .versions()
            .into_iter()
            .map(|(shard, version)| match version {
                Some(v) => format!("{shard} at {v}"),
                None => format!("{shard} at none"),
            })
            .collect();
        f.write_str(&parts.join(", "))
    }
}

impl<B: Backend> CollegeDb<B> {
    /// The migrations applied on every shard.
    pub async fn migration_status(&self) -> Result<MigrationStatus> {
        let mut status = MigrationStatus::default();
        for (index, shard) in self.shards().into_iter().enumerate() {
            let applied = applied(shard).await?;
            status.shards.push((
                self.shard_name(index).to_owned(),
                applied.iter().map(|(v, _, _)| *v).collect(),
            ));
        }
        Ok(status)
    }

    /// Applies every migration a shard lacks, version by version, to every configured shard; see
    /// the [module docs](crate::migrate). Returns where the shards stand. A shard that refuses a
    /// statement stops the run with [`Error::MigrationFailed`], which says where every shard
    /// stands; fix the cause and run it again.
    ///
    /// ```
    /// use collegedb::{CollegeDb, Config};
    /// use collegedb::migrate::Migrations;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # pollster::block_on(async {
    /// let db = CollegeDb::open_embedded(Config::with_shard_names(["a", "b"]), dir.path())?;
    /// let migrations = Migrations::new([
    ///     ("0001_notes.sql", "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL);"),
    ///     ("0002_tags.sql", "ALTER TABLE notes ADD COLUMN tags TEXT;"),
    /// ])?;
    /// let status = db.migrate(&migrations).await?;
    /// assert_eq!(status.to_string(), "a at 2, b at 2");
    /// // Nothing left to do the second time.
    /// assert_eq!(db.migrate(&migrations).await?, status);
    /// # Ok::<(), collegedb::Error>(()) }).unwrap();
    /// ```
    pub async fn migrate(&self, migrations: &Migrations) -> Result<MigrationStatus> {
        self.migrate_with(migrations, None).await
    }

    /// [`CollegeDb::migrate`], calling `on_step` after each migration applied to a shard.
    pub async fn migrate_with(
        &self,
        migrations: &Migrations,
        on_step: Option<MigrateHook>,
    ) -> Result<MigrationStatus> {
        // Where each shard stands, and whether any applied migration has changed since.
        let mut missing: Vec<Vec<&Migration>> = Vec::new();
        for (index, shard) in self.shards().into_iter().enumerate() {
            shard.execute_raw(CREATE, &[]).await?;
            let applied = applied(shard).await?;
            for (version, name, checksum) in &applied {
                if let Some(m) = migrations.list().iter().find(|m| m.version == *version) {
                    if m.checksum != *checksum {
                        return Err(Error::config(format!(
                            "migration {version} (`{name}`) was changed after it was applied on shard `{}`: restore it, and put the change in a new migration",
                            self.shard_name(index)
                        )));
                    }
                }
            }
            missing.push(
                migrations
                    .list()
                    .iter()
                    .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
                    .collect(),
            );
        }
        let total: usize = missing.iter().map(Vec::len).sum();
        let mut done = 0;
        // Version-major: every shard gets a version before any gets the next, so shards stay
        // within one version of each other while a run is under way.
        for migration in migrations.list() {
            for (index, shard) in self.shards().into_iter().enumerate() {
                if !missing[index].contains(&migration) {
                    continue;
                }
                if let Err(error) = apply(shard, migration).await {
                    let at = self
                        .migration_status()
                        .await
                        .map_or_else(|e| format!("unknown ({e})"), |status| status.to_string());
                    return Err(Error::MigrationFailed {
                        shard: self.shard_name(index).to_owned(),
                        version: migration.version,
                        name: migration.name.clone(),
                        at,
                        source: Box::new(error),
                    });
                }
                done += 1;
                if let Some(hook) = &on_step {
                    hook(&Applied {
                        shard: self.shard_name(index).to_owned(),
                        version: migration.version,
                        name: migration.name.clone(),
                        done,
                        total,
                    });
                }
            }
        }
        self.migration_status().await
    }
}

/// The migrations applied on a shard: `(version, name, checksum)`.
async fn applied<S: ShardConn>(shard: &S) -> Result<Vec<(u32, String, String)>> {
    let rows = match shard.query_raw(APPLIED, &[]).await {
        Err(Error::QueryFailed { message, .. }) if message.contains("no such table") => {
            return Ok(Vec::new())
        }
        result => result?,
    };
    rows.into_iter()
        .map(|row| {
            Ok((
                row.get::<i64>("version")? as u32,
                row.get::<String>("name")?,
                row.get::<String>("checksum")?,
            ))
        })
        .collect()
}

/// Statements that give another shard `from`'s record of applied migrations (for a shard that
/// receives `from`'s schema as a whole).
pub(crate) async fn copy_records<S: ShardConn>(from: &S) -> Result<Vec<Statement>> {
    let mut statements = vec![Statement::new(CREATE, Vec::new())];
    let rows = match from
        .query_raw(
            "SELECT version, name, checksum, applied_ms FROM _collegedb_migrations",
            &[],
        )
        .await
    {
        Err(Error::QueryFailed { message, .. }) if message.contains("no such table") => {
            return Ok(Vec::new())
        }
        result => result?,
    };
    for row in rows {
        statements.push(Statement::new(
            "INSERT OR IGNORE INTO _collegedb_migrations (version, name, checksum, applied_ms) \
             VALUES (?, ?, ?, ?)",
            row.into_values(),
        ));
    }
    Ok(statements)
}

/// One migration on one shard: its statements and its record, in one transaction.
async fn apply<S: ShardConn>(shard: &S, migration: &Migration) -> Result<()> {
    let mut statements: Vec<Statement> = migration
        .statements
        .iter()
        .map(|sql| Statement::new(sql.clone(), Vec::new()))
        .collect();
    statements.push(Statement::new(
        RECORD,
        vec![
            Value::Integer(i64::from(migration.version)),
            Value::Text(migration.name.clone()),
            Value::Text(migration.checksum.clone()),
            Value::Integer(crate::growth::now_ms() as i64),
        ],
    ));
    shard.batch(&statements).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::{first_word, Migrations};

    #[test]
    fn file_names_versions_and_refused_statements() {
        let ok =
            Migrations::new([("0010_b.sql", "SELECT 1"), ("0002_a.sql", "SELECT 2;")]).unwrap();
        let versions: Vec<u32> = ok.list().iter().map(|m| m.version).collect();
        assert_eq!(versions, [2, 10]);
        assert_eq!(ok.list()[0].name, "a");
        for (file, sql, why) in [
            ("users.sql", "SELECT 1", "<number>_<name>.sql"),
            ("0001_x.sql", " -- only a comment\n", "no statement"),
            (
                "0001_x.sql",
                "BEGIN; SELECT 1; COMMIT;",
                "`BEGIN` is not allowed",
            ),
            ("0001_x.sql", "/* c */ vacuum", "`vacuum` is not allowed"),
        ] {
            let err = Migrations::new([(file, sql)]).unwrap_err();
            assert_eq!(err.code(), "CONFIG_INVALID");
            assert!(err.to_string().contains(why), "{err}");
        }
        let twice = Migrations::new([("0001_a.sql", "SELECT 1"), ("1_b.sql", "SELECT 2")]);
        assert!(twice
            .unwrap_err()
            .to_string()
            .contains("two migrations have version 1"));
        assert_eq!(first_word("-- x\n/* y */ Create table t (a)"), "Create");
    }
}
