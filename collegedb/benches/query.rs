//! Typed-query benchmark: collegedb's query builder against raw rusqlite on the same machine, in
//! the same run.
//!
//! ```text
//! cargo bench -p collegedb --bench query
//! QUERY_BENCH_ROWS=20000 cargo bench -p collegedb --bench query   # rows per shard
//! ```
//!
//! * routed: `Item::query().filter(id.eq(k)).first(&db)` on a one-shard embedded database
//!   against a raw prepared `SELECT ... WHERE id = ?` on an identical file, keys in the same
//!   random order, each result materialized into the same struct.
//! * scattered: `Item::query().order_by(score.desc()).limit(20).offset(o)` over 3 shards of
//!   `ROWS` rows each against the same `ORDER BY score DESC, id LIMIT 20 OFFSET o` on one file
//!   holding all `3·ROWS` rows; `score` is indexed on every file. The rows transferred per
//!   query are reported (at most `N·(offset + 20)`).
//! * aggregate: `GROUP BY bucket` with `COUNT(*)`, `SUM(score)`, `AVG(score)` over the same
//!   data against the same statement on the one file.
//!
//! Baseline and contender alternate in rounds; each figure is the median over rounds of the mean
//! time per operation, so drift (other load, thermal) hits both alike.

use std::future::Future;
use std::hint::black_box;
use std::time::Instant;

use collegedb::query::Aggregate;
use collegedb::{CollegeDb, Config, Embedded, Sharded, Strategy};
use rusqlite::Connection;

#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "items")]
struct Item {
    #[sharded(key)]
    id: String,
    name: String,
    score: i64,
    bucket: i64,
}

const SHARDS: usize = 3;
const ROUNDS: usize = 9;
const READS_PER_ROUND: usize = 5_000;
const PAGES_PER_ROUND: usize = 200;
const AGGREGATES_PER_ROUND: usize = 5;

fn ready<F: Future>(future: F) -> F::Output {
    pollster::block_on(future)
}

fn rows_per_shard() -> usize {
    std::env::var("QUERY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn item(i: usize) -> Item {
    // A scramble so scores do not follow keys.
    let score = (i.wrapping_mul(2_654_435_761) % 1_000_003) as i64;
    Item {
        id: format!("item-{i:08}"),
        name: format!("Item number {i}"),
        score,
        bucket: (i % 10) as i64,
    }
}

const CREATE: &str = "CREATE TABLE IF NOT EXISTS items (id TEXT NOT NULL PRIMARY KEY, \
     name TEXT NOT NULL, score INTEGER NOT NULL, bucket INTEGER NOT NULL)";
const INDEX: &str = "CREATE INDEX IF NOT EXISTS items_score ON items (score)";

fn raw_connection(path: &std::path::Path, items: &[Item]) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(CREATE).unwrap();
    conn.execute_batch(INDEX).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut stmt = conn
            .prepare("INSERT INTO items (id, name, score, bucket) VALUES (?, ?, ?, ?)")
            .unwrap();
        for it in items {
            stmt.execute((&it.id, &it.name, it.score, it.bucket))
                .unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    conn
}

fn decode(row: &rusqlite::Row<'_>) -> Item {
    Item {
        id: row.get(0).unwrap(),
        name: row.get(1).unwrap(),
        score: row.get(2).unwrap(),
        bucket: row.get(3).unwrap(),
    }
}

fn raw_find(conn: &Connection, id: &str) -> Option<Item> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, score, bucket FROM items WHERE id = ?")
        .unwrap();
    let mut rows = stmt.query([id]).unwrap();
    rows.next().unwrap().map(decode)
}

fn raw_page(conn: &Connection, offset: usize) -> Vec<Item> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, name, score, bucket FROM items ORDER BY score DESC, id LIMIT 20 OFFSET ?",
        )
        .unwrap();
    let rows = stmt
        .query_map([offset as i64], |row| Ok(decode(row)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn raw_groups(conn: &Connection) -> Vec<(i64, i64, i64, f64)> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT bucket, COUNT(*), SUM(score), AVG(score) FROM items GROUP BY bucket ORDER BY bucket",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn open_db(dir: &std::path::Path, shards: usize, items: &[Item]) -> CollegeDb<Embedded> {
    let config = Config::with_shard_names((0..shards).map(|i| format!("s{i}")))
        .with_strategy(Strategy::Hash);
    let db = CollegeDb::open_embedded(config, dir).unwrap();
    ready(Item::create_table(&db)).unwrap();
    ready(db.run_all_shards(INDEX, &[])).unwrap();
    for chunk in items.chunks(10_000) {
        ready(Item::insert_many(&db, chunk)).unwrap();
    }
    db
}

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
    if !std::env::args().any(|a| a == "--bench") {
        println!("query: run with `cargo bench -p collegedb --bench query`");
        return;
    }
    let rows = rows_per_shard();
    let dir = tempfile::tempdir().unwrap();
    let f = Item::fields();
    println!("rows per shard: {rows}; {SHARDS} shards; rounds: {ROUNDS}");
    println!("| operation | raw | collegedb | ratio | rows transferred per query |");
    println!("| --- | ---: | ---: | ---: | ---: |");

    // Routed point reads on one shard.
    let items: Vec<Item> = (0..rows).map(item).collect();
    let raw = raw_connection(&dir.path().join("raw-point.sqlite"), &items);
    let db = open_db(&dir.path().join("db-point"), 1, &items);
    let mut order: Vec<usize> = (0..rows).collect();
    fastrand::seed(7);
    fastrand::shuffle(&mut order);
    let ids: Vec<&str> = order.iter().map(|&i| items[i].id.as_str()).collect();
    let (mut base, mut cont) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let start = round * READS_PER_ROUND;
        base.push(time_ns(READS_PER_ROUND, |i| {
            black_box(raw_find(&raw, ids[(start + i) % rows]).unwrap());
        }));
        cont.push(time_ns(READS_PER_ROUND, |i| {
            let query = Item::query().filter(f.id().eq(ids[(start + i) % rows]));
            black_box(ready(query.first(&db)).unwrap().unwrap());
        }));
    }
    let (b, c) = (median(base), median(cont));
    println!(
        "| filter(id eq).first(), 1 shard | {b:.0} ns | {c:.0} ns | {:.2}x | 1 |",
        c / b
    );
    drop((raw, db));

    // Scattered ORDER BY ... LIMIT 20 and GROUP BY over 3 shards against one file.
    let items: Vec<Item> = (0..rows * SHARDS).map(item).collect();
    let raw = raw_connection(&dir.path().join("raw-all.sqlite"), &items);
    let db = open_db(&dir.path().join("db-scatter"), SHARDS, &items);
    for offset in [0, 100] {
        let query = Item::query()
            .order_by(f.score().desc())
            .limit(20)
            .offset(offset);
        let (sharded, report) = ready(query.all_with_report(&db)).unwrap();
        assert_eq!(sharded, raw_page(&raw, offset), "same page");
        let (mut base, mut cont) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            base.push(time_ns(PAGES_PER_ROUND, |_| {
                black_box(raw_page(&raw, offset));
            }));
            cont.push(time_ns(PAGES_PER_ROUND, |_| {
                black_box(ready(query.all(&db)).unwrap());
            }));
        }
        let (b, c) = (median(base), median(cont));
        println!(
            "| ORDER BY score DESC LIMIT 20 OFFSET {offset}, {SHARDS} shards vs 1 file | {:.1} us | {:.1} us | {:.2}x | {} (bound {}) |",
            b / 1e3,
            c / 1e3,
            c / b,
            report.rows_fetched,
            SHARDS * (offset + 20)
        );
    }

    let aggregates = [
        Aggregate::count(),
        Aggregate::sum(f.score()),
        Aggregate::avg(f.score()),
    ];
    let grouped = Item::query().group_by(f.bucket());
    let sharded = ready(grouped.aggregate(&db, &aggregates)).unwrap();
    let expected = raw_groups(&raw);
    assert_eq!(sharded.len(), expected.len(), "same groups");
    let (mut base, mut cont) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        base.push(time_ns(AGGREGATES_PER_ROUND, |_| {
            black_box(raw_groups(&raw));
        }));
        cont.push(time_ns(AGGREGATES_PER_ROUND, |_| {
            black_box(ready(grouped.aggregate(&db, &aggregates)).unwrap());
        }));
    }
    let (b, c) = (median(base), median(cont));
    println!(
        "| GROUP BY bucket: COUNT, SUM, AVG, {SHARDS} shards vs 1 file | {:.1} ms | {:.1} ms | {:.2}x | {} (one per group and shard) |",
        b / 1e6,
        c / 1e6,
        c / b,
        10 * SHARDS
    );
}
