//! The embedded backend inside an async runtime: calls never hold an executor thread while they
//! wait (for another writer's lock, for a pooled connection), tasks that loop over calls still
//! let other tasks run, and a lock held past the busy timeout is a typed, retryable error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collegedb::backend::embedded::EmbeddedOptions;
use collegedb::{CollegeDb, Config};
use collegedb_tests::User;
use rusqlite::Connection;

/// Holds the write lock of `file` from another connection (as another process would) for `hold`.
fn hold_write_lock(file: std::path::PathBuf, hold: Duration) -> std::thread::JoinHandle<()> {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = Connection::open(file).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(hold);
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    holder
}

#[test]
fn looping_tasks_and_an_outside_lock_never_stall_the_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db =
        CollegeDb::open_embedded(Config::with_shard_names(["a", "b", "c"]), dir.path()).unwrap();
    runtime.block_on(User::create_table(&db)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let max_gap_ms = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (stop, max_gap_ms) = (stop.clone(), max_gap_ms.clone());
        runtime.spawn(async move {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let gap = last.elapsed().as_millis() as u64;
                max_gap_ms.fetch_max(gap, Ordering::Relaxed);
                last = Instant::now();
            }
        })
    };
    let workers: Vec<_> = (0..8)
        .map(|task| {
            let (db, stop) = (db.clone(), stop.clone());
            runtime.spawn(async move {
                let mut ops = 0u64;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut user = User::new(format!("t{task}-{i}"));
                    User::insert(&db, &user).await.unwrap();
                    assert!(User::find(&db, user.id.as_str()).await.unwrap().is_some());
                    user.name.push_str(" (renamed)");
                    User::update(&db, &user).await.unwrap();
                    assert!(User::delete(&db, user.id.as_str()).await.unwrap());
                    ops += 4;
                    i += 1;
                }
                ops
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    // Another process holds shard `a`'s write lock for 2 s: writes to `a` wait for it, on
    // blocking threads; everything else goes on.
    let holder = hold_write_lock(dir.path().join("a.sqlite"), Duration::from_secs(2));
    holder.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let ops: Vec<u64> = workers
        .into_iter()
        .map(|w| runtime.block_on(w).unwrap())
        .collect();
    runtime.block_on(ticker).unwrap();
    let gap = max_gap_ms.load(Ordering::Relaxed);
    assert!(
        gap < 500,
        "a 1 ms ticker waited {gap} ms: an embedded call held an executor thread"
    );
    assert!(
        ops.iter().all(|&n| n > 0),
        "every task made progress: {ops:?}"
    );
}

#[test]
fn a_lock_held_past_the_busy_timeout_is_a_retryable_busy_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions::default().busy_timeout(Duration::from_millis(200));
    let db = CollegeDb::open_embedded_with(Config::with_shard_names(["only"]), dir.path(), options)
        .unwrap();
    pollster::block_on(User::create_table(&db)).unwrap();

    let holder = hold_write_lock(dir.path().join("only.sqlite"), Duration::from_millis(1500));
    let started = Instant::now();
    let error = pollster::block_on(User::insert(&db, &User::new("waiting"))).unwrap_err();
    assert_eq!(error.code(), "SHARD_BUSY", "{error}");
    assert!(error.is_retryable());
    assert_eq!(error.http_status(), 503);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "waited the busy timeout"
    );
    holder.join().unwrap();

    // Nothing was written, and the same call now succeeds.
    pollster::block_on(User::insert(&db, &User::new("waiting"))).unwrap();
    let rows: i64 = Connection::open(dir.path().join("only.sqlite"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

/// The inline rules' other promises: a read that runs past the inline step budget is re-run in
/// full on the thread pool, a query that writes (`RETURNING`) runs once, and a raw `BEGIN` that
/// would leave a pooled connection inside a transaction is rolled back and refused.
#[test]
fn long_reads_writing_queries_and_open_transactions_follow_the_inline_rules() {
    let dir = tempfile::tempdir().unwrap();
    let db = CollegeDb::open_embedded(Config::with_shard_names(["only"]), dir.path()).unwrap();
    pollster::block_on(async {
        // About 3 million VM steps: far past the inline budget.
        let rows = db
            .all_shard(
                "only",
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)
                 SELECT COUNT(*) AS c, SUM(i) AS s FROM n",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get::<i64>("c").unwrap(), 300_000);
        assert_eq!(rows[0].get::<i64>("s").unwrap(), 300_000 * 300_001 / 2);

        db.run_shard("only", "CREATE TABLE log (n INTEGER)", &[])
            .await
            .unwrap();
        db.run_shard(
            "only",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO log SELECT i FROM n",
            &[],
        )
        .await
        .unwrap();
        let deleted = db
            .all_shard("only", "DELETE FROM log WHERE n <= 3000 RETURNING n", &[])
            .await
            .unwrap();
        assert_eq!(deleted.len(), 3000, "every deleted row is returned, once");
        let left = db
            .first_shard("only", "SELECT COUNT(*) AS c FROM log", &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(left.get::<i64>("c").unwrap(), 2000);

        let err = db.run_shard("only", "BEGIN", &[]).await.unwrap_err();
        assert_eq!(err.code(), "QUERY_FAILED", "{err}");
        assert!(err.to_string().contains("batch()"), "{err}");
        // No connection was left inside the transaction: writes from other connections commit.
        for i in 0..8 {
            db.run_shard("only", "INSERT INTO log VALUES (?)", &[i.into()])
                .await
                .unwrap();
        }
        let count = rusqlite::Connection::open(dir.path().join("only.sqlite"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM log", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert_eq!(
            count, 2008,
            "the inserts committed, visible to another process"
        );
    });
}

/// Opening waits (up to the busy timeout) for another process that holds a shard file, instead
/// of failing at once: switching a fresh file to WAL needs it unlocked.
#[test]
fn opening_waits_for_another_process_holding_a_shard_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("only.sqlite");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    let started = Instant::now();
    let db = CollegeDb::open_embedded(Config::with_shard_names(["only"]), dir.path());
    assert!(db.is_ok(), "{:?}", db.err());
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it waited for the lock"
    );
    holder.join().unwrap();
}
