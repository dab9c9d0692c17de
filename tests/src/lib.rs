//! Shared models and helpers for collegedb's integration tests.

#[cfg(feature = "browser")]
pub mod browser;
#[cfg(feature = "workerd")]
pub mod workerd;

use collegedb::{CollegeDb, Config, Embedded};
use serde::{Deserialize, Serialize};

/// A model with the default (hash) strategies.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "users")]
pub struct User {
    /// The shard key.
    #[sharded(key)]
    pub id: String,
    /// A required column.
    pub name: String,
    /// A nullable column.
    pub email: Option<String>,
}

impl User {
    /// A user with a derived name.
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        User {
            name: format!("name of {id}"),
            email: Some(format!("{id}@example.com")),
            id,
        }
    }
}

/// Preferences stored as JSON text.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Prefs {
    /// A theme name.
    pub theme: String,
    /// A list of tags.
    pub tags: Vec<String>,
}

/// Every supported column type, an integer key, and per-model mixed strategies.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "orders", read = "hash", write = "round-robin")]
pub struct Order {
    /// The shard key.
    #[sharded(key)]
    pub id: i64,
    /// TEXT.
    pub customer: String,
    /// INTEGER (i32).
    pub quantity: i32,
    /// INTEGER (u32).
    pub units: u32,
    /// REAL.
    pub total: f64,
    /// INTEGER 0/1.
    pub paid: bool,
    /// BLOB.
    pub receipt: Vec<u8>,
    /// Nullable INTEGER.
    pub note_id: Option<i64>,
    /// JSON via serde_json::Value.
    pub meta: serde_json::Value,
    /// Any serde type as JSON text, under another column name.
    #[sharded(json, column = "preferences")]
    pub prefs: Prefs,
}

/// A model placed by location and read directory-first.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "sessions", strategy = "location")]
pub struct Session {
    /// The shard key.
    #[sharded(key)]
    pub token: String,
    /// The owner.
    pub user_id: String,
}

/// A model placed at random and read hash-first.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "events", read = "hash", write = "random")]
pub struct Event {
    /// The shard key.
    #[sharded(key)]
    pub id: u32,
    /// A payload.
    pub body: String,
}

/// A round-robin model with a text key, for bulk writes.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "notes", strategy = "round-robin")]
pub struct Note {
    /// The shard key.
    #[sharded(key)]
    pub id: String,
    /// Text.
    pub body: String,
    /// REAL.
    pub score: f64,
}

impl Note {
    /// Note number `i`, with content derived from `i`.
    pub fn numbered(i: usize) -> Self {
        Note {
            id: format!("note-{i:07}"),
            body: format!("body of note {i}"),
            score: i as f64 / 4.0,
        }
    }
}

/// A model with nothing but its key.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "tags")]
pub struct Tag {
    /// The shard key, and the only column.
    #[sharded(key)]
    pub name: String,
}

/// A model with two unique columns besides its key (see `collegedb::unique`).
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "accounts")]
pub struct Account {
    /// The shard key.
    #[sharded(key)]
    pub id: i64,
    /// Unique over every shard.
    #[sharded(unique)]
    pub email: String,
    /// Unique too, under another column name.
    #[sharded(unique, column = "login")]
    pub handle: String,
    /// Not unique.
    pub name: String,
}

impl Account {
    /// Account `id` with the given email, and a handle and name derived from `id`.
    pub fn new(id: i64, email: impl Into<String>) -> Self {
        Account {
            id,
            email: email.into(),
            handle: format!("handle-{id}"),
            name: format!("account {id}"),
        }
    }
}

/// A model colocated with [`User`]: its rows live on their author's shard.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "posts", colocate = User)]
pub struct Post {
    /// The author: the `users` key that places the row.
    #[sharded(shard_key)]
    pub author: String,
    /// The post's number among its author's.
    #[sharded(key)]
    pub id: i64,
    /// Text.
    pub title: String,
}

/// A model colocated with [`Note`], placed round-robin by the directory: its rows follow the
/// note's directory entry.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "lines", colocate = Note)]
pub struct Line {
    /// The note: the `notes` key that places the row.
    #[sharded(shard_key)]
    pub note: String,
    /// The line's number in the note.
    #[sharded(key)]
    pub line: i32,
    /// Text.
    pub text: String,
}

/// A colocated model with a unique column: each of a user's chapters has a slug unique over
/// every shard, found by `find_by_slug` without knowing the author.
#[derive(collegedb::Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "chapters", colocate = User)]
pub struct Chapter {
    /// The author: the `users` key that places the row.
    #[sharded(shard_key)]
    pub author: String,
    /// The chapter's number among its author's.
    #[sharded(key)]
    pub n: i64,
    /// Unique over every shard.
    #[sharded(unique)]
    pub slug: String,
}

/// Opens an embedded database over `shards` shards named `s0`, `s1`, ... in `dir`.
pub fn open(dir: &std::path::Path, shards: usize) -> CollegeDb<Embedded> {
    open_with(dir, shards, |config| config)
}

/// Like [`open`], with a chance to adjust the configuration.
pub fn open_with(
    dir: &std::path::Path,
    shards: usize,
    adjust: impl FnOnce(Config) -> Config,
) -> CollegeDb<Embedded> {
    let config = Config::with_shard_names((0..shards).map(|i| format!("s{i}")));
    CollegeDb::open_embedded(adjust(config), dir).expect("open embedded database")
}

/// Rows of `table` on each shard, counted through a plain rusqlite connection to each file
/// (independent of collegedb's own code paths).
pub fn rows_per_shard(dir: &std::path::Path, shards: usize, table: &str) -> Vec<i64> {
    (0..shards)
        .map(|i| {
            let conn = rusqlite::Connection::open(dir.join(format!("s{i}.sqlite")))
                .expect("open shard file");
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .expect("count rows")
        })
        .collect()
}

/// Every key of `table` with the shard file holding it, read through plain rusqlite connections:
/// `(key, shard index)` pairs, sorted. A key held by two shards appears twice.
pub fn keys_per_shard(dir: &std::path::Path, shards: usize, table: &str) -> Vec<(String, usize)> {
    let mut keys = Vec::new();
    for i in 0..shards {
        let conn =
            rusqlite::Connection::open(dir.join(format!("s{i}.sqlite"))).expect("open shard file");
        let mut stmt = conn
            .prepare(&format!("SELECT CAST(id AS TEXT) FROM {table}"))
            .expect("prepare");
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .expect("query");
        keys.extend(rows.map(|key| (key.expect("key"), i)));
    }
    keys.sort();
    keys
}

/// Entries in the embedded directory file, counted through a plain rusqlite connection.
pub fn directory_entries(dir: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("_directory.db")).expect("open directory file");
    conn.query_row("SELECT COUNT(*) FROM directory", [], |row| row.get(0))
        .expect("count entries")
}
