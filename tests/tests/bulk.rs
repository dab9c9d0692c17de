//! `insert_many` and `insert_many_idempotent`: every row validated before anything is claimed
//! or written, strict inserts that write nothing when a key exists, and an idempotent form that
//! finishes an interrupted import, including after SIGKILL at many points. Rows are counted on
//! the shard files directly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collegedb::{Error, MAX_KEY_BYTES};
use collegedb_tests::*;
use pollster::block_on;

fn notes(range: std::ops::Range<usize>) -> Vec<Note> {
    range.map(Note::numbered).collect()
}

fn total_rows(dir: &std::path::Path) -> i64 {
    rows_per_shard(dir, 3, "notes").iter().sum()
}

#[test]
fn a_key_twice_in_the_input_writes_nothing_and_the_corrected_input_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(Note::create_table(&db)).unwrap();
    let mut rows = notes(0..30);
    rows.insert(20, Note::numbered(3));
    let error = block_on(Note::insert_many(&db, &rows)).unwrap_err();
    assert!(
        matches!(
            error,
            Error::DuplicateInBatch {
                first: 3,
                second: 20,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(error.code(), "DUPLICATE_KEY");
    assert!(!error.is_retryable());
    assert_eq!(total_rows(dir.path()), 0);
    assert_eq!(directory_entries(dir.path()), 0, "no key was claimed");

    rows.remove(20);
    assert_eq!(block_on(Note::insert_many(&db, &rows)).unwrap(), 30);
    assert_eq!(rows_per_shard(dir.path(), 3, "notes"), [10, 10, 10]);
}

#[test]
fn a_bad_row_anywhere_is_refused_with_its_index_before_any_claim() {
    let oversized = "k".repeat(MAX_KEY_BYTES + 1);
    for position in [0, 1, 49, 50, 99] {
        for (what, code) in [
            ("oversized key", "KEY_TOO_LARGE"),
            ("empty key", "KEY_INVALID"),
            ("NaN", "VALUE_UNSUPPORTED"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let db = open(dir.path(), 3);
            block_on(Note::create_table(&db)).unwrap();
            let mut rows = notes(0..100);
            match what {
                "oversized key" => rows[position].id = oversized.clone(),
                "empty key" => rows[position].id = String::new(),
                _ => rows[position].score = f64::NAN,
            }
            let error = block_on(Note::insert_many(&db, &rows)).unwrap_err();
            assert!(
                matches!(error, Error::BatchRow { index, .. } if index == position),
                "{what} at {position}: {error}"
            );
            assert_eq!(error.code(), code, "{what} at {position}");
            assert_eq!(error.http_status(), 400);
            let error = block_on(Note::insert_many_idempotent(&db, &rows)).unwrap_err();
            assert_eq!(error.code(), code, "idempotent, {what} at {position}");
            assert_eq!(total_rows(dir.path()), 0, "{what} at {position}");
            assert_eq!(directory_entries(dir.path()), 0, "{what} at {position}");
        }
    }
}

#[test]
fn a_key_that_already_exists_fails_the_strict_insert_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(Note::create_table(&db)).unwrap();
    block_on(Note::insert(&db, &Note::numbered(77))).unwrap();
    let error = block_on(Note::insert_many(&db, &notes(0..300))).unwrap_err();
    assert_eq!(error.code(), "DUPLICATE_KEY", "{error}");
    assert_eq!(total_rows(dir.path()), 1, "no shard was written");
}

#[test]
fn the_idempotent_form_finishes_a_partial_import_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 3);
    block_on(Note::create_table(&db)).unwrap();
    // An earlier import wrote the first 120 rows.
    block_on(Note::insert_many(&db, &notes(0..120))).unwrap();

    let all = notes(0..500);
    let report = block_on(Note::insert_many_idempotent(&db, &all)).unwrap();
    assert_eq!((report.inserted, report.already_present), (380, 120));
    let again = block_on(Note::insert_many_idempotent(&db, &all)).unwrap();
    assert_eq!((again.inserted, again.already_present), (0, 500));
    assert_eq!(total_rows(dir.path()), 500);

    // A key present with different content: every other row is written, that one is not
    // overwritten, and the call says so.
    let mut changed = notes(400..600);
    changed[10].body = "something else".into();
    let error = block_on(Note::insert_many_idempotent(&db, &changed)).unwrap_err();
    assert_eq!(error.code(), "DUPLICATE_KEY", "{error}");
    assert_eq!(total_rows(dir.path()), 600);
    let stored = block_on(Note::find(&db, "note-0000410")).unwrap().unwrap();
    assert_eq!(stored, Note::numbered(410), "the existing row is unchanged");
    let keys = keys_per_shard(dir.path(), 3, "notes");
    assert_eq!(keys.len(), 600, "no key is held twice");
}

/// Rows of the kill test: `COLLEGEDB_KILL_ROWS` overrides the quick default.
fn kill_rows() -> usize {
    std::env::var("COLLEGEDB_KILL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000)
}

fn child(dir: &std::path::Path, rows: usize, mode: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulk-child"));
    command
        .arg(dir)
        .arg(rows.to_string())
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

fn run_child(dir: &std::path::Path, rows: usize, mode: &str) -> String {
    let output = child(dir, rows, mode).output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// What the files hold after a kill: directory entries and rows per shard.
fn state(dir: &std::path::Path) -> (i64, Vec<i64>) {
    let rows = (0..3)
        .map(|i| {
            let conn = rusqlite::Connection::open(dir.join(format!("s{i}.sqlite"))).unwrap();
            conn.query_row("SELECT COUNT(*) FROM notes", [], |r| r.get(0))
                .unwrap_or(0)
        })
        .collect();
    let entries = rusqlite::Connection::open(dir.join("_directory.db"))
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM directory", [], |r| r.get(0)))
        .unwrap_or(0);
    (entries, rows)
}

/// Where to kill the import: as soon as the files show this much progress.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// At once, before anything is written.
    Start,
    /// When the directory holds at least this many claimed keys.
    Claims(i64),
    /// When this many shards have committed their rows: between shard commits.
    ShardsCommitted(usize),
}

/// SIGKILL an import at many distinct points (while claiming keys, between shard commits), then:
/// a strict re-run refuses without writing, the idempotent form finishes it, and the files hold
/// every row exactly once, on the shard its directory entry names.
#[test]
fn an_import_killed_at_any_point_is_finished_by_the_idempotent_form() {
    let rows = kill_rows() as i64;
    let mut targets = vec![KillAt::Start];
    targets.extend((0..rows).step_by(500).map(|n| KillAt::Claims(n + 1)));
    for _ in 0..3 {
        targets.extend([KillAt::ShardsCommitted(1), KillAt::ShardsCommitted(2)]);
    }
    let rows = rows as usize;

    let mut points = std::collections::BTreeSet::new();
    let mut between_commits = 0;
    for (i, target) in targets.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = child(dir.path(), rows, "strict").spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut reached = false;
        while !reached && Instant::now() < deadline {
            let (entries, per_shard) = state(dir.path());
            reached = match *target {
                KillAt::Start => true,
                KillAt::Claims(n) => entries >= n,
                KillAt::ShardsCommitted(n) => per_shard.iter().filter(|&&r| r > 0).count() >= n,
            };
            if !reached {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        assert!(
            reached,
            "kill {i}: the import never reached {target:?} (did it fail?)"
        );
        process.kill().unwrap(); // SIGKILL
        let mut out = String::new();
        process
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        process.wait().unwrap();
        let (entries, per_shard) = state(dir.path());
        let shards_written = per_shard.iter().filter(|&&n| n > 0).count();
        if shards_written > 0 && shards_written < 3 {
            between_commits += 1;
        }
        points.insert((entries, per_shard.clone(), out.starts_with("done")));
        eprintln!("kill {i} at {target:?}: {entries} entries, rows {per_shard:?}");

        // A strict re-run of a partly written import refuses and writes nothing more.
        if shards_written > 0 && !out.starts_with("done") {
            assert_eq!(run_child(dir.path(), rows, "strict"), "error DUPLICATE_KEY");
            assert_eq!(
                state(dir.path()).1,
                per_shard,
                "the refused re-run wrote nothing"
            );
        }
        // The idempotent form finishes it.
        let finished = run_child(dir.path(), rows, "idempotent");
        let already: i64 = per_shard.iter().sum();
        assert_eq!(
            finished,
            format!("done {} {already}", rows as i64 - already),
            "kill {i} at {per_shard:?}"
        );
        let keys = keys_per_shard(dir.path(), 3, "notes");
        assert_eq!(keys.len(), rows, "every row once (kill {i})");
        let mut distinct: Vec<&String> = keys.iter().map(|(k, _)| k).collect();
        distinct.dedup();
        assert_eq!(distinct.len(), rows, "no key on two shards (kill {i})");
        // Each row sits on the shard its directory entry names.
        let conn = rusqlite::Connection::open(dir.path().join("_directory.db")).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT CAST(substr(key, 2) AS TEXT), shard FROM directory WHERE scope = 'notes'",
            )
            .unwrap();
        let mut entries: Vec<(String, usize)> = stmt
            .query_map([], |r| {
                let shard: String = r.get(1)?;
                Ok((r.get(0)?, shard[1..].parse().unwrap()))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        entries.sort();
        assert_eq!(entries, keys, "directory and rows agree (kill {i})");
        let report = block_on(open(dir.path(), 3).verify_table("notes", "id")).unwrap();
        assert!(report.is_clean(), "kill {i}: {report}");
        assert_eq!(report.rows, rows as u64);
    }
    // Claims commit 500 keys at a time and each shard in one transaction, so the files can only
    // be seen in a few dozen distinct states; the kills must have found most of them.
    assert!(
        points.len() >= targets.len() / 2,
        "{} distinct kill points: {points:?}",
        points.len()
    );
    assert!(
        between_commits >= 4,
        "only {between_commits} kills landed between shard commits"
    );
}
