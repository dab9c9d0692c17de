//! Colocated tables on real SQLite files: rows written through their scope's key land on that
//! key's shard, and stay with it through `add_shard`, `drain_shard` and `reassign`, checked by
//! reading every shard file directly; joins run on one shard; the registry refuses bad input.
//!
//! Moves also run in pages of two or three keys over uneven groups, with a writer inserting and
//! deleting rows meanwhile, through shards that compute slots in SQL and through shards that do
//! not (as D1), with a row whose route is NULL; and a move is stopped after many distinct steps
//! (its runner dies in the step hook) and resumed by another handle, after which every group is
//! whole and with its key. `COLLEGEDB_KILL_COLOCATE_ALL=1` stops it after every step instead of
//! about 40 of them.

use std::collections::{BTreeMap, BTreeSet};

use collegedb::{CollegeDb, Embedded, Strategy, Value};
use collegedb_tests::{open, Line, Note, Post, User};
use pollster::block_on;

const AUTHORS: usize = 60;
const POSTS_PER_AUTHOR: usize = 5;

/// `(row's route value, shard index)` of every row of `table`, read from the files with rusqlite.
fn placed(dir: &std::path::Path, shards: usize, table: &str, column: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for i in 0..shards {
        let path = dir.join(format!("s{i}.sqlite"));
        if !path.exists() {
            continue;
        }
        let conn = rusqlite::Connection::open(path).unwrap();
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?1)",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        if !exists {
            continue;
        }
        let mut stmt = conn
            .prepare(&format!(
                "SELECT CAST({column} AS TEXT) FROM {table} WHERE {column} IS NOT NULL"
            ))
            .unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        out.extend(rows.map(|r| (r.unwrap(), i)));
    }
    out
}

/// Asserts that every row of `child` sits on the shard of its parent row, and returns how many
/// child rows there are.
fn check_together(
    dir: &std::path::Path,
    shards: usize,
    (parent, parent_key): (&str, &str),
    (child, route): (&str, &str),
    context: &str,
) -> usize {
    let parents: BTreeMap<String, usize> = placed(dir, shards, parent, parent_key)
        .into_iter()
        .collect();
    let children = placed(dir, shards, child, route);
    for (key, shard) in &children {
        assert_eq!(
            parents.get(key),
            Some(shard),
            "{context}: a `{child}` row of {key} is on s{shard}, its `{parent}` row on {:?}",
            parents.get(key)
        );
    }
    children.len()
}

fn setup(dir: &std::path::Path, shards: usize) -> CollegeDb<Embedded> {
    let db = open(dir, shards);
    block_on(async {
        User::create_table(&db).await?;
        Note::create_table(&db).await?;
        db.run_all_shards(
            "CREATE TABLE IF NOT EXISTS user_posts (author TEXT NOT NULL, id INTEGER NOT NULL, \
             title TEXT NOT NULL, PRIMARY KEY (author, id))",
            &[],
        )
        .await?;
        db.run_all_shards(
            "CREATE TABLE IF NOT EXISTS note_lines (note TEXT NOT NULL, line INTEGER NOT NULL, \
             body TEXT NOT NULL, PRIMARY KEY (note, line))",
            &[],
        )
        .await?;
        db.colocate("user_posts", "author", "users").await?;
        db.colocate("note_lines", "note", "notes").await
    })
    .unwrap();
    db
}

/// Writes the parents and their children through the parents' keys.
fn populate(db: &CollegeDb<Embedded>) {
    block_on(async {
        for a in 0..AUTHORS {
            let author = format!("author-{a:03}");
            User::insert(db, &User::new(author.as_str())).await?;
            for p in 0..POSTS_PER_AUTHOR {
                db.table("users")
                    .run(
                        author.as_str(),
                        "INSERT INTO user_posts (author, id, title) VALUES (?, ?, ?)",
                        &[
                            Value::from(author.as_str()),
                            Value::Integer(p as i64),
                            Value::from(format!("post {p} of {author}").as_str()),
                        ],
                    )
                    .await?;
            }
            let note = Note::numbered(a);
            Note::insert(db, &note).await?;
            let scope = db
                .table("notes")
                .with_strategies(Strategy::RoundRobin, Strategy::RoundRobin);
            for line in 0..3 {
                scope
                    .run(
                        note.id.as_str(),
                        "INSERT INTO note_lines (note, line, body) VALUES (?, ?, ?)",
                        &[
                            Value::from(note.id.as_str()),
                            Value::Integer(line),
                            Value::from("text"),
                        ],
                    )
                    .await?;
            }
        }
        Ok::<(), collegedb::Error>(())
    })
    .unwrap();
}

fn check_all(dir: &std::path::Path, shards: usize, context: &str) {
    let posts = check_together(
        dir,
        shards,
        ("users", "id"),
        ("user_posts", "author"),
        context,
    );
    assert_eq!(
        posts,
        AUTHORS * POSTS_PER_AUTHOR,
        "{context}: posts lost or doubled"
    );
    let lines = check_together(
        dir,
        shards,
        ("notes", "id"),
        ("note_lines", "note"),
        context,
    );
    assert_eq!(lines, AUTHORS * 3, "{context}: lines lost or doubled");
}

fn shard_count(dir: &std::path::Path, shards: usize, table: &str, column: &str) -> usize {
    placed(dir, shards, table, column)
        .into_iter()
        .map(|(_, s)| s)
        .collect::<BTreeSet<_>>()
        .len()
}

#[test]
fn colocated_rows_stay_with_their_key_through_add_drain_and_reassign() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path(), 3);
    populate(&db);
    check_all(dir.path(), 3, "written");
    assert_eq!(shard_count(dir.path(), 3, "user_posts", "author"), 3);
    drop(db);

    // A fourth shard: a quarter of the slots move onto it, each author with its posts.
    let db = open(dir.path(), 4);
    let job = block_on(db.add_shard("s3")).unwrap();
    assert!(job.rows_copied() > 0);
    check_all(dir.path(), 4, "after add_shard");
    assert!(
        placed(dir.path(), 4, "user_posts", "author")
            .iter()
            .any(|(_, s)| *s == 3),
        "some posts moved to the new shard"
    );
    for report in [
        block_on(db.verify_table("user_posts", "author")).unwrap(),
        block_on(db.verify_table("note_lines", "note")).unwrap(),
    ] {
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.rows, AUTHORS as u64, "one key per author or note");
    }

    // One author reassigned: its posts go with it; the colocated table cannot be reassigned.
    let author = "author-007";
    let home = block_on(User::locate(&db, author)).unwrap().unwrap();
    let target = ["s0", "s1", "s2", "s3"]
        .into_iter()
        .find(|s| *s != home)
        .unwrap();
    block_on(db.reassign("users", author, target)).unwrap();
    check_all(dir.path(), 4, "after reassign");
    let posts_there = placed(dir.path(), 4, "user_posts", "author")
        .into_iter()
        .filter(|(a, _)| a == author)
        .map(|(_, s)| format!("s{s}"))
        .collect::<Vec<_>>();
    assert_eq!(posts_there, vec![target.to_owned(); POSTS_PER_AUTHOR]);
    let refused = block_on(db.reassign("user_posts", author, &home)).unwrap_err();
    assert_eq!(refused.code(), "CONFIG_INVALID", "{refused}");
    // Raw SQL routed by the author still finds them, and a join runs on one shard.
    let joined = block_on(db.table("users").all(
        author,
        "SELECT users.name, COUNT(*) AS posts FROM users JOIN user_posts \
         ON user_posts.author = users.id WHERE users.id = ? GROUP BY users.name",
        &[Value::from(author)],
    ))
    .unwrap();
    assert_eq!(joined.len(), 1);
    assert_eq!(
        joined[0].get::<i64>("posts").unwrap(),
        POSTS_PER_AUTHOR as i64
    );

    // Draining a shard moves hash-placed authors and directory-placed notes with their rows.
    block_on(db.drain_shard("s1")).unwrap();
    check_all(dir.path(), 4, "after drain_shard");
    assert!(
        placed(dir.path(), 4, "user_posts", "author")
            .iter()
            .chain(&placed(dir.path(), 4, "note_lines", "note"))
            .all(|(_, s)| *s != 1),
        "nothing left on the drained shard"
    );
    for report in [
        block_on(db.verify_table("user_posts", "author")).unwrap(),
        block_on(db.verify_table("note_lines", "note")).unwrap(),
        block_on(db.verify_table("users", "id")).unwrap(),
    ] {
        assert!(report.is_clean(), "{report}");
    }
}

#[test]
fn the_registry_refuses_what_would_strand_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = setup(dir.path(), 2);
    let code = |result: collegedb::Result<()>| result.unwrap_err().code();
    // Idempotent.
    block_on(db.colocate("user_posts", "author", "users")).unwrap();
    // A table keeps its scope; no self, no chains, no scope that is colocated.
    assert_eq!(
        code(block_on(db.colocate("user_posts", "author", "notes"))),
        "CONFIG_INVALID"
    );
    assert_eq!(
        code(block_on(db.colocate("users", "id", "users"))),
        "CONFIG_INVALID"
    );
    assert_eq!(
        code(block_on(db.colocate("comments", "post", "user_posts"))),
        "CONFIG_INVALID"
    );
    assert_eq!(
        code(block_on(db.colocate("users", "id", "notes"))),
        "CONFIG_INVALID"
    );
    assert_eq!(
        code(block_on(db.colocate("x; DROP TABLE users", "a", "users"))),
        "CONFIG_INVALID"
    );
    assert_eq!(
        code(block_on(db.colocate("_collegedb_moved", "a", "users"))),
        "CONFIG_INVALID"
    );
    // Tables that are not there, a route column that is not there, a table without a primary
    // key, a scope without a single key, and a table that holds rows placed by its own key.
    let refused = |table: &str, route: &str, scope: &str, expect: &str| {
        let error = block_on(db.colocate(table, route, scope)).unwrap_err();
        assert_eq!(error.code(), "CONFIG_INVALID", "{error}");
        assert!(error.to_string().contains(expect), "{error}");
    };
    refused("missing", "author", "users", "does not exist");
    block_on(db.run_all_shards(
        "CREATE TABLE IF NOT EXISTS keyless (user_id TEXT NOT NULL, n INTEGER NOT NULL)",
        &[],
    ))
    .unwrap();
    refused("keyless", "user_id", "users", "has no primary key");
    block_on(db.run_all_shards(
        "CREATE TABLE IF NOT EXISTS likes (user_id TEXT NOT NULL, n INTEGER NOT NULL, \
         PRIMARY KEY (user_id, n))",
        &[],
    ))
    .unwrap();
    refused("likes", "nobody", "users", "has no column `nobody`");
    refused("likes", "user_id", "missing", "single-column primary key");
    // A colocated scope is named as such (not as a table without a single key).
    refused(
        "likes",
        "user_id",
        "note_lines",
        "is itself colocated with `notes`",
    );
    block_on(db.run_all_shards(
        "CREATE TABLE IF NOT EXISTS pairs (a TEXT NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b))",
        &[],
    ))
    .unwrap();
    refused("likes", "user_id", "pairs", "single-column primary key");
    block_on(db.run_shard("s0", "INSERT INTO likes (user_id, n) VALUES ('a', 1)", &[])).unwrap();
    refused("likes", "user_id", "users", "holds rows already");
    assert_eq!(block_on(db.colocation("likes")).unwrap(), None);
    let found = block_on(db.colocation("user_posts")).unwrap().unwrap();
    assert_eq!(
        (found.route.as_str(), found.scope.as_str()),
        ("author", "users")
    );
    assert_eq!(block_on(db.colocation("users")).unwrap(), None);
    let error = block_on(db.adopt_table("user_posts", "author")).unwrap_err();
    assert_eq!(error.code(), "CONFIG_INVALID", "{error}");
}

fn post(author: &str, id: i64) -> Post {
    Post {
        author: author.into(),
        id,
        title: format!("post {id} of {author}"),
    }
}

#[test]
fn colocated_models_live_and_move_with_their_parent_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await?;
        Post::create_table(&db).await?;
        Note::create_table(&db).await?;
        Line::create_table(&db).await
    })
    .unwrap();
    // Creating a colocated model's table records the colocation.
    let recorded = block_on(db.colocation("posts")).unwrap().unwrap();
    assert_eq!(
        (recorded.route.as_str(), recorded.scope.as_str()),
        ("author", "users")
    );
    for a in 0..AUTHORS {
        let author = format!("author-{a:03}");
        block_on(User::insert(&db, &User::new(author.as_str()))).unwrap();
        let posts: Vec<Post> = (0..POSTS_PER_AUTHOR as i64)
            .map(|p| post(&author, p))
            .collect();
        assert_eq!(
            block_on(Post::insert_many(&db, &posts)).unwrap(),
            POSTS_PER_AUTHOR
        );
        let note = Note::numbered(a);
        block_on(Note::insert(&db, &note)).unwrap();
        for line in 0..3 {
            let row = Line {
                note: note.id.clone(),
                line,
                text: format!("line {line}"),
            };
            block_on(Line::insert(&db, &row)).unwrap();
        }
    }
    let together = |shards: usize, context: &str| {
        let posts = check_together(
            dir.path(),
            shards,
            ("users", "id"),
            ("posts", "author"),
            context,
        );
        assert_eq!(posts, AUTHORS * POSTS_PER_AUTHOR, "{context}");
        let lines = check_together(
            dir.path(),
            shards,
            ("notes", "id"),
            ("lines", "note"),
            context,
        );
        assert_eq!(lines, AUTHORS * 3, "{context}");
    };
    together(3, "inserted");
    assert_eq!(shard_count(dir.path(), 3, "posts", "author"), 3);

    // Typed calls by the composite key.
    let author = "author-004";
    assert_eq!(
        block_on(Post::find(&db, (author, 2))).unwrap(),
        Some(post(author, 2))
    );
    assert_eq!(block_on(Post::find(&db, (author, 99))).unwrap(), None);
    assert_eq!(block_on(Post::find(&db, ("nobody", 1))).unwrap(), None);
    let mut edited = post(author, 2);
    edited.title = "edited".into();
    block_on(Post::update(&db, &edited)).unwrap();
    assert_eq!(
        block_on(Post::find(&db, (author, 2))).unwrap(),
        Some(edited.clone())
    );
    assert_eq!(
        block_on(Post::find(&db, (author, 1))).unwrap(),
        Some(post(author, 1)),
        "an update touches one row of the group"
    );
    block_on(Post::upsert(&db, &post(author, 7))).unwrap();
    assert!(block_on(Post::delete(&db, (author, 7))).unwrap());
    assert!(!block_on(Post::delete(&db, (author, 7))).unwrap());
    let error = block_on(Post::insert(&db, &post(author, 1))).unwrap_err();
    assert_eq!(error.code(), "DUPLICATE_KEY", "{error}");
    let twins = [post(author, 50), post(author, 50)];
    let error = block_on(Post::insert_many(&db, &twins)).unwrap_err();
    assert_eq!(error.code(), "DUPLICATE_KEY", "{error}");
    let user_shard = block_on(User::locate(&db, author)).unwrap();
    assert_eq!(
        block_on(Post::locate(&db, (author, 1))).unwrap(),
        user_shard
    );

    // One author's posts: a query pinned to one shard.
    let (mine, report) = block_on(
        Post::query_for(author)
            .order_by(Post::fields().id().desc())
            .all_with_report(&db),
    )
    .unwrap();
    assert_eq!(mine.len(), POSTS_PER_AUTHOR);
    assert!(mine.iter().all(|p| p.author == author));
    assert_eq!(mine[0].id, POSTS_PER_AUTHOR as i64 - 1);
    assert_eq!(report.shards, 1, "{report:?}");
    assert_eq!(
        block_on(Post::query().count(&db)).unwrap(),
        (AUTHORS * POSTS_PER_AUTHOR) as u64
    );

    // A batch of the user and their posts: one transaction on their shard.
    let mut batch = db.batch_for::<User>(author);
    let mut renamed = User::new(author);
    renamed.name = "renamed".into();
    batch
        .update(&renamed)
        .unwrap()
        .insert(&post(author, 100))
        .unwrap()
        .delete_row(&post(author, 0))
        .unwrap();
    assert_eq!(
        batch.insert(&post("author-005", 1)).err().unwrap().code(),
        "CROSS_SHARD"
    );
    assert_eq!(block_on(batch.commit()).unwrap(), vec![1, 1, 1]);
    assert_eq!(block_on(Post::find(&db, (author, 0))).unwrap(), None);
    assert!(block_on(Post::find(&db, (author, 100))).unwrap().is_some());
    let mut failing = db.batch_for::<User>(author);
    failing
        .insert(&post(author, 101))
        .unwrap()
        .insert(&post(author, 1))
        .unwrap();
    assert_eq!(
        block_on(failing.commit()).unwrap_err().code(),
        "DUPLICATE_KEY"
    );
    assert_eq!(
        block_on(Post::find(&db, (author, 101))).unwrap(),
        None,
        "rolled back"
    );
    drop(db);

    // A fourth shard, a reassign and a drain: the posts and lines follow their keys.
    let db = open(dir.path(), 4);
    block_on(db.add_shard("s3")).unwrap();
    let total = AUTHORS * POSTS_PER_AUTHOR; // one post added, one deleted
    let check = |context: &str| {
        let posts = check_together(dir.path(), 4, ("users", "id"), ("posts", "author"), context);
        assert_eq!(posts, total, "{context}");
        let lines = check_together(dir.path(), 4, ("notes", "id"), ("lines", "note"), context);
        assert_eq!(lines, AUTHORS * 3, "{context}");
    };
    check("after add_shard");
    let home = block_on(User::locate(&db, author)).unwrap().unwrap();
    let target = ["s0", "s1", "s2", "s3"]
        .into_iter()
        .find(|s| *s != home)
        .unwrap();
    block_on(db.reassign("users", author, target)).unwrap();
    check("after reassign");
    assert_eq!(
        block_on(Post::locate(&db, (author, 1))).unwrap().as_deref(),
        Some(target)
    );
    assert_eq!(
        block_on(Post::find(&db, (author, 2))).unwrap(),
        Some(edited)
    );
    block_on(db.drain_shard("s0")).unwrap();
    check("after drain_shard");
    for a in (0..AUTHORS).step_by(7) {
        let author = format!("author-{a:03}");
        assert_eq!(
            block_on(Post::find(&db, (author.as_str(), 3))).unwrap(),
            Some(post(&author, 3)),
            "{author}"
        );
        let note = Note::numbered(a).id;
        assert_eq!(
            block_on(Line::find(&db, (note.as_str(), 2)))
                .unwrap()
                .map(|l| l.line),
            Some(2)
        );
    }
    for (table, column) in [("posts", "author"), ("lines", "note")] {
        let report = block_on(db.verify_table(table, column)).unwrap();
        assert!(report.is_clean(), "{report}");
    }
}

// ---------------------------------------------------------------------------------------------
// Moves in small pages with writers, through the path of shards that cannot compute slots in
// SQL (as D1), and killed at every step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use collegedb::backend::embedded::{self, LocalCoordinator, SqliteDirectory, SqliteShard};
use collegedb::backend::{Backend, Row, ShardConn, Statement};
use collegedb::{Config, GrowthOptions, Result};

/// A real shard file that answers as D1 does: it cannot compute slots in SQL, so moves read
/// every row and choose in Rust (unless `computes_slots` is set). It records the most rows of
/// `posts` any one page of a move read or deleted (a read: `SELECT *` with a `LIMIT`).
struct PlainShard {
    file: SqliteShard,
    computes_slots: bool,
    largest_post_page: Arc<AtomicUsize>,
}

impl ShardConn for PlainShard {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.file.execute(sql, params).await
    }
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.file.query(sql, params).await
    }
    async fn query_raw(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let rows = self.file.query_raw(sql, params).await?;
        let paged = sql.starts_with("SELECT * FROM \"posts\"") && sql.contains(" LIMIT ");
        if paged || sql.starts_with("DELETE FROM \"posts\"") {
            self.largest_post_page
                .fetch_max(rows.len(), Ordering::SeqCst);
        }
        Ok(rows)
    }
    async fn batch(&self, statements: &[Statement]) -> Result<Vec<u64>> {
        let changed = self.file.batch(statements).await?;
        if statements
            .iter()
            .any(|s| s.sql.starts_with("DELETE FROM \"posts\""))
        {
            let deleted = changed.iter().sum::<u64>() as usize;
            self.largest_post_page.fetch_max(deleted, Ordering::SeqCst);
        }
        Ok(changed)
    }
    fn computes_slots(&self) -> bool {
        self.computes_slots
    }
    async fn size_bytes(&self) -> Result<u64> {
        self.file.size_bytes().await
    }
}

enum Plain {}

impl Backend for Plain {
    type Shard = PlainShard;
    type Directory = SqliteDirectory;
    type Coordinator = LocalCoordinator;
}

fn open_plain(dir: &std::path::Path, shards: usize) -> CollegeDb<Plain> {
    open_watched(dir, shards, false, Arc::default())
}

/// [`open_plain`], computing slots in SQL or not, recording into `largest_post_page`.
fn open_watched(
    dir: &std::path::Path,
    shards: usize,
    computes_slots: bool,
    largest_post_page: Arc<AtomicUsize>,
) -> CollegeDb<Plain> {
    let options = Default::default();
    let (directory, coordinator) = embedded::open_directory(dir, &options).unwrap();
    let config = Config::with_shard_names((0..shards).map(|i| format!("s{i}")));
    let shards = (0..shards)
        .map(|i| {
            let name = format!("s{i}");
            PlainShard {
                file: SqliteShard::open(dir.join(format!("{name}.sqlite")), &name, &options)
                    .unwrap(),
                computes_slots,
                largest_post_page: largest_post_page.clone(),
            }
        })
        .collect();
    CollegeDb::from_parts(config, shards, directory, coordinator).unwrap()
}

/// Posts with uneven groups (author `a` has `a % 7` posts), a raw colocated table with a
/// row whose route is NULL, and notes with lines.
fn uneven(dir: &std::path::Path) -> usize {
    let db = open(dir, 3);
    let mut posts = 0;
    block_on(async {
        User::create_table(&db).await?;
        Post::create_table(&db).await?;
        Note::create_table(&db).await?;
        Line::create_table(&db).await?;
        db.run_all_shards(
            "CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, bio TEXT)",
            &[],
        )
        .await?;
        db.colocate("profiles", "user_id", "users").await?;
        for a in 0..40 {
            let author = format!("author-{a:03}");
            User::insert(&db, &User::new(author.as_str())).await?;
            let group: Vec<Post> = (0..(a % 7) as i64).map(|p| post(&author, p)).collect();
            posts += Post::insert_many(&db, &group).await?;
            db.table("users")
                .run(
                    author.as_str(),
                    "INSERT INTO profiles (user_id, bio) VALUES (?, 'bio')",
                    &[Value::from(author.as_str())],
                )
                .await?;
            let note = Note::numbered(a);
            Note::insert(&db, &note).await?;
            for line in 0..(a % 3) as i32 {
                let row = Line {
                    note: note.id.clone(),
                    line,
                    text: "t".into(),
                };
                Line::insert(&db, &row).await?;
            }
        }
        // A row no key routes: left where it is by every move, never a reason to stop early.
        db.run_shard(
            "s0",
            "INSERT INTO profiles (user_id, bio) VALUES (NULL, 'orphan')",
            &[],
        )
        .await?;
        Ok::<(), collegedb::Error>(())
    })
    .unwrap();
    posts
}

fn check_uneven(dir: &std::path::Path, shards: usize, posts: usize, context: &str) {
    let found = check_together(dir, shards, ("users", "id"), ("posts", "author"), context);
    assert_eq!(found, posts, "{context}: posts");
    let lines = check_together(dir, shards, ("notes", "id"), ("lines", "note"), context);
    assert_eq!(
        lines,
        (0..40).map(|a| a % 3).sum::<usize>(),
        "{context}: lines"
    );
    let profiles: Vec<(String, usize)> = placed(dir, shards, "profiles", "user_id");
    assert_eq!(
        profiles.len(),
        40,
        "{context}: profiles (the NULL one is not listed)"
    );
    check_together(
        dir,
        shards,
        ("users", "id"),
        ("profiles", "user_id"),
        context,
    );
    let orphan: i64 = rusqlite::Connection::open(dir.join("s0.sqlite"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM profiles WHERE user_id IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphan, 1, "{context}: the NULL-route row stays");
}

#[test]
fn small_pages_uneven_groups_writers_and_the_d1_path_keep_every_group_whole() {
    for plain in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let posts = Arc::new(AtomicUsize::new(uneven(dir.path())));
        let context = if plain { "D1 path" } else { "SQL slots" };
        check_uneven(dir.path(), 3, posts.load(Ordering::SeqCst), context);
        // A writer on its own thread while the moves run: new posts, and deleted ones, counted
        // when acknowledged. Paced, so that the moves' pages of two rows outrun it.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(Mutex::new(0i64));
        let writer = {
            let (posts, written, stop) = (posts.clone(), written.clone(), stop.clone());
            let db = open(dir.path(), 4);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut n = written.lock().unwrap();
                    *n += 1;
                    let author = format!("author-{:03}", *n % 40);
                    if block_on(Post::insert(&db, &post(&author, 1000 + *n))).is_ok() {
                        posts.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Ok(true) = block_on(Post::delete(&db, (author.as_str(), 0))) {
                        posts.fetch_sub(1, Ordering::SeqCst);
                    }
                    drop(n);
                    std::thread::sleep(std::time::Duration::from_millis(3));
                }
            })
        };
        let hook = |_: &collegedb::Job| std::thread::sleep(std::time::Duration::from_millis(2));
        let options = GrowthOptions::default().page_rows(2).on_step(hook);
        if plain {
            let db = open_plain(dir.path(), 4);
            block_on(db.add_shard_with("s3", &options)).unwrap();
            block_on(db.drain_shard_with("s1", &options)).unwrap();
        } else {
            let db = open(dir.path(), 4);
            block_on(db.add_shard_with("s3", &options)).unwrap();
            block_on(db.drain_shard_with("s1", &options)).unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert!(
            *written.lock().unwrap() > 20,
            "{context}: the writer ran during the moves"
        );
        check_uneven(dir.path(), 4, posts.load(Ordering::SeqCst), context);
        let db = open(dir.path(), 4);
        for table in ["posts", "lines", "profiles"] {
            let report = block_on(db.verify_table(table, "")).unwrap();
            assert!(report.is_clean(), "{context}: {report}");
        }
    }
}

#[test]
fn a_group_larger_than_a_page_moves_in_pages_of_rows() {
    for computes_slots in [false, true] {
        let context = if computes_slots {
            "SQL slots"
        } else {
            "D1 path"
        };
        let dir = tempfile::tempdir().unwrap();
        let mut posts = uneven(dir.path());
        // One author with many times a page of posts; then the shard holding them is drained.
        let db = open(dir.path(), 3);
        let big: Vec<Post> = (0..45).map(|p| post("author-prolific", p)).collect();
        block_on(async {
            User::insert(&db, &User::new("author-prolific")).await?;
            posts += Post::insert_many(&db, &big).await?;
            Ok::<(), collegedb::Error>(())
        })
        .unwrap();
        let largest = Arc::new(AtomicUsize::new(0));
        let db = open_watched(dir.path(), 4, computes_slots, largest.clone());
        let options = GrowthOptions::default().page_rows(4);
        block_on(db.add_shard_with("s3", &options)).unwrap();
        check_uneven(dir.path(), 4, posts, context);
        let home = block_on(Post::locate(&db, ("author-prolific", 0)))
            .unwrap()
            .unwrap();
        block_on(db.drain_shard_with(&home, &options)).unwrap();
        check_uneven(dir.path(), 4, posts, context);
        let moved = check_together(dir.path(), 4, ("users", "id"), ("posts", "author"), context);
        assert_eq!(moved, posts, "{context}");
        assert!(
            largest.load(Ordering::SeqCst) <= 4,
            "{context}: a page of posts read or deleted {} rows, more than the 4 asked for",
            largest.load(Ordering::SeqCst)
        );
        assert!(
            largest.load(Ordering::SeqCst) > 0,
            "{context}: posts were paged"
        );
        for table in ["posts", "lines", "profiles"] {
            let report = block_on(db.verify_table(table, "")).unwrap();
            assert!(report.is_clean(), "{context}: {report}");
        }
    }
}

#[test]
fn a_move_stopped_after_any_step_resumes_and_keeps_every_group_whole() {
    // The steps of an uninterrupted run, on a copy of the same deployment.
    let steps = {
        let dir = tempfile::tempdir().unwrap();
        uneven(dir.path());
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let options = GrowthOptions::default().page_rows(3).on_step(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        block_on(open(dir.path(), 4).add_shard_with("s3", &options)).unwrap();
        count.load(Ordering::SeqCst)
    };
    assert!(steps > 10, "{steps} steps");
    // Every step with COLLEGEDB_KILL_COLOCATE_ALL=1; by default about 40 spread over the move.
    let every = if std::env::var_os("COLLEGEDB_KILL_COLOCATE_ALL").is_some() {
        1
    } else {
        (steps / 40).max(1)
    };
    eprintln!("{steps} steps; stopping after every {every}");
    for stop in (1..steps).step_by(every) {
        let dir = tempfile::tempdir().unwrap();
        let posts = uneven(dir.path());
        // The runner dies after `stop` steps: its thread panics in the step hook.
        let path = dir.path().to_owned();
        let died = std::thread::spawn(move || {
            let seen = AtomicUsize::new(0);
            let options = GrowthOptions::default().page_rows(3).on_step(move |_| {
                if seen.fetch_add(1, Ordering::SeqCst) + 1 == stop {
                    panic!("the runner dies here");
                }
            });
            let _ = block_on(open(&path, 4).add_shard_with("s3", &options));
        })
        .join();
        assert!(died.is_err(), "stop {stop}: the runner should have died");
        let context = format!("stopped after step {stop} of {steps}");
        // Nothing lost or doubled mid-move: every row is in the files once (the receiver's
        // copies of the moving groups are not counted until the switch).
        let db = open(dir.path(), 4);
        let finished = block_on(db.resume_growth(&GrowthOptions::default().page_rows(3)))
            .unwrap_or_else(|e| panic!("{context}: resume failed: {e}"));
        assert!(finished.is_some(), "{context}: a job was in progress");
        check_uneven(dir.path(), 4, posts, &context);
        for a in (0..40).step_by(9) {
            let author = format!("author-{a:03}");
            let listed = block_on(Post::query_for(author.as_str()).all(&db)).unwrap();
            assert_eq!(listed.len(), a % 7, "{context}: {author}");
        }
    }
}

#[test]
fn create_table_refuses_a_chain_the_registry_holds_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(async {
        User::create_table(&db).await?;
        Note::create_table(&db).await?;
        // `notes` kept with raw SQL as `users`' rows: the typed `Line`, colocated with `Note`,
        // would make a chain the compile-time check cannot see.
        db.colocate("notes", "id", "users").await
    })
    .unwrap();
    let error = block_on(Line::create_table(&db)).unwrap_err();
    assert_eq!(error.code(), "CONFIG_INVALID", "{error}");
    assert!(
        error
            .to_string()
            .contains("`notes` is itself colocated with `users`"),
        "{error}"
    );
    for shard in 0..3 {
        let tables: i64 = rusqlite::Connection::open(dir.path().join(format!("s{shard}.sqlite")))
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'lines'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "s{shard}: nothing created");
    }
    assert_eq!(block_on(db.colocation("lines")).unwrap(), None);
}
