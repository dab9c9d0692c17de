//! Relations benchmark: collegedb against raw rusqlite on the same machine, in the same run.
//!
//! ```text
//! cargo bench -p collegedb --bench relations
//! ```
//!
//! * `find_by_email`: `Account::find_by_email` on a one-shard embedded database against a raw
//!   prepared `SELECT ... WHERE email = ?` on a `UNIQUE` (indexed) column of an identical file,
//!   both holding the same 100,000 rows, emails in the same random order, each result
//!   materialized into the same struct. Measured twice: with the lookup cache warm (the
//!   directory cache holds the value's owner, checked against the row on every read), and with
//!   the cache off (one directory read and one shard query per call). `find` by key on the same
//!   rows is shown for reference.
//!
//! * listing one author's 50 posts over 3 shards: `Post::query_for(author)` with the posts
//!   colocated with their author (one shard), against the same posts placed by their own key and
//!   found by a filter on an indexed `author` column (every shard, results merged).
//!
//! Baseline and contender alternate in rounds; each figure is the median over rounds of the mean
//! time per operation, so drift (other load, thermal) hits both alike.

use std::future::Future;
use std::hint::black_box;
use std::time::Instant;

use collegedb::{CollegeDb, Config, Embedded, Sharded};
use rusqlite::Connection;

#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "accounts")]
struct Account {
    #[sharded(key)]
    id: String,
    #[sharded(unique)]
    email: String,
    name: String,
}

/// The parent of [`Post`].
#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    name: String,
}

/// Posts colocated with their author.
#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "posts", colocate = User)]
struct Post {
    #[sharded(shard_key)]
    author: String,
    #[sharded(key)]
    id: i64,
    title: String,
}

/// The same posts placed by their own key: an author's posts scatter over the shards.
#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "loose_posts")]
struct LoosePost {
    #[sharded(key)]
    id: i64,
    author: String,
    title: String,
}

const ROWS: usize = 100_000;
const AUTHORS: usize = 200;
const POSTS_PER_AUTHOR: usize = 50;
const LISTINGS_PER_ROUND: usize = 400;
const ROUNDS: usize = 11;
const READS_PER_ROUND: usize = 10_000;

/// Runs a future to completion on the calling thread, as `hot_path` does.
fn ready<F: Future>(future: F) -> F::Output {
    pollster::block_on(future)
}

fn account(i: usize) -> Account {
    Account {
        id: format!("acct-{i:08}"),
        email: format!("user{i}@example.com"),
        name: format!("Account number {i}"),
    }
}

fn raw_connection(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS accounts (id TEXT NOT NULL PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL)",
    )
    .unwrap();
    conn
}

fn raw_find_by_email(conn: &Connection, email: &str) -> Option<Account> {
    let mut stmt = conn
        .prepare_cached("SELECT id, email, name FROM accounts WHERE email = ?")
        .unwrap();
    let mut rows = stmt.query([email]).unwrap();
    rows.next().unwrap().map(|row| Account {
        id: row.get(0).unwrap(),
        email: row.get(1).unwrap(),
        name: row.get(2).unwrap(),
    })
}

fn open_db(dir: &std::path::Path, cache: usize) -> CollegeDb<Embedded> {
    let mut config = Config::with_shard_names(["s0"]);
    config.directory_cache_capacity = cache;
    let db = CollegeDb::open_embedded(config, dir).unwrap();
    ready(Account::create_table(&db)).unwrap();
    db
}

/// Mean nanoseconds per operation of `ops` calls of `f`.
fn time_ns(ops: usize, mut f: impl FnMut(usize)) -> f64 {
    let started = Instant::now();
    for i in 0..ops {
        f(i);
    }
    started.elapsed().as_nanos() as f64 / ops as f64
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep that fast.
    if !std::env::args().any(|a| a == "--bench") {
        println!("relations: run with `cargo bench -p collegedb --bench relations`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let accounts: Vec<Account> = (0..ROWS).map(account).collect();
    let raw = raw_connection(&dir.path().join("raw.sqlite"));
    raw.execute_batch("BEGIN").unwrap();
    for a in &accounts {
        raw.prepare_cached("INSERT INTO accounts (id, email, name) VALUES (?, ?, ?)")
            .unwrap()
            .execute((&a.id, &a.email, &a.name))
            .unwrap();
    }
    raw.execute_batch("COMMIT").unwrap();
    let warm = open_db(&dir.path().join("db"), 200_000);
    let started = Instant::now();
    for chunk in accounts.chunks(5_000) {
        ready(Account::insert_many(&warm, chunk)).unwrap();
    }
    eprintln!(
        "loaded {ROWS} accounts with their lookups in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let cold = open_db(&dir.path().join("db"), 0);
    let mut order: Vec<usize> = (0..ROWS).collect();
    fastrand::seed(11);
    fastrand::shuffle(&mut order);
    let emails: Vec<&str> = order.iter().map(|&i| accounts[i].email.as_str()).collect();
    // Warm the cache once over every value, as a long-running process would be.
    for email in &emails {
        ready(Account::find_by_email(&warm, *email))
            .unwrap()
            .unwrap();
    }
    let ids: Vec<&str> = order.iter().map(|&i| accounts[i].id.as_str()).collect();
    let (mut base, mut hot, mut off, mut by_key) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let offset = round * READS_PER_ROUND % ROWS;
        let at = |i: usize| emails[(offset + i) % ROWS];
        base.push(time_ns(READS_PER_ROUND, |i| {
            black_box(raw_find_by_email(&raw, at(i)).unwrap());
        }));
        by_key.push(time_ns(READS_PER_ROUND, |i| {
            let id = ids[(offset + i) % ROWS];
            black_box(ready(Account::find(&warm, id)).unwrap().unwrap());
        }));
        hot.push(time_ns(READS_PER_ROUND, |i| {
            black_box(
                ready(Account::find_by_email(&warm, at(i)))
                    .unwrap()
                    .unwrap(),
            );
        }));
        off.push(time_ns(READS_PER_ROUND, |i| {
            black_box(
                ready(Account::find_by_email(&cold, at(i)))
                    .unwrap()
                    .unwrap(),
            );
        }));
    }
    let base = median(base);
    let (colocated, scattered) = listings(dir.path());
    println!("| operation | raw, indexed column | collegedb | ratio | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for (name, figure, target) in [
        ("find_by_email, lookup cache warm", median(hot), "<= 1.30x"),
        ("find_by_email, lookup cache off", median(off), "-"),
        ("for reference: find by key", median(by_key), "-"),
    ] {
        println!(
            "| {name} (1 shard, 100k rows) | {base:.0} ns | {figure:.0} ns | {:.2}x | {target} |",
            figure / base
        );
    }
    println!();
    println!("| listing one author's {POSTS_PER_AUTHOR} posts, 3 shards | colocated (`query_for`) | scattered (filter on `author`) | scattered / colocated |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| median per listing | {:.0} us | {:.0} us | {:.2}x |",
        colocated / 1_000.0,
        scattered / 1_000.0,
        scattered / colocated
    );
}

/// Median nanoseconds per listing of one author's posts: colocated, then scattered.
fn listings(dir: &std::path::Path) -> (f64, f64) {
    let db = CollegeDb::open_embedded(
        Config::with_shard_names(["a", "b", "c"]),
        dir.join("listings"),
    )
    .unwrap();
    ready(async {
        User::create_table(&db).await?;
        Post::create_table(&db).await?;
        LoosePost::create_table(&db).await?;
        for a in 0..AUTHORS {
            let author = format!("author-{a:04}");
            User::insert(
                &db,
                &User {
                    id: author.clone(),
                    name: author.clone(),
                },
            )
            .await?;
            let posts: Vec<Post> = (0..POSTS_PER_AUTHOR)
                .map(|p| Post {
                    author: author.clone(),
                    id: p as i64,
                    title: format!("post {p}"),
                })
                .collect();
            Post::insert_many(&db, &posts).await?;
            let loose: Vec<LoosePost> = (0..POSTS_PER_AUTHOR)
                .map(|p| LoosePost {
                    id: (a * POSTS_PER_AUTHOR + p) as i64,
                    author: author.clone(),
                    title: format!("post {p}"),
                })
                .collect();
            LoosePost::insert_many(&db, &loose).await?;
        }
        db.run_all_shards(
            "CREATE INDEX IF NOT EXISTS loose_by_author ON loose_posts (author)",
            &[],
        )
        .await
    })
    .unwrap();
    let (mut together, mut apart) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let author = |i: usize| format!("author-{:04}", (round * 37 + i * 13) % AUTHORS);
        together.push(time_ns(LISTINGS_PER_ROUND, |i| {
            let rows = ready(Post::query_for(author(i)).all(&db)).unwrap();
            assert_eq!(black_box(rows).len(), POSTS_PER_AUTHOR);
        }));
        apart.push(time_ns(LISTINGS_PER_ROUND, |i| {
            let rows = ready(
                LoosePost::query()
                    .filter(LoosePost::fields().author().eq(author(i)))
                    .all(&db),
            )
            .unwrap();
            assert_eq!(black_box(rows).len(), POSTS_PER_AUTHOR);
        }));
    }
    (median(together), median(apart))
}
