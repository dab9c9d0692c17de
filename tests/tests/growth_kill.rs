//! Crash safety of growth and adoption on real SQLite files. A child process (`growth-child`)
//! runs `add_shard`, `drain_shard` or `adopt` and is killed with SIGKILL at many distinct points,
//! then run again to resume, until the operation finishes:
//!
//! * growth is killed at exact journaled steps of every phase (the child blocks in the step hook
//!   until it is killed), chosen from the trace of an uninterrupted run on a copy of the same
//!   deployment, and twice anywhere while it runs (wherever the SIGKILL lands, possibly inside
//!   a step; a kill inside one chosen statement of a step is not targeted);
//! * `adopt` (no journal, no hook) is killed at once, after its first off-hash marker, and after
//!   each committed batch of directory claims, found by polling the files.
//!
//! While the child is blocked mid-move, a handle of the test process (opened before the move, so
//! its map goes stale) finds every key with its content, except keys frozen by the move at that
//! instant, and updates some of the moving rows; a read of a frozen key waits out the switch and
//! reports `SLOT_MOVING` (checked once per test: it waits ten seconds). After every kill no row is
//! lost from the files. After each operation the rows are read from every shard file directly
//! with rusqlite: every key exactly once, with the content last written; `verify_table` is clean
//! and `find` returns every row; running the operation again changes nothing.
//!
//! `COLLEGEDB_KILL_GROWTH_ROWS` sets the rows per table of the grown and drained deployments
//! (default 400; the adopted one has six times as many). Larger values give each phase more
//! pages and take longer.

mod kill_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use collegedb::growth::{Job, Phase, Transfer};
use collegedb::slots::slot_of;
use collegedb::{CollegeDb, Embedded, Key, Value};
use collegedb_tests::{open, Note, Order, Prefs, User};
use kill_support::{
    assert_drained, assert_phases_covered, directory_entries, env_rows, few, grow_with_kills, held,
    held_twice, journal, report, run_to_end, ChildProcess, Deployed, FileRow, Kill, Site, Stats,
    TIMEOUT,
};
use pollster::block_on;
use rusqlite::types::Value as SqlValue;

/// The tables of the grown and drained deployments: hash placement (`users`), round-robin
/// (`notes`), and round-robin writes read hash-first (`orders`, every column type).
const TABLES: [&str; 3] = ["users", "notes", "orders"];

/// The phases the kills at journaled steps must cover, each by one of its names: a copy, a
/// catch-up, a switch and a delete.
const COVERED: [&[&str]; 4] = [
    &["Copy"],
    &["CatchUp", "FinalCatchUp"],
    &["Switch"],
    &["Delete"],
];

/// Rows per table: `COLLEGEDB_KILL_GROWTH_ROWS` overrides the quick default.
fn rows() -> usize {
    env_rows("COLLEGEDB_KILL_GROWTH_ROWS", 400)
}

/// Order number `i`, with every column derived from `i`.
fn order(i: usize) -> Order {
    Order {
        id: i as i64 * 3 - 500,
        customer: format!("customer {i}"),
        quantity: i as i32 - 7,
        units: i as u32 * 2,
        total: i as f64 * 1.25,
        paid: i % 2 == 0,
        receipt: vec![i as u8, (i >> 8) as u8, 0, 255],
        note_id: (i % 3 != 0).then_some(i as i64),
        meta: serde_json::json!({ "i": i, "tags": ["a", i.to_string()] }),
        prefs: Prefs {
            theme: format!("theme {}", i % 5),
            tags: vec![format!("t{i}")],
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The files, read with rusqlite only (`kill_support`), by one key column.

/// Every row of `table` in the files of `shards` (those that exist and have the table), read
/// with rusqlite: `(key as text, shard, row)`.
fn file_rows(
    dir: &Path,
    shards: &[&str],
    table: &str,
    key: &str,
) -> Vec<(String, String, FileRow)> {
    kill_support::file_rows(dir, shards, table, &[key])
        .into_iter()
        .map(|(mut keys, shard, row)| (keys.remove(0), shard, row))
        .collect()
}

/// The rows of `table` by key, from the files: panics if a key is on two shards.
fn snapshot(dir: &Path, shards: &[&str], table: &str, key: &str) -> BTreeMap<String, FileRow> {
    kill_support::snapshot(table, file_rows(dir, shards, table, key))
}

/// Asserts that the files hold every expected row of `table` exactly once with its expected
/// content, and no other row.
fn assert_exactly_once(
    dir: &Path,
    shards: &[&str],
    table: &str,
    key: &str,
    expected: &BTreeMap<String, FileRow>,
    context: &str,
) {
    let held = held(file_rows(dir, shards, table, key));
    let found = kill_support::exactly_once(&held, expected);
    assert!(
        found.clean,
        "{context}: `{table}` in the files: {}",
        found.text
    );
    let total: usize = held.values().map(Vec::len).sum();
    assert_eq!(total, expected.len(), "{context}: `{table}` row count");
}

/// Asserts that no expected row of `table` is lost: some file holds each key with its expected
/// content (a move in flight may keep an older copy on a second shard, never a third), and no
/// file holds a key never written. Returns the keys held twice.
fn assert_nothing_lost(
    dir: &Path,
    shards: &[&str],
    table: &str,
    key: &str,
    expected: &BTreeMap<String, FileRow>,
    context: &str,
) -> usize {
    let held = held(file_rows(dir, shards, table, key));
    let found = kill_support::nothing_lost(&held, expected, &|_| false);
    assert!(
        found.clean,
        "{context}: `{table}` in the files: {}",
        found.text
    );
    held_twice(&held)
}

// ---------------------------------------------------------------------------------------------
// A grown or drained deployment under test.

/// A deployment of `users`, `notes` and `orders`, what its files must hold, and a handle opened
/// before the operation (its map goes stale while the child moves slots).
struct Deployment {
    site: Site,
    files: BTreeMap<&'static str, BTreeMap<String, FileRow>>,
    users: BTreeMap<String, User>,
    notes: BTreeMap<String, Note>,
    orders: BTreeMap<i64, Order>,
    slot_moving_checked: bool,
    /// Rows updated through the handle while the child was blocked.
    writes: usize,
}

impl Deployment {
    /// Seeds `shards` shards (`s0`...) with `rows` rows per table through the router, then
    /// snapshots the files.
    fn seed(dir: &Path, shards: usize, rows: usize) -> Self {
        let users: Vec<User> = (0..rows)
            .map(|i| User::new(format!("user-{i:05}")))
            .collect();
        let notes: Vec<Note> = (0..rows).map(Note::numbered).collect();
        let orders: Vec<Order> = (0..rows).map(order).collect();
        let site = Site::new(dir, shards);
        let db = site.open();
        block_on(async {
            User::create_table(&db).await?;
            Note::create_table(&db).await?;
            Order::create_table(&db).await?;
            User::insert_many(&db, &users).await?;
            Note::insert_many(&db, &notes).await?;
            Order::insert_many(&db, &orders).await?;
            Ok::<_, collegedb::Error>(())
        })
        .expect("seed");
        drop(db);
        let files: BTreeMap<&'static str, BTreeMap<String, FileRow>> = TABLES
            .iter()
            .map(|&t| (t, snapshot(dir, &site.names(), t, "id")))
            .collect();
        for (table, rows_of) in &files {
            assert_eq!(rows_of.len(), rows, "seeded `{table}`");
        }
        Deployment {
            files,
            users: users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            notes: notes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            orders: orders.into_iter().map(|o| (o.id, o)).collect(),
            slot_moving_checked: false,
            writes: 0,
            site,
        }
    }

    /// What the deployment adds to the report.
    fn written(&self) -> String {
        format!("{} rows updated while blocked", self.writes)
    }

    /// Finds every key through `db` and compares it with the last write, except keys for which
    /// `skip` says the move has frozen them; returns (found, skipped).
    fn find_all(
        &self,
        db: &CollegeDb<Embedded>,
        skip: &dyn Fn(&str, &Key) -> bool,
        context: &str,
    ) -> (usize, Vec<(&'static str, Key)>) {
        let mut found = 0;
        let mut skipped = Vec::new();
        block_on(async {
            for (id, user) in &self.users {
                let key = Key::text(id.as_str()).expect("key");
                if skip("users", &key) {
                    skipped.push(("users", key));
                    continue;
                }
                let got = User::find(db, id.as_str()).await;
                assert_eq!(
                    got.as_ref().ok(),
                    Some(&Some(user.clone())),
                    "{context}: {got:?}"
                );
                found += 1;
            }
            for (id, note) in &self.notes {
                let key = Key::text(id.as_str()).expect("key");
                if skip("notes", &key) {
                    skipped.push(("notes", key));
                    continue;
                }
                let got = Note::find(db, id.as_str()).await;
                assert_eq!(
                    got.as_ref().ok(),
                    Some(&Some(note.clone())),
                    "{context}: {got:?}"
                );
                found += 1;
            }
            for (id, order) in &self.orders {
                let key = Key::int(*id).expect("key");
                if skip("orders", &key) {
                    skipped.push(("orders", key));
                    continue;
                }
                let got = Order::find(db, *id).await;
                assert_eq!(
                    got.as_ref().ok(),
                    Some(&Some(order.clone())),
                    "{context}: {got:?}"
                );
                found += 1;
            }
        });
        (found, skipped)
    }

    /// Updates one row of `table` through the long-lived handle, and what the files must hold.
    fn update(&mut self, table: &str, key: &str, text: String) {
        let db = self.site.handle();
        let column = match table {
            "users" => {
                let user = self.users.get_mut(key).expect("user");
                user.name = text.clone();
                block_on(User::update(db, user)).expect("update user");
                "name"
            }
            "notes" => {
                let note = self.notes.get_mut(key).expect("note");
                note.body = text.clone();
                block_on(Note::update(db, note)).expect("update note");
                "body"
            }
            _ => {
                let id: i64 = key.parse().expect("order id");
                let order = self.orders.get_mut(&id).expect("order");
                order.customer = text.clone();
                block_on(Order::update(db, order)).expect("update order");
                "customer"
            }
        };
        let row = self
            .files
            .get_mut(table)
            .and_then(|rows| rows.get_mut(key))
            .expect("row");
        for (name, value) in row.iter_mut() {
            if name == column {
                *value = SqlValue::Text(text.clone());
            }
        }
    }

    /// The key of `table` as a router key.
    fn key(table: &str, text: &str) -> Key {
        match table {
            "orders" => Key::int(text.parse().expect("int key")).expect("key"),
            _ => Key::text(text).expect("key"),
        }
    }
}

impl Deployed for Deployment {
    fn site(&mut self) -> &mut Site {
        &mut self.site
    }

    /// Asserts the files hold every row exactly once with its content.
    fn assert_exactly_once(&self, dir: &Path, context: &str) {
        for (table, expected) in &self.files {
            assert_exactly_once(dir, &self.site.names(), table, "id", expected, context);
        }
    }

    /// Asserts no row is lost from the files; returns the keys held twice.
    fn assert_nothing_lost(&self, dir: &Path, context: &str) -> usize {
        self.files
            .iter()
            .map(|(table, expected)| {
                assert_nothing_lost(dir, &self.site.names(), table, "id", expected, context)
            })
            .sum()
    }

    /// `verify_table` is clean on the copy the operation ran on uninterrupted.
    fn uninterrupted(&self, copy: &Path, op: &str, _: Duration, _: &mut Stats) {
        let dry_db = CollegeDb::open_embedded(
            collegedb::Config::with_shard_names(self.site.shards.iter()),
            copy,
        )
        .expect("open the copy");
        for table in TABLES {
            let report = block_on(dry_db.verify_table(table, "id")).expect("verify");
            assert!(report.is_clean(), "{op} uninterrupted: {report}");
        }
    }

    fn while_blocked(&mut self, job: Option<&Job>, label: &str, stats: &mut Stats) {
        while_blocked(self, job, label, stats);
    }

    /// Through the router: verify is clean, and the stale handle and a new one find every row.
    fn finished(&mut self, label: &str) {
        let fresh = self.site.open();
        for table in TABLES {
            let report = block_on(fresh.verify_table(table, "id")).expect("verify");
            assert!(report.is_clean(), "{label}: {report}");
            assert_eq!(
                report.rows as usize,
                self.files[table].len(),
                "{label}: {report}"
            );
        }
        let none = |_: &str, _: &Key| false;
        self.find_all(&fresh, &none, &format!("{label}, a new handle"));
        self.find_all(
            self.site.handle(),
            &none,
            &format!("{label}, the handle opened before"),
        );
    }
}

/// Whether `transfer` moves the row of `key`: a key of its slots, or, for the relocation of a
/// drained shard, a directory-placed key whose entry names the drained shard.
fn moves(
    transfer: &Transfer,
    entries: &BTreeMap<(String, String), String>,
    table: &str,
    text: &str,
    key: &Key,
) -> bool {
    if transfer.is_relocation() {
        entries.get(&(table.to_owned(), text.to_owned())) == Some(&transfer.from)
    } else {
        transfer.slots.contains(&slot_of(key))
    }
}

/// The checks while the child is blocked at a journaled step (`job`: the journal, `None` once
/// the operation finished).
fn while_blocked(d: &mut Deployment, job: Option<&Job>, label: &str, stats: &mut Stats) {
    let transfer = job.and_then(|j| j.transfers.get(j.current)).cloned();
    let frozen = transfer
        .as_ref()
        .is_some_and(|t| matches!(t.phase, Phase::FinalCatchUp | Phase::Switch));
    let entries = directory_entries(&d.site.dir);

    // Once a relocation has switched, no entry names the drained shard.
    if let Some(t) = transfer.as_ref().filter(|t| t.is_relocation()) {
        if matches!(t.phase, Phase::Delete | Phase::Done) {
            let left: Vec<&(String, String)> = entries
                .iter()
                .filter(|(_, shard)| **shard == t.from)
                .map(|(key, _)| key)
                .collect();
            assert!(
                left.is_empty(),
                "{label}: the relocation switched, yet directory entries still name {}: {}",
                t.from,
                few(&left)
            );
        }
    }

    // Reads through the stale handle: every key, but those frozen by the move this instant.
    let skip = |table: &str, key: &Key| -> bool {
        let text = match key {
            Key::Int(i) => i.to_string(),
            Key::Text(s) => s.clone(),
        };
        frozen
            && moves(
                transfer.as_ref().expect("frozen"),
                &entries,
                table,
                &text,
                key,
            )
    };
    let (found, skipped) = d.find_all(d.site.handle(), &skip, label);
    stats.reads += found;
    stats.frozen_skipped += skipped.len();
    assert!(found > 0, "{label}: nothing was readable");
    if frozen {
        assert!(!skipped.is_empty(), "{label}: a frozen move froze no key");
        // A frozen key is never answered "not found" or with an old copy: the read waits out
        // the switch and reports the move (once per test: it waits ten seconds).
        if !d.slot_moving_checked {
            let (table, key) = &skipped[0];
            let db = d.site.handle();
            let started = Instant::now();
            let error = block_on(async {
                match (table, key) {
                    (&"users", Key::Text(id)) => User::find(db, id.as_str()).await.map(drop),
                    (&"notes", Key::Text(id)) => Note::find(db, id.as_str()).await.map(drop),
                    (_, Key::Int(id)) => Order::find(db, *id).await.map(drop),
                    _ => unreachable!(),
                }
            })
            .expect_err("a frozen key must not be answered");
            assert_eq!(error.code(), "SLOT_MOVING", "{label}: {error}");
            assert!(error.is_retryable());
            eprintln!(
                "{label}: a read of frozen key {key} of `{table}` reported {} after {:?}",
                error.code(),
                started.elapsed()
            );
            d.slot_moving_checked = true;
        }
    }

    // Writes through the stale handle, to rows the move carries when there are any.
    if !frozen {
        let pick = d.writes;
        for table in TABLES {
            let keys: Vec<String> = d.files[table].keys().cloned().collect();
            let moving: Vec<&String> = match &transfer {
                Some(t) => keys
                    .iter()
                    .filter(|k| moves(t, &entries, table, k, &Deployment::key(table, k)))
                    .collect(),
                None => Vec::new(),
            };
            let key = if moving.is_empty() {
                keys[pick * 7 % keys.len()].clone()
            } else {
                moving[pick % moving.len()].clone()
            };
            d.update(table, &key, format!("written at {label}"));
            d.writes += 1;
        }
    }

    // verify, from another handle (it reloads the map, which would refresh the stale one):
    // clean, a move's second copies counted as in flight.
    let verifier = d.site.open();
    let mut in_flight = 0;
    for table in TABLES {
        let report = block_on(verifier.verify_table(table, "id"))
            .unwrap_or_else(|e| panic!("{label}: verify `{table}`: {e}"));
        assert!(report.is_clean(), "{label}: {report}");
        in_flight += report.in_flight;
    }
    if in_flight > 0 {
        stats.in_flight_points += 1;
    }
}

/// `add_shard` killed at every phase of its first transfer (its journaled Prepare calls no hook,
/// so that one is killed as the second transfer starts), in the catch-up, switch and delete of
/// the last, after it finished, and twice while running; each time resumed.
#[test]
fn add_shard_killed_at_every_phase_resumes_without_losing_or_duplicating_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Deployment::seed(dir.path(), 3, rows());
    // The new shard is configured beside the others: standby until the move.
    d.site.shards.push("s3".into());
    let plan = Kill::plan(
        "0:Copy:First 0:Copy:Middle 0:Copy:Last 0:CatchUp:First 0:Freeze:First \
         0:FinalCatchUp:First 0:Switch:First 0:Delete:First 0:Delete:Middle 1:Prepare:First \
         running:1:Copy:2 running:1:Delete:2 2:CatchUp:First 2:Switch:First 2:Delete:Last \
         3:Done:First 3:Done:Last",
    );
    let stats = grow_with_kills(&mut d, "add:s3", &plan);
    report("add_shard s3", &stats, &d.written());
    assert_phases_covered("add_shard s3", &stats, &COVERED, 12);
    let s3 = file_rows(dir.path(), &["s3"], "users", "id").len();
    assert!(
        s3 * 6 > rows() && s3 * 3 < rows(),
        "s3 holds about a quarter of the hash-placed rows: {s3}"
    );
}

/// `drain_shard` of a middle shard killed in every phase of its slot transfers and of the
/// relocation of its directory-placed rows; each time resumed. The drained shard ends empty and
/// no directory entry names it.
#[test]
fn drain_shard_killed_at_every_phase_resumes_without_losing_or_duplicating_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Deployment::seed(dir.path(), 4, rows());
    let plan = Kill::plan(
        "0:Copy:First 0:Copy:Middle 0:FinalCatchUp:First 0:Switch:First 0:Delete:Middle \
         1:Prepare:First running:1:Copy:2 2:Freeze:First 2:Delete:First 3:Prepare:First \
         3:Copy:First 3:Copy:Middle 3:CatchUp:First 3:Freeze:First 3:FinalCatchUp:First \
         3:Switch:First 3:Switch:Middle running:3:Switch:3 3:Delete:First 3:Delete:Last \
         4:Done:First 4:Done:Last",
    );
    let stats = grow_with_kills(&mut d, "drain:s1", &plan);
    report("drain_shard s1", &stats, &d.written());
    assert_phases_covered("drain_shard s1", &stats, &COVERED, 14);
    assert_drained(dir.path(), "s1", &TABLES);
}

// ---------------------------------------------------------------------------------------------
// adopt

/// Rows per table of the adopted files.
fn adopt_rows() -> usize {
    rows() * 6
}

/// Writes `users` and `items` rows into three SQLite files by hand, unevenly (about 60, 25 and
/// 15 percent), with no regard to hashing.
fn seed_adopted(dir: &Path, rows: usize) {
    for shard in 0..3usize {
        let mut conn =
            rusqlite::Connection::open(dir.join(format!("s{shard}.sqlite"))).expect("open");
        conn.execute_batch(
            "CREATE TABLE users (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, email TEXT);
             CREATE TABLE items (sku INTEGER PRIMARY KEY, label TEXT, weight REAL, data BLOB);",
        )
        .expect("schema");
        let tx = conn.transaction().expect("begin");
        let place = |i: usize, salt: usize| match (i.wrapping_mul(2_654_435_761) ^ salt) % 100 {
            0..60 => 0,
            60..85 => 1,
            _ => 2,
        };
        for i in (0..rows).filter(|&i| place(i, 0) == shard) {
            tx.execute(
                "INSERT INTO users (id, name, email) VALUES (?1, ?2, ?3)",
                (
                    format!("old-{i:06}"),
                    format!("name {i}"),
                    (i % 4 != 0).then(|| format!("old{i}@example.com")),
                ),
            )
            .expect("user");
        }
        for i in (0..rows).filter(|&i| place(i, 0x5a5a) == shard) {
            tx.execute(
                "INSERT INTO items (sku, label, weight, data) VALUES (?1, ?2, ?3, ?4)",
                (
                    i as i64 * 7 - 3000,
                    format!("item {i}"),
                    i as f64 / 8.0,
                    vec![i as u8; i % 5],
                ),
            )
            .expect("item");
        }
        tx.commit().expect("commit");
    }
}

/// Directory entries and off-hash markers in the files, polled while adopt runs: `None` while
/// a file is missing or busy.
fn adopt_progress(dir: &Path) -> Option<(i64, i64)> {
    let path = dir.join("_directory.db");
    if !path.exists() {
        return None;
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE;
    let conn = rusqlite::Connection::open_with_flags(&path, flags).ok()?;
    let entries: i64 = conn
        .query_row("SELECT COUNT(*) FROM directory", [], |r| r.get(0))
        .ok()?;
    let mut markers = 0;
    for shard in 0..3 {
        let conn =
            rusqlite::Connection::open_with_flags(dir.join(format!("s{shard}.sqlite")), flags)
                .ok()?;
        markers += conn
            .query_row("SELECT COUNT(*) FROM _collegedb_placed", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_or(0);
    }
    Some((entries, markers))
}

/// Where to kill adopt.
#[derive(Debug, Clone, Copy)]
enum AdoptKill {
    /// As soon as it starts.
    Start,
    /// Once an off-hash marker is set, before any directory entry.
    FirstMarker,
    /// Once the directory holds more entries than after the previous kill: after the next
    /// committed batch of claims.
    NextBatch,
}

/// The checks after adopt was killed: rows untouched, every entry names the shard holding its
/// key (never the key's hash shard), and the key's hash shard carries the table's marker.
fn check_adopt_files(
    dir: &Path,
    expected: &BTreeMap<&'static str, BTreeMap<String, FileRow>>,
    hash: &HashMap<(String, String), String>,
    context: &str,
) {
    let names = ["s0", "s1", "s2"];
    let mut holder: HashMap<(String, String), String> = HashMap::new();
    for (table, key) in [("users", "id"), ("items", "sku")] {
        assert_exactly_once(dir, &names, table, key, &expected[table], context);
        for (k, shard, _) in file_rows(dir, &names, table, key) {
            holder.insert((table.to_owned(), k), shard);
        }
    }
    let mut markers: BTreeSet<(String, String)> = BTreeSet::new();
    for shard in names {
        let conn = rusqlite::Connection::open(dir.join(format!("{shard}.sqlite"))).unwrap();
        let mut stmt = match conn.prepare("SELECT scope FROM _collegedb_placed") {
            Ok(stmt) => stmt,
            Err(_) => continue, // Not created yet.
        };
        let scopes = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        markers.extend(scopes.map(|s| (s.unwrap(), shard.to_owned())));
    }
    for ((scope, key), shard) in directory_entries(dir) {
        let id = (scope.clone(), key.clone());
        assert_eq!(holder.get(&id), Some(&shard), "{context}: entry {id:?}");
        let hash_shard = &hash[&id];
        assert_ne!(
            hash_shard, &shard,
            "{context}: entry {id:?} names its hash shard"
        );
        assert!(
            markers.contains(&(scope.clone(), hash_shard.clone())),
            "{context}: entry {id:?} without the marker on {hash_shard}"
        );
    }
}

/// `adopt` of files that already hold rows, killed at once, after its first marker and after
/// successive batches of directory claims; each time run again. Rows are never touched, every
/// entry is right at every kill, and in the end every row is found.
#[test]
fn adopt_killed_between_batches_finishes_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let rows = adopt_rows();
    seed_adopted(dir.path(), rows);
    let names = ["s0", "s1", "s2"];
    let expected: BTreeMap<&'static str, BTreeMap<String, FileRow>> = [
        ("users", snapshot(dir.path(), &names, "users", "id")),
        ("items", snapshot(dir.path(), &names, "items", "sku")),
    ]
    .into_iter()
    .collect();

    // The hash shard of every key, from a handle over an empty folder with the same names.
    let scratch = tempfile::tempdir().unwrap();
    let router = open(scratch.path(), 3);
    let mut hash = HashMap::new();
    let mut off_hash = 0;
    for (table, key) in [("users", "id"), ("items", "sku")] {
        for (k, shard, _) in file_rows(dir.path(), &names, table, key) {
            let routed = match table {
                "items" => Key::int(k.parse().unwrap()).unwrap(),
                _ => Key::text(k.as_str()).unwrap(),
            };
            let h = router.shard_map().owner(slot_of(&routed)).to_owned();
            off_hash += usize::from(h != shard);
            hash.insert((table.to_owned(), k), h);
        }
    }
    drop(router);
    assert!(
        off_hash > rows,
        "most rows are off their hash shard: {off_hash}"
    );

    let plan = [
        AdoptKill::Start,
        AdoptKill::FirstMarker,
        AdoptKill::NextBatch,
        AdoptKill::NextBatch,
        AdoptKill::NextBatch,
        AdoptKill::NextBatch,
        AdoptKill::NextBatch,
        AdoptKill::NextBatch,
    ];
    let mut points = BTreeSet::new();
    let mut finished_early = None;
    let mut entries = 0;
    for (i, kill) in plan.iter().enumerate() {
        let mut child = ChildProcess::spawn(dir.path(), "adopt", "s0,s1,s2", None);
        let deadline = Instant::now() + TIMEOUT;
        let floor = entries;
        let reached = loop {
            let progress = adopt_progress(dir.path());
            let reached = match (kill, progress) {
                (AdoptKill::Start, _) => true,
                (AdoptKill::FirstMarker, Some((_, markers))) => markers > 0,
                (AdoptKill::NextBatch, Some((entries, _))) => entries > floor,
                _ => false,
            };
            if reached || child.exited() {
                break reached;
            }
            assert!(
                Instant::now() < deadline,
                "adopt kill {i}: {kill:?} never came"
            );
            std::thread::sleep(Duration::from_micros(200));
        };
        if !reached {
            // Adopt finished before the kill point: nothing left to interrupt.
            finished_early = Some(i);
            drop(child);
            break;
        }
        child.kill();
        let context = format!("adopt kill {i} ({kill:?})");
        check_adopt_files(dir.path(), &expected, &hash, &context);
        let (now, markers) = adopt_progress(dir.path()).unwrap_or((0, 0));
        eprintln!("{context}: {now} entries, {markers} markers");
        points.insert((now, markers));
        entries = now;
    }
    eprintln!(
        "adopt: {} kills, {} distinct states {points:?}; {off_hash} of {} rows off their hash \
         shard; finished before kill {finished_early:?}",
        points.len(),
        points.len(),
        2 * rows
    );
    assert!(
        points.len() >= 5,
        "adopt could be killed at only {} distinct points: {points:?}",
        points.len()
    );

    let done = run_to_end(dir.path(), "adopt", "s0,s1,s2", None);
    let line = format!("done {} {off_hash} 0", 2 * rows);
    assert_eq!(done, std::slice::from_ref(&line), "adopt resumed");
    check_adopt_files(dir.path(), &expected, &hash, "adopt finished");
    assert_eq!(
        directory_entries(dir.path()).len(),
        off_hash,
        "every off-hash row recorded"
    );
    assert_eq!(
        run_to_end(dir.path(), "adopt", "s0,s1,s2", None),
        [line],
        "adopt again"
    );
    assert_eq!(directory_entries(dir.path()).len(), off_hash);

    // Every row is found by a new handle, and verify is clean.
    let db = open(dir.path(), 3);
    block_on(async {
        for (key, row) in &expected["users"] {
            let user = User::find(&db, key.as_str()).await.unwrap();
            let user = user.unwrap_or_else(|| panic!("adopted user {key} not found"));
            assert_eq!(SqlValue::Text(user.name), row[1].1, "{key}");
        }
        for (key, row) in &expected["items"] {
            let sku: i64 = key.parse().unwrap();
            let found = db
                .table("items")
                .first(
                    sku,
                    "SELECT label FROM items WHERE sku = ?",
                    &[Value::Integer(sku)],
                )
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("adopted item {sku} not found"));
            assert_eq!(
                SqlValue::Text(found.get::<String>("label").unwrap()),
                row[1].1
            );
        }
        for (table, key) in [("users", "id"), ("items", "sku")] {
            let report = db.verify_table(table, key).await.unwrap();
            assert!(report.is_clean(), "{report}");
            assert_eq!(report.rows as usize, rows);
        }
    });
}

/// `reassign` killed with SIGKILL after each of its journaled steps (tombstones laid, the old
/// shard frozen, the row copied, the entry repointed), and at the end, and each time run again:
/// the key ends on its target exactly once with its value, the other rows are untouched, and
/// between the kill and the resume the files hold the key on the old shard, the new one, or
/// both (a copy `verify` counts as in flight), never nowhere.
#[test]
fn reassign_killed_after_every_step_resumes_without_losing_or_duplicating_the_key() {
    let shards = ["s0", "s1", "s2"];
    let users: Vec<User> = (0..200)
        .map(|i| User::new(format!("user-{i:05}")))
        .collect();
    let key = "user-00042";
    let mut points = 0;
    for stop in 1..=5 {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 3);
        block_on(async {
            User::create_table(&db).await.unwrap();
            User::insert_many(&db, &users).await.unwrap();
        });
        let from = block_on(User::locate(&db, key)).unwrap().unwrap();
        let to = shards.iter().find(|s| **s != from).unwrap().to_string();
        drop(db);
        let before = file_rows(dir.path(), &shards, "users", "id");
        let op = format!("reassign:users:{key}:{to}");

        let child = ChildProcess::spawn(dir.path(), &op, "s0,s1,s2", Some(&stop.to_string()));
        let line = child.line();
        assert!(line.starts_with(&format!("step {stop} ")), "{line}");
        child.kill();
        points += 1;

        // Killed: the key is on the old shard, the new one, or both; nothing else changed.
        let rows = file_rows(dir.path(), &shards, "users", "id");
        let holders: Vec<&str> = rows
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, shard, _)| shard.as_str())
            .collect();
        assert!(
            !holders.is_empty() && holders.iter().all(|s| *s == from || *s == to),
            "after step {stop}: {key} on {holders:?} ({from} -> {to})"
        );
        assert_eq!(
            rows.iter().filter(|(k, _, _)| k != key).count(),
            before.len() - 1,
            "after step {stop}: the other rows"
        );
        if stop < 5 {
            let job = journal(dir.path(), "growth").expect("journaled");
            assert!(!job.is_finished(), "after step {stop}");
        }

        // Run again: it resumes from the journal and finishes.
        let lines = run_to_end(dir.path(), &op, "s0,s1,s2", None);
        let after = file_rows(dir.path(), &shards, "users", "id");
        let holders: Vec<&str> = after
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, shard, _)| shard.as_str())
            .collect();
        assert_eq!(
            holders,
            [to.as_str()],
            "after resuming step {stop}: {lines:?}"
        );
        let mut expected: Vec<_> = before.iter().filter(|(k, _, _)| k != key).collect();
        let mut got: Vec<_> = after.iter().filter(|(k, _, _)| k != key).collect();
        expected.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(got, expected, "after resuming step {stop}: the other rows");
        let db = open(dir.path(), 3);
        assert_eq!(
            block_on(User::find(&db, key)).unwrap(),
            Some(User::new(key)),
            "after resuming step {stop}"
        );
        let report = block_on(db.verify_table("users", "id")).unwrap();
        assert!(report.is_clean() && report.in_flight == 0, "{report}");
        // Nothing stays frozen: every key of every slot is writable.
        block_on(async {
            for user in &users {
                User::update(&db, user).await.unwrap();
            }
        });
    }
    eprintln!("reassign: {points} kill points, each resumed");
}

/// `migrate` killed with SIGKILL after every migration it applies to a shard (3 migrations on 3
/// shards: 8 points, the last being the end), each time run again: every shard ends at the last
/// version with each migration's effect exactly once, and between the kill and the rerun every
/// shard is at a whole version (its record and its schema agree).
#[test]
fn migrate_killed_after_every_migration_resumes_and_applies_each_once() {
    let migrations = tempfile::tempdir().unwrap();
    for (file, sql) in [
        (
            "0001_settings.sql",
            "CREATE TABLE settings (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
             INSERT INTO settings (name, value) VALUES ('theme', 'dark');",
        ),
        (
            "0002_more.sql",
            "INSERT INTO settings (name, value) VALUES ('lang', 'en');
             CREATE TABLE tags (name TEXT PRIMARY KEY);",
        ),
        (
            "0003_note.sql",
            "ALTER TABLE settings ADD COLUMN note TEXT;",
        ),
    ] {
        std::fs::write(migrations.path().join(file), sql).unwrap();
    }
    let op = format!("migrate:{}", migrations.path().display());
    let shards = ["s0", "s1", "s2"];
    // (version, settings rows, has tags) as each version leaves a shard.
    let expected = |version: i64| match version {
        0 => (-1, false),
        1 => (1, false),
        2 => (2, true),
        _ => (2, true),
    };
    let state = |dir: &Path, shard: &str| -> (i64, i64, bool) {
        let conn = rusqlite::Connection::open(dir.join(format!("{shard}.sqlite"))).unwrap();
        let version: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM _collegedb_migrations",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let settings: i64 = conn
            .query_row("SELECT COUNT(*) FROM settings", [], |r| r.get(0))
            .unwrap_or(-1);
        let tags: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'tags')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (version, settings, tags)
    };
    let mut points = 0;
    for stop in 1..=8 {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 3));
        let child = ChildProcess::spawn(dir.path(), &op, "s0,s1,s2", Some(&stop.to_string()));
        let line = child.line();
        assert!(line.starts_with(&format!("step {stop} ")), "{line}");
        child.kill();
        points += 1;
        let mut applied = 0;
        for shard in shards {
            let (version, settings, tags) = state(dir.path(), shard);
            assert_eq!(
                (settings, tags),
                expected(version),
                "killed after step {stop}: {shard} at version {version}"
            );
            applied += version;
        }
        assert_eq!(
            applied, stop as i64,
            "killed after step {stop}: versions applied"
        );
        let lines = run_to_end(dir.path(), &op, "s0,s1,s2", None);
        assert_eq!(
            lines.last().unwrap(),
            "done s0 at 3, s1 at 3, s2 at 3",
            "after step {stop}"
        );
        for shard in shards {
            assert_eq!(
                state(dir.path(), shard),
                (3, 2, true),
                "after step {stop}: {shard}"
            );
        }
    }
    eprintln!("migrate: {points} kill points, each resumed");
}
