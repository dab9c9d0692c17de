//! Scan benchmark: `User::scan` across 3 shards against raw rusqlite paging through one file, on
//! the same machine, in the same run.
//!
//! ```text
//! cargo bench -p collegedb --bench scan
//! ```
//!
//! * baseline: a raw cached `SELECT id, name, email FROM users ORDER BY id LIMIT 100` (then
//!   `WHERE id > ? ORDER BY id LIMIT 100` from the last key of each page; the limit is a
//!   literal, see [`raw_sql`]) on one file holding all 100,000 rows (inserted in key order), each
//!   row materialized into the same struct.
//! * contender: `User::scan(&db, after, limit)` over the same 100,000 rows spread by hash over 3
//!   embedded shard files, following `next` from page to page.
//!
//! Each round, both page through the same window of 5,000 rows (50 pages of 100) from the same
//! cursor (the table's start in the first round, a different key in each later one), in
//! lockstep: a raw page, then a scan page, so that bursts of other load hit both alike. Each
//! time is the median over rounds of the mean time per page; the ratio is the median over rounds
//! of the per-round ratio (steadier than a ratio of medians when the machine is shared). The
//! target applies to pages of 100; the other page sizes are shown for context. Before the rounds, one whole walk of each
//! checks that both return every row once, in key order.

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use collegedb::{CollegeDb, Config, Embedded, Sharded, Strategy};
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
const SHARDS: usize = 3;
const ROUNDS: usize = 101;
/// Rows paged through per round, by each side.
const WINDOW: usize = 5_000;
/// Page sizes measured; the target applies to `TARGET_LIMIT`.
const LIMITS: [usize; 3] = [10, 100, 1000];
const TARGET_LIMIT: usize = 100;

/// Runs a future to completion on the calling thread (embedded calls yield to the executor now
/// and then, so they need a real one; `pollster` is the lightest).
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

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        name: row.get(1)?,
        email: row.get(2)?,
    })
}

/// The raw statements for pages of `limit`: the first page, and the pages after a key.
///
/// The limit is a literal: SQLite marks a statement with a bare `LIMIT ?` to be planned again
/// whenever that parameter is bound anew, and rusqlite's statement cache clears bindings, so a
/// cached `LIMIT ?` statement is parsed and planned on every page. A literal is what a careful
/// raw user writes, and the fastest baseline.
fn raw_sql(limit: usize) -> (String, String) {
    (
        format!("SELECT id, name, email FROM users ORDER BY id LIMIT {limit}"),
        format!("SELECT id, name, email FROM users WHERE id > ? ORDER BY id LIMIT {limit}"),
    )
}

/// One raw page: up to `limit` rows after `after`, in key order.
fn raw_page(conn: &Connection, sql: &(String, String), after: Option<&str>) -> Vec<User> {
    match after {
        None => conn
            .prepare_cached(&sql.0)
            .unwrap()
            .query_map([], raw_row)
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap(),
        Some(after) => conn
            .prepare_cached(&sql.1)
            .unwrap()
            .query_map([after], raw_row)
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap(),
    }
}

/// One round: raw SQL and `User::scan` page through `pages` pages of `limit` from `start`, in
/// lockstep (a raw page, then a scan page), so that a burst of other load hits both alike.
/// Returns the mean nanoseconds per page of each.
fn lockstep_round(
    raw: &Connection,
    db: &CollegeDb<Embedded>,
    start: Option<&str>,
    limit: usize,
    pages: usize,
) -> (f64, f64) {
    let sql = raw_sql(limit);
    let (mut raw_after, mut scan_after) = (start.map(str::to_owned), start.map(str::to_owned));
    let (mut raw_time, mut scan_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..pages {
        let started = Instant::now();
        let page = black_box(raw_page(raw, &sql, raw_after.as_deref()));
        raw_time += started.elapsed();
        assert_eq!(page.len(), limit, "every page of the window is full");
        raw_after = page.last().map(|u| u.id.clone());

        let started = Instant::now();
        let page = black_box(ready(User::scan(db, scan_after, limit)).unwrap());
        scan_time += started.elapsed();
        assert_eq!(page.rows.len(), limit, "every page of the window is full");
        assert_eq!(page.next, raw_after, "both walks see the same rows");
        scan_after = page.next;
    }
    let per_page = |time: Duration| time.as_nanos() as f64 / pages as f64;
    (per_page(raw_time), per_page(scan_time))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep that fast.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scan: run with `cargo bench -p collegedb --bench scan`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_connection(&dir.path().join("raw.sqlite"));
    let config = Config::with_shard_names((0..SHARDS).map(|i| format!("s{i}")))
        .with_strategy(Strategy::Hash);
    let db = CollegeDb::open_embedded(config, dir.path().join("db")).unwrap();
    ready(User::create_table(&db)).unwrap();

    // The same rows in both, inserted in key order (as sequential ids are), so each file holds
    // its rows in key order. With shuffled inserts, both sides spend most of their time on page
    // cache misses (100,000 rows exceed SQLite's default 2 MB cache) and the comparison says
    // little about the scan itself.
    let users: Vec<User> = (0..ROWS).map(user).collect();
    raw.execute_batch("BEGIN").unwrap();
    for u in &users {
        raw.prepare_cached("INSERT INTO users (id, name, email) VALUES (?, ?, ?)")
            .unwrap()
            .execute((&u.id, &u.name, &u.email))
            .unwrap();
    }
    raw.execute_batch("COMMIT").unwrap();
    ready(User::insert_many(&db, &users)).unwrap();

    // Whole walks: both return every row once, in key order.
    let expected: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
    let mut raw_walked = Vec::with_capacity(ROWS);
    let mut after: Option<String> = None;
    let sql = raw_sql(TARGET_LIMIT);
    loop {
        let page = raw_page(&raw, &sql, after.as_deref());
        raw_walked.extend(page.iter().map(|u| u.id.clone()));
        if page.len() < TARGET_LIMIT {
            break;
        }
        after = page.last().map(|u| u.id.clone());
    }
    assert_eq!(raw_walked, expected, "raw paging returns every row once");
    let mut walked = Vec::with_capacity(ROWS);
    let mut after = None;
    loop {
        let page = ready(User::scan(&db, after, TARGET_LIMIT)).unwrap();
        walked.extend(page.rows.into_iter().map(|u| u.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        walked, expected,
        "scan returns every row once, in key order"
    );

    println!("| page size | raw, 1 file | scan, {SHARDS} shards | ratio | target |");
    println!("| ---: | ---: | ---: | ---: | --- |");
    for limit in LIMITS {
        let pages = WINDOW / limit;
        let (mut base, mut cont, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // The first round starts at the table's start, the others at keys spread over it.
            let start =
                (round > 0).then(|| expected[(round * 7_919) % (ROWS - WINDOW - 1)].as_str());
            let (b, c) = lockstep_round(&raw, &db, start, limit, pages);
            base.push(b);
            cont.push(c);
            ratios.push(c / b);
        }
        let (base, cont, ratio) = (median(base), median(cont), median(ratios));
        let target = if limit == TARGET_LIMIT {
            "<= 2.00x"
        } else {
            "-"
        };
        println!(
            "| {limit} | {:.1} us | {:.1} us | {ratio:.2}x | {target} |",
            base / 1000.0,
            cont / 1000.0,
        );
    }
}
