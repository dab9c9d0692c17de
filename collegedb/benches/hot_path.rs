//! Hot-path benchmark: collegedb against raw rusqlite on the same machine, in the same run.
//!
//! ```text
//! cargo bench -p collegedb --bench hot_path
//! ```
//!
//! * `find`: `User::find` on a one-shard embedded database against a raw prepared
//!   `SELECT ... WHERE id = ?` on an identical file, both holding the same 100,000 rows, keys in
//!   the same random order, each result materialized into the same struct.
//! * `insert`: `User::insert` against a raw prepared `INSERT` in autocommit, both in WAL mode with
//!   `synchronous = NORMAL`, on fresh keys.
//! * routing: the hash decision alone, and a directory lookup served from the cache.
//!
//! Baseline and contender alternate in rounds; each figure is the median over rounds of the mean
//! time per operation, so drift (other load, thermal) hits both alike.

use std::future::Future;
use std::hint::black_box;
use std::time::Instant;

use collegedb::{CollegeDb, Config, Embedded, Key, Sharded, Strategy};
use rusqlite::Connection;

#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    name: String,
    email: Option<String>,
}

const ROWS: usize = 100_000;
const ROUNDS: usize = 15;
const READS_PER_ROUND: usize = 20_000;
const INSERTS_PER_ROUND: usize = 2_000;
const ROUTES_PER_ROUND: usize = 200_000;

/// Runs a future to completion on the calling thread. Embedded calls run inline when quick but
/// yield to the executor now and then (see the README, "Performance"), so they need a
/// real executor; `pollster` is the lightest one, and its cost is part of what is measured.
fn ready<F: Future>(future: F) -> F::Output {
    pollster::block_on(future)
}

fn user(i: usize) -> User {
    User {
        id: format!("user-{i:08}"),
        name: format!("User number {i}"),
        email: (i % 4 != 0).then(|| format!("user{i}@example.com")),
    }
}

fn raw_connection(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS users (id TEXT NOT NULL PRIMARY KEY, name TEXT NOT NULL, email TEXT)",
    )
    .unwrap();
    conn
}

fn raw_find(conn: &Connection, id: &str) -> Option<User> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, email FROM users WHERE id = ?")
        .unwrap();
    let mut rows = stmt.query([id]).unwrap();
    rows.next().unwrap().map(|row| User {
        id: row.get(0).unwrap(),
        name: row.get(1).unwrap(),
        email: row.get(2).unwrap(),
    })
}

fn raw_insert(conn: &Connection, user: &User) {
    let mut stmt = conn
        .prepare_cached("INSERT INTO users (id, name, email) VALUES (?, ?, ?)")
        .unwrap();
    stmt.execute((&user.id, &user.name, &user.email)).unwrap();
}

fn open_db(dir: &std::path::Path, shards: usize, strategy: Strategy) -> CollegeDb<Embedded> {
    let config =
        Config::with_shard_names((0..shards).map(|i| format!("s{i}"))).with_strategy(strategy);
    let db = CollegeDb::open_embedded(config, dir).unwrap();
    ready(User::create_table(&db)).unwrap();
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

struct Figure {
    name: &'static str,
    /// `None` where there is no raw equivalent to compare with.
    baseline: Option<f64>,
    contender: f64,
    target: &'static str,
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep that fast.
    if !std::env::args().any(|a| a == "--bench") {
        println!("hot_path: run with `cargo bench -p collegedb --bench hot_path`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();

    // Point reads.
    let raw = raw_connection(&dir.path().join("raw-read.sqlite"));
    let db = open_db(&dir.path().join("db-read"), 1, Strategy::Hash);
    let users: Vec<User> = (0..ROWS).map(user).collect();
    raw.execute_batch("BEGIN").unwrap();
    for u in &users {
        raw_insert(&raw, u);
    }
    raw.execute_batch("COMMIT").unwrap();
    ready(User::insert_many(&db, &users)).unwrap();
    let mut order: Vec<usize> = (0..ROWS).collect();
    fastrand::seed(7);
    fastrand::shuffle(&mut order);
    let ids: Vec<String> = order.iter().map(|&i| users[i].id.clone()).collect();
    let (mut base, mut cont) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let offset = round * READS_PER_ROUND % ROWS;
        base.push(time_ns(READS_PER_ROUND, |i| {
            black_box(raw_find(&raw, &ids[(offset + i) % ROWS]).unwrap());
        }));
        cont.push(time_ns(READS_PER_ROUND, |i| {
            black_box(
                ready(User::find(&db, &ids[(offset + i) % ROWS]))
                    .unwrap()
                    .unwrap(),
            );
        }));
    }
    figures.push(Figure {
        name: "find by key (1 shard, 100k rows)",
        baseline: Some(median(base)),
        contender: median(cont),
        target: "<= 1.30x",
    });

    // Inserts of new keys.
    let raw = raw_connection(&dir.path().join("raw-insert.sqlite"));
    let db = open_db(&dir.path().join("db-insert"), 1, Strategy::Hash);
    let (mut base, mut cont) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let first = round * INSERTS_PER_ROUND;
        let batch: Vec<User> = (first..first + INSERTS_PER_ROUND).map(user).collect();
        base.push(time_ns(INSERTS_PER_ROUND, |i| raw_insert(&raw, &batch[i])));
        cont.push(time_ns(INSERTS_PER_ROUND, |i| {
            ready(User::insert(&db, &batch[i])).unwrap();
        }));
    }
    figures.push(Figure {
        name: "insert (1 shard, autocommit, WAL)",
        baseline: Some(median(base)),
        contender: median(cont),
        target: "<= 1.30x",
    });

    // Routing decisions alone, over 3 shards, from an already validated `Key`.
    let db = open_db(&dir.path().join("db-route"), 3, Strategy::Random);
    let keys: Vec<Key> = ids
        .iter()
        .take(1_000)
        .map(|id| Key::text(id.as_str()).unwrap())
        .collect();
    for key in &keys {
        ready(db.place("users", key, Strategy::Random)).unwrap();
    }
    let (mut hash, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        hash.push(time_ns(ROUTES_PER_ROUND, |i| {
            black_box(db.hash_shard(black_box(&keys[i % keys.len()])));
        }));
        cached.push(time_ns(ROUTES_PER_ROUND, |i| {
            black_box(
                ready(db.directory_lookup("users", black_box(&keys[i % keys.len()]))).unwrap(),
            );
        }));
    }
    figures.push(Figure {
        name: "routing: hash decision",
        baseline: None,
        contender: median(hash),
        target: "< 200 ns",
    });
    figures.push(Figure {
        name: "routing: cached directory lookup",
        baseline: None,
        contender: median(cached),
        target: "no I/O",
    });

    println!("| operation | raw / baseline | collegedb | ratio | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for f in &figures {
        let (baseline, ratio) = match f.baseline {
            Some(b) => (format!("{b:.0} ns"), format!("{:.2}x", f.contender / b)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {baseline} | {:.0} ns | {ratio} | {} |",
            f.name, f.contender, f.target
        );
    }
}
