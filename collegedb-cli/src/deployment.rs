//! Finding and opening a deployment from its folder alone.
//!
//! The folder holds `_directory.db` (with the stored shard map) and one `<shard>.sqlite` file per
//! shard. The map names the shards that own slots; any other shard file is *standby*: a shard
//! configured beside the others that owns nothing yet (or any more, after a drain).
//!
//! Two ways to open:
//!
//! * [`Deployment::open_map`] configures exactly the map's shards. The library then takes the
//!   stored map as it is and changes nothing, so the read-only commands (`status`, `verify`) use
//!   it. Standby files are read directly instead ([`peek`]).
//! * [`Deployment::open_all`] configures the map's shards, every standby file, and optionally a
//!   new shard (whose file the library creates): what growth operations need, since they move
//!   rows to and from shards outside the map. On a deployment that holds no rows at all, the
//!   library lets a configured list replace the map (nothing can be stranded), so this open can
//!   change an empty deployment's map.

use std::path::{Path, PathBuf};

use collegedb::backend::embedded::stored_map;
use collegedb::slots::ShardMap;
use collegedb::{CollegeDb, Config, EmbeddedDb, Error, Result};

/// A deployment's folder, its stored map and its shard files.
pub struct Deployment {
    /// The folder.
    pub folder: PathBuf,
    /// The stored shard map when the deployment was found.
    pub map: ShardMap,
    /// The shard names with a `<name>.sqlite` file in the folder, sorted.
    pub files: Vec<String>,
}

impl Deployment {
    /// Reads the stored map and lists the shard files; opens nothing.
    pub fn find(folder: &Path) -> Result<Self> {
        if !folder.is_dir() {
            return Err(Error::ConfigInvalid(format!(
                "{} is not a folder: give the folder of an embedded collegedb deployment",
                folder.display()
            )));
        }
        let Some(map) = stored_map(folder)? else {
            return Err(Error::ConfigInvalid(format!(
                "{} holds no collegedb deployment (no _directory.db with a shard map)",
                folder.display()
            )));
        };
        Ok(Deployment {
            folder: folder.to_path_buf(),
            map,
            files: shard_files(folder)?,
        })
    }

    /// Whether `shard` owns slots or has a file in the folder.
    pub fn knows(&self, shard: &str) -> bool {
        self.map.contains(shard) || self.files.iter().any(|f| f == shard)
    }

    /// Opens the map's shards only: the library changes nothing.
    pub fn open_map(&self) -> Result<EmbeddedDb> {
        CollegeDb::open_embedded(
            Config::with_shard_names(self.map.shards().to_vec()),
            &self.folder,
        )
    }

    /// Opens the map's shards, every standby file and `extra` (created if new).
    pub fn open_all(&self, extra: Option<&str>) -> Result<EmbeddedDb> {
        let mut names: Vec<String> = self.map.shards().to_vec();
        names.extend(self.files.iter().cloned());
        names.extend(extra.map(str::to_owned));
        names.sort();
        names.dedup();
        CollegeDb::open_embedded(Config::with_shard_names(names), &self.folder)
    }

    /// The path of a shard's file.
    pub fn file_of(&self, shard: &str) -> PathBuf {
        self.folder.join(format!("{shard}.sqlite"))
    }
}

/// Whether `name` is a shard name the library accepts (the configuration's rule).
fn valid_shard_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The names of the `<name>.sqlite` files in `folder` that are valid shard names, sorted.
fn shard_files(folder: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(folder)
        .map_err(|e| Error::Io(format!("cannot list {}: {e}", folder.display())))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::Io(format!("cannot list {}: {e}", folder.display())))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".sqlite")) else {
            continue;
        };
        if valid_shard_name(name) && entry.path().is_file() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// What a shard file holds, read directly (not through the router).
pub struct Peek {
    /// Rows per user table.
    pub tables: Vec<(String, u64)>,
    /// The file's size in bytes (pages in use).
    pub size_bytes: u64,
}

impl Peek {
    /// Rows over every user table.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, rows)| rows).sum()
    }
}

/// Counts the rows of every user table of a shard file, with plain reads only. The same tables
/// as the library's `get_shard_stats`: internal ones (`sqlite_`, `_cf_`, `_collegedb_`) skipped.
pub fn peek(path: &Path) -> Result<Peek> {
    let io = |e: rusqlite::Error| Error::Io(format!("cannot read {}: {e}", path.display()));
    // Read-write without create: a read-only open of a WAL file can fail when its `-shm` is
    // missing; only reads are run.
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(io)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(io)?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
             AND name NOT LIKE '\\_collegedb\\_%' ESCAPE '\\' ORDER BY name",
        )
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
        .map_err(io)?;
    let mut tables = Vec::new();
    for name in names {
        let sql = format!("SELECT COUNT(*) FROM \"{}\"", name.replace('"', "\"\""));
        let rows: i64 = conn.query_row(&sql, [], |r| r.get(0)).map_err(io)?;
        tables.push((name, rows as u64));
    }
    let size: i64 = conn
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .map_err(io)?;
    Ok(Peek {
        tables,
        size_bytes: size as u64,
    })
}
