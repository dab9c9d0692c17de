//! Growth benchmark: `add_shard` from 3 to 4 shards against a raw SQLite copy-and-delete of the
//! same rows between the same files, in the same run; and the latency that readers and writers
//! see while the move runs.
//!
//! ```text
//! cargo bench -p collegedb --bench growth                      # 1,000,000 rows
//! COLLEGEDB_BENCH_MOVE_ROWS=200000 cargo bench -p collegedb --bench growth
//! ```
//!
//! * The deployment: `COLLEGEDB_BENCH_MOVE_ROWS` hash-placed rows over 3 shard files, copied
//!   byte for byte before the move so that both sides start from identical files.
//! * Contender: `add_shard("s3")` with its defaults, alone (as the baseline runs); then again on
//!   a second copy while one reader (`find`) and one writer (`upsert`) run on their own handles,
//!   whose latencies are compared with the same loops on the idle deployment just before.
//! * Baseline: for each old shard, the keys that the contender moved off it (known after the
//!   contender ran) go into a temporary table; then `ATTACH` the new shard's file,
//!   `INSERT INTO new.users SELECT * FROM users WHERE id IN moved` and `DELETE FROM users WHERE id
//!   IN moved`, each in one transaction. Building the key tables is not timed. The baseline does
//!   no routing, no journal, and blocks writers for its whole duration.
//! * `reassign`: 200 keys moved one by one to the next shard while the reader and writer run
//!   (mean time per key), and one key moved 20 times while a writer upserts it in a loop on its
//!   own handle (its latency against the same loop idle: the pause of each move's freeze).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collegedb::{CollegeDb, Config, Embedded, Sharded};
use rusqlite::Connection;

#[derive(Sharded, Debug, Clone, PartialEq)]
#[sharded(table = "users")]
struct User {
    #[sharded(key)]
    id: String,
    name: String,
    email: Option<String>,
}

fn user(i: usize) -> User {
    User {
        id: format!("user-{i:08}"),
        name: format!("User number {i}"),
        email: (i % 4 != 0).then(|| format!("user{i}@example.com")),
    }
}

fn rows() -> usize {
    std::env::var("COLLEGEDB_BENCH_MOVE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn open(dir: &std::path::Path, shards: usize) -> CollegeDb<Embedded> {
    let config = Config::with_shard_names((0..shards).map(|i| format!("s{i}")));
    CollegeDb::open_embedded(config, dir).unwrap()
}

/// Latencies of `find` and `upsert` on random keys, gathered until `stop`.
struct Load {
    reads: Vec<Duration>,
    writes: Vec<Duration>,
}

fn load(db: CollegeDb<Embedded>, rows: usize, stop: Arc<AtomicBool>, seed: u64) -> Load {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut load = Load {
        reads: Vec::new(),
        writes: Vec::new(),
    };
    pollster::block_on(async {
        while !stop.load(Ordering::Relaxed) {
            let i = rng.usize(..rows);
            let started = Instant::now();
            let found = User::find(&db, user(i).id).await.unwrap();
            load.reads.push(started.elapsed());
            assert!(found.is_some());
            let mut row = user(rng.usize(..rows));
            row.name = format!("edited {}", load.writes.len());
            let started = Instant::now();
            User::upsert(&db, &row).await.unwrap();
            load.writes.push(started.elapsed());
        }
    });
    load
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    if samples.is_empty() {
        return 0.0;
    }
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index].as_secs_f64() * 1e6
}

/// Runs the load on its own handle for `duration`, or until `work` returns.
fn under_load<T>(dir: &std::path::Path, rows: usize, work: impl FnOnce() -> T) -> (T, Load) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (db, stop) = (open(dir, 4), stop.clone());
        std::thread::spawn(move || load(db, rows, stop, 11))
    };
    let result = work();
    stop.store(true, Ordering::Relaxed);
    (result, handle.join().unwrap())
}

/// What `reassign` costs: keys moved one by one while the reader and writer run, and the
/// latency of a writer upserting the very key that moves back and forth.
struct Reassigned {
    keys: usize,
    seconds: f64,
    hot_moves: usize,
    hot_idle: Vec<Duration>,
    hot_busy: Vec<Duration>,
}

impl Reassigned {
    fn print(&mut self) {
        println!(
            "| reassign one key (mean, {} keys, reader and writer running) | - | {:.2} ms | - |",
            self.keys,
            self.seconds * 1000.0 / self.keys as f64
        );
        for p in [0.5, 0.99, 1.0] {
            let (a, b) = (
                percentile(&mut self.hot_idle, p),
                percentile(&mut self.hot_busy, p),
            );
            println!(
                "| upsert of the key being reassigned ({} moves) p{}, idle vs during | {a:.1} us | {b:.1} us | {:.1}x |",
                self.hot_moves,
                (p * 100.0) as u32,
                b / a
            );
        }
    }
}

fn reassign_figures(dir: &std::path::Path, db: &CollegeDb<Embedded>, rows: usize) -> Reassigned {
    let shards = ["s0", "s1", "s2", "s3"];
    let next = |key: &str| {
        let at = pollster::block_on(User::locate(db, key)).unwrap().unwrap();
        let index = shards.iter().position(|s| *s == at).unwrap();
        shards[(index + 1) % shards.len()]
    };
    let keys: Vec<String> = (0..200).map(|i| user(i * 997 % rows).id).collect();
    let (seconds, _) = under_load(dir, rows, || {
        let started = Instant::now();
        for key in &keys {
            pollster::block_on(db.reassign("users", key.as_str(), next(key))).unwrap();
        }
        started.elapsed().as_secs_f64()
    });
    // One key, upserted in a loop on its own handle: idle for a second, then while it moves.
    let hot = user(rows / 2);
    let hot_writer = |stop: Arc<AtomicBool>| {
        let (db, hot) = (open(dir, 4), hot.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                pollster::block_on(User::upsert(&db, &hot)).unwrap();
                latencies.push(started.elapsed());
            }
            latencies
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = hot_writer(stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let hot_idle = writer.join().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = hot_writer(stop.clone());
    let hot_moves = 20;
    for _ in 0..hot_moves {
        pollster::block_on(db.reassign("users", hot.id.as_str(), next(&hot.id))).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let hot_busy = writer.join().unwrap();
    let report = pollster::block_on(db.verify_table("users", "id")).unwrap();
    assert!(report.is_clean() && report.in_flight == 0, "{report}");
    Reassigned {
        keys: keys.len(),
        seconds,
        hot_moves,
        hot_idle,
        hot_busy,
    }
}

fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn keys_on(path: &std::path::Path) -> std::collections::HashSet<String> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM users").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("growth: run with `cargo bench -p collegedb --bench growth`");
        return;
    }
    let rows = rows();
    let dir = tempfile::tempdir().unwrap();
    let contender = dir.path().join("contender");
    let (loaded, baseline) = (dir.path().join("loaded"), dir.path().join("baseline"));

    println!("seeding {rows} rows over 3 shards ...");
    {
        let db = open(&contender, 3);
        pollster::block_on(async {
            User::create_table(&db).await.unwrap();
            let users: Vec<User> = (0..rows).map(user).collect();
            for chunk in users.chunks(50_000) {
                User::insert_many(&db, chunk).await.unwrap();
            }
        });
    }
    copy_folder(&contender, &baseline);
    copy_folder(&contender, &loaded);
    let before: Vec<_> = (0..3)
        .map(|i| keys_on(&contender.join(format!("s{i}.sqlite"))))
        .collect();
    let page: usize = std::env::var("COLLEGEDB_BENCH_PAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let options = collegedb::GrowthOptions::default().page_rows(page);

    // The move alone, as the baseline runs.
    let db = open(&contender, 4);
    let started = Instant::now();
    let job = pollster::block_on(db.add_shard_with("s3", &options)).unwrap();
    let move_seconds = started.elapsed().as_secs_f64();

    // The same move while a reader and a writer keep going, against the same loop when idle.
    let (_, mut idle) = under_load(&loaded, rows, || std::thread::sleep(Duration::from_secs(3)));
    let loaded_db = open(&loaded, 4);
    let (loaded_seconds, mut busy) = under_load(&loaded, rows, || {
        let started = Instant::now();
        pollster::block_on(loaded_db.add_shard_with("s3", &options)).unwrap();
        started.elapsed().as_secs_f64()
    });
    let report = pollster::block_on(loaded_db.verify_table("users", "id")).unwrap();
    assert!(report.is_clean() && report.in_flight == 0, "{report}");
    let mut reassigned = reassign_figures(&loaded, &loaded_db, rows);
    let moved = job.rows_copied();
    let report = pollster::block_on(db.verify_table("users", "id")).unwrap();
    assert!(report.is_clean(), "{report}");

    // The baseline moves the same rows between the same files, with nothing else running.
    let on_new = keys_on(&contender.join("s3.sqlite"));
    let mut baseline_seconds = 0.0;
    let mut baseline_rows = 0;
    {
        let conn = Connection::open(baseline.join("s3.sqlite")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS users (id TEXT NOT NULL PRIMARY KEY, name TEXT NOT NULL, email TEXT)",
        )
        .unwrap();
    }
    for (i, keys) in before.iter().enumerate() {
        let conn = Connection::open(baseline.join(format!("s{i}.sqlite"))).unwrap();
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; CREATE TEMP TABLE moved (id TEXT PRIMARY KEY)",
        )
        .unwrap();
        {
            let mut insert = conn.prepare("INSERT INTO moved VALUES (?)").unwrap();
            for key in keys.iter().filter(|k| on_new.contains(*k)) {
                insert.execute([key]).unwrap();
            }
        }
        conn.execute(
            "ATTACH DATABASE ?1 AS new",
            [baseline.join("s3.sqlite").to_str().unwrap()],
        )
        .unwrap();
        let started = Instant::now();
        conn.execute_batch(
            "BEGIN; INSERT INTO new.users SELECT * FROM main.users WHERE id IN (SELECT id FROM moved); COMMIT;
             BEGIN; DELETE FROM main.users WHERE id IN (SELECT id FROM moved); COMMIT;",
        )
        .unwrap();
        baseline_seconds += started.elapsed().as_secs_f64();
        baseline_rows += conn
            .query_row("SELECT COUNT(*) FROM moved", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64;
    }
    assert_eq!(baseline_rows, moved, "the baseline moves the same rows");

    let (contender_rate, baseline_rate) =
        (moved as f64 / move_seconds, moved as f64 / baseline_seconds);
    println!("| figure | baseline | collegedb | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| rows moved per second ({moved} of {rows} rows, 3 -> 4 shards) | {baseline_rate:.0} | {contender_rate:.0} | {:.2} of raw |",
        contender_rate / baseline_rate
    );
    println!(
        "| move duration | {baseline_seconds:.2} s (writers blocked) | {move_seconds:.2} s (online) | - |"
    );
    println!(
        "| rows moved per second with a reader and a writer running | - | {:.0} | {:.2} of raw |",
        moved as f64 / loaded_seconds,
        moved as f64 / loaded_seconds / baseline_rate
    );
    reassigned.print();
    for (name, idle, busy) in [
        ("find", &mut idle.reads, &mut busy.reads),
        ("upsert", &mut idle.writes, &mut busy.writes),
    ] {
        for p in [0.5, 0.99] {
            let (a, b) = (percentile(idle, p), percentile(busy, p));
            println!(
                "| {name} p{} latency, idle vs during the move | {a:.1} us | {b:.1} us | {:.2}x |",
                (p * 100.0) as u32,
                b / a
            );
        }
        println!(
            "| {name} calls, idle 3 s vs during the move | {} | {} | - |",
            idle.len(),
            busy.len()
        );
    }
}
